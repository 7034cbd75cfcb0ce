"""Writing results: whole tables atomically, spectra row by row."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from ..errors import USSpectrumError, note


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
    keeps every finished row and a rerun can skip them.

    ``required``: columns a file must have to be this command's results.
    ``numeric``: columns every whole row holds a number in. Reading an
    existing file keeps its whole rows; a row cut short by a crash, or one
    whose numbers do not read as numbers, is dropped from the file (with a
    note) so that it is measured again.
    ``key``: columns that name a row; a later row with the same key (left by
    two runs that wrote the file at once, before files were locked) is
    dropped from the file, with a note."""

    def __init__(self, path: str | os.PathLike, columns: list[str],
                 required: tuple[str, ...] = ("width", "fingerprint"),
                 numeric: tuple[str, ...] = (), key: tuple[str, ...] = ()) -> None:
        self.path = ensure_writable(path)
        self.columns = columns
        self.required = required
        self.numeric = numeric
        self.key = key

    def existing(self) -> pd.DataFrame:
        """Rows already in the file (empty if there is none)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame(columns=self.columns)
        header, rows, damaged = self._read()
        missing = [c for c in self.required if c not in header]
        if missing:
            raise USSpectrumError(f"{self.path} exists but was not written by this command "
                                  f"(no {', '.join(missing)} column); choose another output")
        df = pd.DataFrame(rows, columns=header)
        for column in self.numeric:
            if column in df.columns:
                values = pd.to_numeric(df[column].replace("", float("nan")), errors="coerce")
                bad = values.isna() & (df[column] != "")
                damaged += int(bad.sum())
                df = df[~bad]
        repeated = 0
        if self.key and all(c in df.columns for c in self.key):
            again = df.duplicated(list(self.key))
            repeated, df = int(again.sum()), df[~again]
        if damaged or repeated:
            text = df.to_csv(index=False) if len(df) else ",".join(header) + "\n"
            atomic_write_bytes(self.path, text.encode())
        if damaged:
            note(f"{self.path}: {damaged} damaged row{'s' if damaged > 1 else ''} (cut short or "
                 f"unreadable) dropped; {'they' if damaged > 1 else 'it'} will be measured again")
        if repeated:
            note(f"{self.path}: {repeated} repeated row{'s' if repeated > 1 else ''} (the "
                 f"{', '.join(self.key)} of an earlier row) dropped; the first of each is kept")
        return self._typed(df)

    def _read(self) -> tuple[list[str], list[list[str]], int]:
        """Header, whole rows and the count of damaged rows of the file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise USSpectrumError(f"{self.path} exists but is not a results CSV (not text); "
                                  "move it away or choose another output") from None
        lines = text.splitlines(keepends=True)
        complete = lines if not lines or lines[-1].endswith("\n") else lines[:-1]
        parsed = list(csv.reader(complete))
        if not parsed:
            raise USSpectrumError(f"{self.path} exists but holds no CSV header; move it away "
                                  "or choose another output")
        header, body = parsed[0], parsed[1:]
        rows = [r for r in body if len(r) == len(header)]
        return header, rows, len(body) - len(rows) + (len(lines) - len(complete))

    def _typed(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows with the types a plain ``pd.read_csv`` gives (widths stay text)."""
        buffer = io.StringIO(df.to_csv(index=False))
        return pd.read_csv(buffer, dtype={"width": str} if "width" in df.columns else None)

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
