"""What a result was measured on, so that a rerun never passes off old rows
as new ones.

:func:`data_identity` names a data set by its content, cheaply: the list of
its image files with their sizes (an ImageFolder), or the checksums of the
batch files (CIFAR-10 python), or the name of a built-in set. A moved or
copied folder keeps its identity; added, removed or resized files change it.

:func:`check_resume` is the one check every resumable command runs before
it reuses a row of an existing CSV (and :func:`differences` the rule by
which training checkpoints and progress files are matched too): every setting the row records must
equal this run's. A difference is an error naming the setting, the old and
the new value, and the ways out; the file is left as it is.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

import pandas as pd

from ..errors import USSpectrumError

SPLIT_FOLDERS = ("train", "val")
CIFAR_FILES = ("batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
               "data_batch_5", "test_batch")
RERUN_HINT = ("rerun with the same settings, write to another -o, or pass --overwrite to "
              "measure again")


def data_identity(root: str | os.PathLike) -> str:
    """``<name>:<12 hex digits>`` for the data set at ``root`` (see the
    module docstring); the name is only for people, the digits decide."""
    from .data import BUILTIN_DATA

    if str(root) in BUILTIN_DATA and not Path(root).exists():
        return f"{root}:builtin"
    path = Path(root).resolve()
    digest = hashlib.sha1()
    cifar = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else (
        path if path.name == "cifar-10-batches-py" else None)
    splits = [path / s for s in SPLIT_FOLDERS if (path / s).is_dir()]
    if splits:
        for split in splits:
            _hash_listing(split, path, digest)
    elif cifar is not None:
        for name in CIFAR_FILES:
            file = cifar / name
            if file.is_file():
                digest.update(name.encode() + b"\0")
                with open(file, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
    else:
        digest.update(str(path).encode())
    return f"{path.name}:{digest.hexdigest()[:12]}"


def _hash_listing(folder: Path, root: Path, digest) -> None:
    """Relative path and size of every file under ``folder``, in a fixed order."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue  # an unreadable folder: the loader names it
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=True):
                rel = os.path.relpath(entry.path, root)
                digest.update(f"{rel}\0{entry.stat().st_size}\n".encode())


def same_data(a: str, b: str) -> bool:
    """Whether two :func:`data_identity` strings name the same data."""
    return str(a).rsplit(":", 1)[-1] == str(b).rsplit(":", 1)[-1]


def check_resume(done: pd.DataFrame, expected: Mapping[str, object], path: str | os.PathLike,
                 options: Mapping[str, str] | None = None) -> None:
    """Refuse to reuse ``done``'s rows unless each column of ``expected``
    holds the expected value in every row.

    ``options`` maps a column to the option a user sets it with (for the
    message). A column the file lacks means it was written before the
    setting was recorded: its rows cannot be checked, so they are refused too."""
    if not len(done):
        return
    options = options or {}
    for column, value in expected.items():
        option = options.get(column, column)
        if column not in done.columns:
            raise USSpectrumError(f"{path} was written by an older usspectrum that did not "
                                  f"record {option}, so its rows cannot be checked; "
                                  f"{RERUN_HINT.split(', ', 1)[1]}")
        found = list(dict.fromkeys(done[column].tolist()))
        match = same_data if column == "data" else _same
        wrong = [v for v in found if not match(v, value)]
        if wrong and column == "fingerprint":
            raise USSpectrumError(f"{path} holds results of another checkpoint (fingerprint "
                                  f"{_text(wrong[0])}, this one {_text(value)}); write to "
                                  "another -o, or pass --overwrite to measure again")
        if wrong and column == "data":
            raise USSpectrumError(f"{path} holds rows measured on other data ({_text(wrong[0])}, "
                                  f"now {_text(value)}); {RERUN_HINT}")
        if wrong:
            raise USSpectrumError(f"{path} holds rows measured with {option} {_text(wrong[0])} "
                                  f"(now {_text(value)}); {RERUN_HINT}")


def differences(expected: Mapping[str, object], found: Mapping[str, object]) -> list[str]:
    """The keys of ``expected`` whose value ``found`` does not hold (compared
    as :func:`check_resume` compares rows): the one rule by which a resumed
    training run, a pass's progress file and a results CSV must match."""
    return [k for k, v in expected.items() if not _same(v, found.get(k))]


def _same(a: object, b: object) -> bool:
    """Equal as numbers when both read as numbers (a CSV gives 2000 back as
    2000 or 2000.0), else as text; empty equals None."""
    a, b = _blank(a), _blank(b)
    if a is None or b is None:
        return a is None and b is None
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _blank(value: object) -> object:
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None
    return value


def _text(value: object) -> str:
    value = _blank(value)
    if value is None:
        return "(none)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
