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


def new_file_mode() -> int:
    """The permissions ``open()`` gives a new file under the current umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file and a rename, so a crash never leaves half
    a file. The file gets the umask's permissions, like any new file (the
    temporary file's private 0600 would keep colleagues from reading it)."""
    path = ensure_writable(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())
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


class RowWriter:
    """Appends rows to a CSV as they are measured, so an interrupted run
    keeps every finished row and a rerun can skip them."""

    def __init__(self, path: str | os.PathLike, columns: list[str],
                 required: tuple[str, ...] = ("width", "fingerprint")) -> None:
        self.path = ensure_writable(path)
        self.columns = columns
        self.required = required

    def existing(self) -> pd.DataFrame:
        """Rows already in the file (empty if there is none)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame(columns=self.columns)
        try:
            df = pd.read_csv(self.path, dtype={"width": str} if "width" in self.columns else None)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise USSpectrumError(f"{self.path} exists but is not a readable CSV ({exc}); "
                                  "move it away or choose another output") from None
        missing = [c for c in self.required if c not in df.columns]
        if missing:
            raise USSpectrumError(f"{self.path} exists but was not written by this command "
                                  f"(no {', '.join(missing)} column); choose another output")
        return df

    def append(self, row: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new and self._header() != self.columns:
            # a file from an older version: rewrite it with today's columns first
            old = pd.read_csv(self.path, dtype={"width": str} if "width" in self.columns else None)
            write_table(old.reindex(columns=self.columns), self.path)
        line = pd.DataFrame([row], columns=self.columns).to_csv(index=False, header=new)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _header(self) -> list[str]:
        with open(self.path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n").split(",")
