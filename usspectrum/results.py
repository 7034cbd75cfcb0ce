"""Writing results: whole tables atomically, spectra row by row."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from .errors import USSpectrumError


def ensure_writable(path: str | os.PathLike) -> Path:
    """Create ``path``'s folder if needed and check it can be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise USSpectrumError(f"cannot create folder {path.parent}: {exc.strerror}; "
                              "choose another output path") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise USSpectrumError(f"cannot write {path}: permission denied; choose another output path")
    if path.is_dir():
        raise USSpectrumError(f"{path} is a folder; give a file name")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file and a rename, so a crash never leaves half a file."""
    path = ensure_writable(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` as CSV (or JSON records for a ``.json`` path), atomically."""
    if str(path).endswith(".json"):
        data = json.dumps(df.to_dict(orient="records"), indent=2).encode()
    else:
        data = df.to_csv(index=False).encode()
    atomic_write_bytes(path, data)
