"""The ``usspectrum`` command line: it parses, calls the library and prints.

``app`` holds the group, the one wrapper that turns library errors and
Ctrl-C into one-line messages, and the printing helpers; ``options`` builds
options from the settings dataclasses, so defaults and help live in one
place; the commands live by what they do: ``measure`` (flops, sweep,
compare, slim-stage, plot, calibrate), ``train`` (train, demo),
``reference`` (published) and
``slim`` (search, export).
"""
from . import measure, reference, slim, train  # noqa: F401  (register the commands)
from .app import cli, main

__all__ = ["cli", "main"]
