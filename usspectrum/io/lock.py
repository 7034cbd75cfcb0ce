"""One writer per results file.

Rows are appended as they are measured, so two runs writing the same CSV at
once would interleave their rows and leave each width twice. A run holds an
advisory lock (``.<name>.lock`` beside the file) while it writes; a second
run stops with an error that says what to do instead.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ..errors import USSpectrumError
from .results import ensure_writable

try:
    import fcntl
except ImportError:  # Windows: no flock; keeping to one run per file is up to the user
    fcntl = None


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive_writer(path: str | os.PathLike | None) -> Iterator[None]:
    """Hold the lock on ``path`` (nothing when ``path`` is None). The kernel
    drops a flock when its process dies, so a killed run never leaves a
    stale lock behind."""
    if path is None or fcntl is None:
        yield
        return
    lock = lock_path(ensure_writable(path))
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"another run (process {holder})" if holder.isdigit() else "another run"
            raise USSpectrumError(f"{who} is writing {path}; wait for it to finish, or write "
                                  "to another file") from None
        # the last holder unlinks the file on release: make sure ours is still the one there
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
