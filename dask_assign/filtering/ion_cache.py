"""The ion-table cache: a library's search space built once, kept on disk, read back.

A lab runs many small jobs against one library. For a large library its ion table (the
isotopologues of every compound x adduct) is most of a small run: HMDB's 11.5k compounds with
22 adducts make 3.2M ions in about 8 s, read back from the cache in 0.1 s
(benchmarks/NOTES.md). Each built space is one file named by a key over everything the
table depends on: the bytes of the library file and of the adduct table, the settings that
shape the table, this package's own code and the versions of Python, numpy and pandas. A
changed input, setting or release is a new key, so a cached table is only ever read by the
code that wrote it, and a run is the same with the cache or without it.

The entries are pickles: the cache folder must be the user's own (it is made private to its
owner), as numba's and joblib's caches are. Reading or writing the cache never fails a run:
a broken entry is rebuilt, an unwritable folder is skipped, each with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import platform
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

#: Environment variable naming the cache folder (``off``: no cache).
CACHE_ENV = "DASK_ASSIGN_CACHE_DIR"

#: What the cache may hold (bytes); the least recently used entries go beyond it.
CACHE_BYTES = 4 * 2**30

#: Bumped when an entry's layout changes without a change of the code digest's files.
FORMAT = 1

SUFFIX = ".ions.pickle"

#: An entry's file name: its key, then the suffix.
ENTRY_NAME = re.compile(r"[0-9a-f]{64}" + re.escape(SUFFIX))


#: Values of ``--ion-cache`` or ``$DASK_ASSIGN_CACHE_DIR`` that turn the cache off.
OFF = ("off", "none", "no", "0", "")


def cache_dir(value: str | None = None) -> Path | None:
    """The cache folder: ``value`` (``--ion-cache``) where given, else
    ``$DASK_ASSIGN_CACHE_DIR``, else ``$XDG_CACHE_HOME/dask-assign``, else
    ``~/.cache/dask-assign``; ``None`` where the value given is one of ``OFF``."""
    if value is None:
        value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dask-assign"


def content_digest(path) -> str:
    """sha256 of a file's bytes; of a folder (a Parquet dataset), of its files' relative
    paths and bytes in sorted order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@functools.cache
def code_digest() -> str:
    """sha256 over this package's source and data files: any change of the code that builds
    a table (or of anything else in the package) is a new key."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.suffix in (".py", ".tsv") and f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def entry_key(parts: dict) -> str:
    """The key of an entry: a digest of ``parts`` (the inputs' digests and the table's
    settings, JSON-serialisable) with the code digest and the versions that read it back."""
    everything = {"parts": parts, "format": FORMAT, "code": code_digest(),
                  "python": platform.python_version(), "numpy": np.__version__,
                  "pandas": pd.__version__}
    text = json.dumps(everything, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load(directory, key: str):
    """The entry ``key`` in ``directory``, or ``None`` where there is none (or it cannot be
    read: it is removed, and rebuilt by the caller)."""
    path = Path(directory) / f"{key}{SUFFIX}"
    try:
        with open(path, "rb") as fh:
            value = pickle.load(fh)
    except (FileNotFoundError, NotADirectoryError):  # not cached (yet)
        return None
    except Exception as err:  # a truncated or foreign file: rebuilt, never fatal
        warnings.warn(f"ion cache: {path} could not be read ({type(err).__name__}: {err}); "
                      "building the ion table again", RuntimeWarning, stacklevel=2)
        _remove(path)
        return None
    try:
        os.utime(path)  # recently used: evicted last
    except OSError:
        pass
    return value


def store(directory, key: str, value, limit: int = CACHE_BYTES) -> Path | None:
    """Write ``value`` as the entry ``key`` (atomically: a reader sees the whole entry or
    none), then evict the least recently used entries beyond ``limit`` bytes. Returns the
    entry's path, or ``None`` where it was not kept (unwritable folder, larger than
    ``limit``)."""
    directory = Path(directory)
    path = directory / f"{key}{SUFFIX}"
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".tmp-", suffix=SUFFIX,
                                         delete=False) as fh:
            tmp = Path(fh.name)
            pickle.dump(value, fh, protocol=5)
        os.replace(tmp, path)
    except OSError as err:
        warnings.warn(f"ion cache: cannot write {directory} ({err}); running without it",
                      RuntimeWarning, stacklevel=2)
        if tmp is not None:
            _remove(tmp)
        return None
    evict(directory, limit)
    return path if path.exists() else None


def entries(directory) -> list[Path]:
    """The cache's entries, least recently used first: the files named as :func:`store`
    names them (a key of 64 hex digits), so that eviction never touches another file."""
    found = []
    for p in Path(directory).glob(f"*{SUFFIX}"):
        if not ENTRY_NAME.fullmatch(p.name):
            continue
        try:
            found.append((p.stat().st_mtime, p))
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
    return [p for _, p in sorted(found)]


def evict(directory, limit: int = CACHE_BYTES) -> None:
    """Remove the least recently used entries until the cache holds at most ``limit``
    bytes."""
    held = entries(directory)
    sizes = {p: _size(p) for p in held}
    total = sum(sizes.values())
    for p in held:
        if total <= limit:
            break
        _remove(p)
        total -= sizes[p]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
