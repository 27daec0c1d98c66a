"""Files and folders the package writes, and the rule that guards them: a command never
removes or overwrites what it did not write.

Every folder the package makes carries a marker, every result a manifest of its files, every
report page and figure the package's name; a result is staged beside its target and swapped
in atomically (``renameat2(RENAME_EXCHANGE)`` where the kernel has it), under a lock, so a
kill at any point leaves the old result or the new one."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dask_assign.errors import InputError

#: Output formats of a result folder (:data:`dask_assign.output.tables.TABLE_FORMAT` says how
#: each stores its tables).
FORMATS = ("parquet", "csv", "mztab", "parquet-dataset")


log = logging.getLogger(__name__)


def _atomic(write, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj):
    """Write JSON under a temporary name, then rename: a reader never sees half a file."""
    _atomic(lambda p: p.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float)),
            Path(path))


def staging_path(out) -> Path:
    """Where a run into ``out`` writes until it is complete (beside it: same filesystem)."""
    out = Path(out).resolve()
    return out.with_name(out.name + ".partial")


def input_path(out) -> Path:
    """Where a run into ``out`` keeps its validated peak partitions (beside it, so workers that
    share the output's filesystem can read them); removed when the run ends."""
    out = Path(out).resolve()
    return out.with_name(out.name + ".input")


def sha256(path) -> str:
    """Checksum of an input file: the manifest's, and the ion cache's key."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MANIFEST = "manifest.json"


SUCCESS = "_SUCCESS"


#: Marks a folder the package works in (``OUT.partial``, ``OUT.input``): only such a folder
#: is ever emptied or removed whole.
OWN_MARKER = ".dask-assign-folder"


#: Written into the files the package writes outside a result's list: an HTML report's
#: ``<meta name="generator">`` and a PNG's ``Software`` text chunk.
GENERATOR = "dask-assign"


HTML_MARK = f'<meta name="generator" content="{GENERATOR}">'


#: Files written into a result folder after it was committed (``report``, ``evaluate``):
#: the package's own where they carry its mark.
DERIVED_FILES = ("report.html", "reliability.png")


#: Every name a result may hold (a file of the user's under one of these names stops
#: ``--overwrite``: the new result could not keep it).
RESULT_NAMES = frozenset({f"{t}.{ext}" for t in ("assignments", "candidates")
                          for ext in ("parquet", "csv")}
                         | {"calibration.json", "context.json", MANIFEST, SUCCESS,
                            *DERIVED_FILES})


@dataclass(frozen=True)
class Kind:
    """A kind of output folder the package writes.

    Attributes
    ----------
    what : str
        Its name in messages ("result", "model").
    key : str
        The file that makes a folder one of this kind (removed last when an old folder is
        discarded, so that what is left stays recognisable).
    names : frozenset of str
        Every name a new folder of this kind may hold.
    owned : callable
        ``owned(folder)``: the names in ``folder`` that the package wrote, or ``None`` when
        ``folder`` is not a folder of this kind.
    beside : tuple of callable
        The package's working folders beside the output (``OUT.partial``, ...), from ``out``.
    """

    what: str
    key: str
    names: frozenset
    owned: Callable
    beside: tuple = (staging_path,)


def result_files(folder) -> set[str] | None:
    """The files of a result folder that the package wrote, or ``None`` when ``folder`` is not
    a dask-assign result.

    A result is recognised by its ``manifest.json``, which lists the files of the run
    (results written before that list existed: the files a run writes); a report or
    reliability diagram written into it later counts where it carries the package's mark.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder / MANIFEST)
    if manifest is None:
        return None
    files = manifest.get("files")
    if not isinstance(files, list):
        ext = "csv" if manifest.get("format") == "csv" else "parquet"
        files = [f"assignments.{ext}", f"candidates.{ext}", "calibration.json", "context.json"]
    # Plain names only: a manifest never sends a removal outside its folder.
    ours = {f for f in files if isinstance(f, str) and f not in ("", ".", "..")
            and "/" not in f and os.sep not in f}
    ours |= {MANIFEST, SUCCESS}
    ours |= {f for f in DERIVED_FILES if is_marked(folder / f)}
    return ours


def _read_manifest(path: Path) -> dict | None:
    if path.is_symlink() or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and "dask_assign_version" in manifest
    return manifest if ok else None


#: A result folder of ``run``, ``submit`` and ``demo``.
RESULT = Kind("result", MANIFEST, RESULT_NAMES, result_files, (staging_path, input_path))


def replaced_path(out) -> Path:
    """Where an earlier folder at ``out`` waits while the new one is renamed in, on
    filesystems without an atomic exchange (see :func:`recover`)."""
    out = Path(out).resolve()
    return out.with_name(out.name + ".replaced")


def lock_path(out) -> Path:
    """The lock file of ``out``, beside it."""
    out = Path(out).resolve()
    return out.with_name(f".{out.name}.dask-assign-lock")


def is_own_folder(path) -> bool:
    """Whether ``path`` is a folder this package made to work in (it holds the marker)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / OWN_MARKER).is_file()


def fresh_own_folder(path) -> Path:
    """An empty working folder at ``path``, marked as the package's own.

    An earlier folder of the package's there is removed first; an empty folder is used as it
    is; anything else is refused.

    Raises
    ------
    InputError
        When ``path`` exists and is not an empty folder or one the package made.
    """
    path = Path(path)
    if is_own_folder(path):
        shutil.rmtree(path)
    elif path.is_symlink() or (path.exists() and (not path.is_dir() or os.listdir(path))):
        raise InputError(str(path), NOT_OURS)
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        (path / OWN_MARKER).write_text(f"made by {GENERATOR}\n")
    except BaseException:
        if made:  # not left behind unmarked: it could never be removed again
            path.rmdir()
        raise
    return path


def remove_own_folder(path):
    """Remove ``path`` if it is a working folder the package made; leave anything else."""
    if is_own_folder(path):
        shutil.rmtree(path, ignore_errors=True)


NOT_OURS = "exists and was not made by dask-assign; move it away (nothing was written)"


def is_marked(path) -> bool:
    """Whether a file carries the package's mark (an HTML report, a PNG plot)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head == b"\x89PNG\r\n\x1a\n":
                return _png_software(fh) == GENERATOR
            return HTML_MARK.encode() in head + fh.read(4096)
    except OSError:
        return False


def _png_software(fh) -> str | None:
    """The ``Software`` text chunk of a PNG whose signature was read."""
    while True:
        header = fh.read(8)
        if len(header) < 8:
            return None
        size, kind = int.from_bytes(header[:4], "big"), header[4:]
        if kind == b"IEND":
            return None
        if kind != b"tEXt":
            fh.seek(size + 4, os.SEEK_CUR)  # the data and the CRC
            continue
        data = fh.read(size)
        fh.seek(4, os.SEEK_CUR)
        if data.startswith(b"Software\0"):
            return data[len(b"Software\0"):].decode("latin-1")


def check_own_file(path) -> Path:
    """Refuse to write ``path`` unless it is absent or a file the package wrote (marked).

    Raises
    ------
    InputError
        Naming the path, when it is a folder or a file the package did not write.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise InputError(str(path), "is a folder; give a file name (nothing was written)")
    if (path.exists() or path.is_symlink()) and not is_marked(path):
        raise InputError(str(path), "exists and was not written by dask-assign; choose another "
                         "name or move it away (nothing was written)")
    return path


def replace_own_file(path, write: Callable[[Path], None]) -> Path:
    """Write a single file (a report, a plot) atomically, never over a file of the user's.

    Parameters
    ----------
    path : str or Path
        Absent, or a file the package wrote (:func:`check_own_file`).
    write : callable
        ``write(tmp)`` writes the content, with the package's mark, to ``tmp``.

    Returns
    -------
    Path
    """
    path = check_own_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name of our own (O_EXCL), never a file of the user's; modes from the umask.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_held: dict[str, int] = {}  # lock file -> the thread holding it (a thread may claim again)


_held_guard = threading.Lock()


@contextmanager
def _locked(out: Path):
    path = lock_path(out)
    key = str(path)
    with _held_guard:
        holder = _held.get(key)
        if holder is None:
            _held[key] = threading.get_ident()
    if holder == threading.get_ident():
        yield  # this thread holds it already (the CLI, then the pipeline it calls)
        return
    if holder is not None:
        raise InputError(str(out), BUSY)
    try:
        fd = _acquire(path, out)
    except BaseException:
        with _held_guard:
            del _held[key]
        raise
    try:
        yield
    finally:
        with _held_guard:
            del _held[key]
        os.unlink(path)  # before unlocking: a lock taken on an unlinked file is known stale
        os.close(fd)


BUSY = "another dask-assign command is writing it now; try again when it has finished"


LOCK_TEXT = b"dask-assign lock\n"


def _acquire(path: Path, out: Path) -> int:
    """Lock ``path`` (flock, exclusive, not waiting); the holder unlinks it when done."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(str(out), BUSY) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # the holder before us unlinked it: lock the new one
    content = os.pread(fd, 64, 0)
    if content not in (b"", LOCK_TEXT):  # a file of the user's under that odd name
        os.close(fd)
        raise InputError(str(path), NOT_OURS)
    os.pwrite(fd, LOCK_TEXT, 0)
    return fd


@contextmanager
def claim(out, kind: Kind = RESULT, overwrite: bool = False):
    """Reserve the output folder ``out`` for one command.

    Holds the lock beside ``out``, finishes what an interrupted commit left (:func:`recover`)
    and checks that writing there destroys nothing the package did not write. Commands claim
    their output before any work, so a refusal writes nothing; a thread may claim again what
    it holds.

    Parameters
    ----------
    out : str or Path
    kind : Kind
        :data:`RESULT`, or :data:`dask_assign.scoring.model.MODEL`.
    overwrite : bool
        Allow replacing an earlier folder of ``kind`` (only the files the package wrote).

    Yields
    ------
    Path
        ``out``, resolved.

    Raises
    ------
    InputError
        One line naming the path: ``out`` is not empty and not a folder of ``kind``; is one
        and ``overwrite`` is not given; holds a file of the user's under a name the new
        folder needs; a working folder beside it was not made by the package; another
        command holds the lock.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        recover(out, kind)
        check_out(out, kind, overwrite)
        yield out


def check_out(out, kind: Kind = RESULT, overwrite: bool = False):
    """Raise an :class:`InputError` unless ``out`` may be written (see :func:`claim`)."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(str(out), f"is not a folder; give a folder for the {kind.what}")
    entries = set(os.listdir(out)) if out.is_dir() else set()
    if entries:
        ours = kind.owned(out)
        if ours is None:
            raise InputError(str(out), f"is not empty and is not a dask-assign {kind.what}; "
                             "nothing was written (give a new or an empty folder)")
        if not overwrite:
            raise InputError(str(out), f"holds an earlier dask-assign {kind.what}; give "
                             "--overwrite to replace its files (files of yours in it are kept)")
        clash = sorted((entries - ours) & kind.names)
        if clash:
            raise InputError(str(out / clash[0]), f"was not written by dask-assign and the new "
                             f"{kind.what} needs its name; move it away (nothing was written)")
    for where in kind.beside:
        folder = where(out)
        if (folder.exists() or folder.is_symlink()) and not (is_own_folder(folder)
                                                             or _emptied(folder)):
            raise InputError(str(folder), NOT_OURS)


def swap_in(staging: Path, out: Path, kind: Kind = RESULT):
    """Put the complete folder ``staging`` (marked, beside ``out``) at ``out``.

    ``out`` absent or empty: one rename. An earlier folder of ``kind``: every entry in it that
    the package did not write is hard-linked into ``staging`` (so none of its bytes is ever
    absent from ``out``), then the two folders are exchanged in one step and the old one,
    now at ``staging``, is removed (:func:`discard`). Where the kernel or filesystem has no
    atomic exchange, ``out`` is renamed to ``OUT.replaced`` and ``staging`` to ``out``; a
    kill between the two renames is undone by the next :func:`recover`.
    """
    staging, out = Path(staging), Path(out)
    earlier = out.is_dir() and bool(os.listdir(out))
    if earlier:
        ours = kind.owned(out)
        if ours is None:  # claimed at the start; looked at again now that it is replaced
            raise InputError(str(out), f"is no longer a dask-assign {kind.what}; the new one "
                             f"is left in {staging}")
        theirs = set(os.listdir(out)) - ours
        clash = sorted(theirs & set(os.listdir(staging)))
        if clash:  # added while the run went on
            raise InputError(str(out / clash[0]), f"was not written by dask-assign and the new "
                             f"{kind.what} needs its name; the new one is left in {staging}")
        for name in sorted(theirs):
            _carry(out / name, staging / name, out)
        shutil.copymode(out, staging)
    os.unlink(staging / OWN_MARKER)
    if not earlier:
        os.replace(staging, out)  # rename(2) replaces an empty folder in one step
    elif _exchange(staging, out):
        discard(staging, out, kind)
    else:
        replaced = replaced_path(out)
        os.rename(out, replaced)
        os.rename(staging, out)
        discard(replaced, out, kind)


def _carry(src: Path, dst: Path, out: Path):
    """``src`` at ``dst`` as hard links (a folder: its tree, links of its files)."""
    try:
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_dir():
            os.mkdir(dst)
            for name in sorted(os.listdir(src)):
                _carry(src / name, dst / name, out)
            shutil.copystat(src, dst, follow_symlinks=False)
        else:
            os.link(src, dst, follow_symlinks=False)
    except InputError:
        raise
    except OSError as err:
        raise InputError(str(src), f"cannot be kept in the new folder ({err.strerror}: the "
                         f"filesystem must allow hard links); move it out of {out}") from None


def discard(old, out, kind: Kind = RESULT):
    """Remove a folder of ``kind`` that a commit moved aside from ``out``: the files the
    package wrote in it (of a table folder, its part files), and entries of the user's that
    ``out`` holds too (the same files: hard links). Anything else is kept, with the folder
    and its key file, and logged."""
    old, out = Path(old), Path(out)
    ours = kind.owned(old) or set()
    kept = []
    for name in sorted(os.listdir(old)):
        path = old / name
        if name == kind.key:
            continue  # last: it is what makes the folder recognisable as ours
        if name in ours and path.is_file() and not path.is_symlink():
            os.unlink(path)
        elif name in ours and _remove_parts(path):
            pass
        elif _same(path, out / name):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else os.unlink(path)
        else:
            kept.append(name)
    if kept:
        log.warning("%s: kept, it holds %s, which %s does not", old, kept, out)
        return
    (old / kind.key).unlink(missing_ok=True)
    os.rmdir(old)


#: The part files of a table written as a folder (``--format parquet-dataset``).
PART_FILE = re.compile(r"part\.\d+\.(parquet|csv)(\.tmp)?")


def _remove_parts(folder: Path) -> bool:
    """Remove a table folder of the package's: its part files, then the folder if that
    emptied it. Whether it is gone (a file of the user's in it keeps it)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    for entry in os.scandir(folder):
        if PART_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    if os.listdir(folder):
        return False
    os.rmdir(folder)
    return True


def _same(a: Path, b: Path) -> bool:
    """Whether ``b`` holds the very files of ``a`` (hard links; folders entry by entry)."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    if a.is_dir() or b.is_dir():
        return (a.is_dir() and b.is_dir() and set(os.listdir(a)) <= set(os.listdir(b))
                and all(_same(a / n, b / n) for n in os.listdir(a)))
    return os.path.samestat(sa, sb)


def recover(out, kind: Kind = RESULT):
    """Finish what an interrupted commit into ``out`` left.

    Without an atomic exchange a kill between the two renames leaves no ``out`` and the old
    folder at ``OUT.replaced``: it is renamed back. An old folder moved aside (at
    ``OUT.replaced``, or at ``OUT.partial`` after an exchange), or a complete new one that was
    never switched in, is removed with :func:`discard`. ``out`` itself is left as it is.
    """
    out = Path(out).resolve()
    replaced = replaced_path(out)
    if replaced.exists() or replaced.is_symlink():
        if _emptied(replaced):
            os.rmdir(replaced)
        elif replaced.is_symlink() or kind.owned(replaced) is None:
            raise InputError(str(replaced), NOT_OURS)
        elif not out.exists():
            os.rename(replaced, out)
        else:
            discard(replaced, out, kind)
    staging = staging_path(out)
    if staging.is_dir() and not staging.is_symlink() and not is_own_folder(staging):
        if _emptied(staging):
            os.rmdir(staging)
        elif kind.owned(staging) is not None:
            discard(staging, out, kind)


def _emptied(folder: Path) -> bool:
    """An empty folder: what a discard killed before its last step leaves."""
    return folder.is_dir() and not folder.is_symlink() and not os.listdir(folder)


@lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28 and later
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; ``False`` where the kernel or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))
