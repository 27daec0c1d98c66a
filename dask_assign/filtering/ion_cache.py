"""The ion-table cache: a library's search space built once, kept on disk, read back.

A lab runs many small jobs against one library. For a large library its ion table (the
isotopologues of every compound x adduct) is most of a small run: HMDB's 11.5k compounds with
22 adducts make 3.2M ions in about 8 s, read back from the cache in 0.1 s
(benchmarks/NOTES.md). Each built space is one file named by a key over everything the
table depends on: the bytes of the library file and of the adduct table, the settings that
shape the table, this package's own code and the versions of Python, numpy and pandas. A
changed input, setting or release is a new key, so a cached table is only ever read by the
code that wrote it, and a run is the same with the cache or without it.

The entries are pickles, which can run code when read: a folder is used only where it is the
user's own and no one else may write to it (a new one is made private to its owner), as
numba's and joblib's caches are trusted. Reading or writing the cache never fails a run: a
broken entry is rebuilt, an unusable folder is skipped, each with a warning (a note in the
log where the folder is the default one, not chosen).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import platform
import re
import stat
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Environment variable naming the cache folder (``off``: no cache).
CACHE_ENV = "DASK_ASSIGN_CACHE_DIR"

#: What the cache may hold (bytes); the least recently used entries go beyond it.
CACHE_BYTES = 4 * 2**30

#: Bumped when an entry's layout changes without a change of the code digest's files.
FORMAT = 1

SUFFIX = ".ions.pickle"

#: Prefix of an entry being written; one older than ``STALE_TMP_S`` is a killed write's.
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 3600

#: An entry's file name: its key, then the suffix.
ENTRY_NAME = re.compile(r"[0-9a-f]{64}" + re.escape(SUFFIX))


#: Values of ``--ion-cache`` or ``$DASK_ASSIGN_CACHE_DIR`` that turn the cache off.
OFF = ("off", "none", "no", "0")


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/dask-assign``, else ``~/.cache/dask-assign``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dask-assign"


def cache_dir(value: str | None = None) -> Path | None:
    """The cache folder: ``value`` (``--ion-cache``) where given, else
    ``$DASK_ASSIGN_CACHE_DIR`` where set and not empty, else :func:`default_dir`; ``None``
    (no cache) for a value in ``OFF`` (and an empty ``--ion-cache``)."""
    if value is None:
        value = os.environ.get(CACHE_ENV) or None
    if value is None:
        return default_dir()
    return None if value.strip().lower() in (*OFF, "") else Path(value).expanduser()


def usable(directory) -> str | None:
    """Why ``directory`` may not hold entries (``None`` where it may, or does not exist
    yet): it must be a folder of this user that no one else can write to, since an entry
    planted there would run its code when read."""
    try:
        st = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):  # nothing there to read
        return None
    except OSError as err:
        return str(err)
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return "owned by another user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "others may write to it (chmod go-w, or choose a folder of your own)"
    return None


def _warn(directory, message: str) -> None:
    """A warning where the user chose the folder; a note in the log for the default one."""
    if Path(directory) == default_dir():
        log.info("ion cache: %s", message)
    else:
        warnings.warn(f"ion cache: {message}", RuntimeWarning, stacklevel=3)


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
                  "pandas": pd.__version__, "pyarrow": _version("pyarrow")}
    text = json.dumps(everything, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def load(directory, key: str):
    """The entry ``key`` in ``directory``, or ``None`` where there is none (or it cannot be
    read: it is removed, and rebuilt by the caller)."""
    path = Path(directory) / f"{key}{SUFFIX}"
    reason = usable(directory)
    if reason is not None:
        _warn(directory, f"not reading {directory}: {reason}")
        return None
    try:
        with open(path, "rb") as fh:
            value = pickle.load(fh)
    except (FileNotFoundError, NotADirectoryError):  # not cached (yet)
        return None
    except MemoryError:
        raise
    except Exception as err:  # a truncated or foreign file: rebuilt, never fatal
        _warn(directory, f"{path} could not be read ({type(err).__name__}: {err}); building "
              "the ion table again")
        _remove(path)
        return None
    try:
        os.utime(path)  # recently used: evicted last
    except OSError:
        pass
    return value


def store(directory, key: str, value, nbytes: int = 0, limit: int = CACHE_BYTES) -> Path | None:
    """Write ``value`` as the entry ``key`` (atomically: a reader sees the whole entry or
    none), then evict the least recently used entries beyond ``limit`` bytes. ``nbytes``:
    the caller's estimate of the entry's size; a value estimated or found larger than
    ``limit`` is not kept (and evicts nothing). Returns the entry's path, or ``None`` where
    it was not kept."""
    directory = Path(directory)
    path = directory / f"{key}{SUFFIX}"
    if nbytes > limit:
        log.info("ion cache: an entry of %.1f GiB is over the cache's %.1f GiB; not kept",
                 nbytes / 2**30, limit / 2**30)
        return None
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        reason = usable(directory)
        if reason is not None:
            _warn(directory, f"not writing {directory}: {reason}")
            return None
        with tempfile.NamedTemporaryFile(dir=directory, prefix=TMP_PREFIX, suffix=SUFFIX,
                                         delete=False) as fh:
            tmp = Path(fh.name)
            pickle.dump(value, fh, protocol=5)
        if tmp.stat().st_size > limit:
            return None
        os.replace(tmp, path)
        tmp = None
    except (OSError, pickle.PicklingError) as err:
        _warn(directory, f"cannot write {directory} ({err}); running without it")
        return None
    finally:  # also on an interrupt: no partial file is left behind
        if tmp is not None:
            _remove(tmp)
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
    bytes, and the temporary files of writes that were killed (older than ``STALE_TMP_S``)."""
    now = time.time()
    for p in Path(directory).glob(f"{TMP_PREFIX}*{SUFFIX}"):
        try:
            if now - p.stat().st_mtime > STALE_TMP_S:
                _remove(p)
        except FileNotFoundError:
            continue
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
