"""Processes, threads and memory: torchrun contexts and the allocator setting."""
