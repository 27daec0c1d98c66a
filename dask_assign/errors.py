"""The error raised for bad input: it names the file, the column and the first bad rows."""

from __future__ import annotations

import gzip
import lzma
import zlib
from collections.abc import Sequence
from contextlib import contextmanager


class InputError(ValueError):
    """Bad input, reported so a user can find and fix it.

    Parameters
    ----------
    source : str
        The file (or table) the problem is in.
    message : str
        What is wrong, in a few words.
    column : str, optional
        The column concerned.
    rows : sequence, optional
        The offending rows: line numbers of a text file (the header is line 1) or 1-based row
        numbers of a Parquet file; the first few are shown.
    values : sequence, optional
        The offending values, shown beside ``rows``.
    unit : str
        What ``rows`` counts ("lines" for text files, "rows" otherwise).

    Examples
    --------
    >>> str(InputError("peaks.csv", "m/z must be positive", column="mz", rows=[3], values=[-1.0]))
    "peaks.csv: column 'mz': m/z must be positive (rows 3: -1.0)"
    """

    #: How many offending rows an error message lists.
    max_rows = 5

    def __init__(
        self,
        source: str,
        message: str,
        column: str | None = None,
        rows: Sequence | None = None,
        values: Sequence | None = None,
        unit: str = "rows",
    ):
        self.source, self.column, self.message, self.unit = str(source), column, message, unit
        self.rows = list(rows) if rows is not None else []
        self.values = list(values) if values is not None else []
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.source}: "
        if self.column is not None:
            text += f"column {self.column!r}: "
        text += self.message
        if self.rows:
            shown = self.rows[: self.max_rows]
            if self.values:
                items = ", ".join(f"{r}: {v!r}" for r, v in zip(shown, self.values, strict=False))
            else:
                items = ", ".join(str(r) for r in shown)
            more = f" and {len(self.rows) - len(shown)} more" if len(self.rows) > len(shown) else ""
            text += f" ({self.unit} {items}{more})"
        return text


def unreadable(source, err: BaseException) -> InputError:
    """The :class:`InputError` for a file that could not be read, in terms of the user's file.

    Parameters
    ----------
    source : str or Path
        The file being read.
    err : BaseException
        What the operating system or a decompressor raised.

    Examples
    --------
    >>> str(unreadable("lib", IsADirectoryError(21, "Is a directory")))
    'lib: is a folder; expected a file'
    >>> str(unreadable("p.csv.gz", EOFError("ended early")))
    'p.csv.gz: the compressed file is truncated or damaged (ended early)'
    """
    if isinstance(err, IsADirectoryError):
        return InputError(str(source), "is a folder; expected a file")
    if isinstance(err, FileNotFoundError):
        return InputError(str(source), "file not found")
    if isinstance(err, PermissionError):
        return InputError(str(source), "permission denied")
    if isinstance(err, (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)):
        return InputError(str(source), f"the compressed file is truncated or damaged ({err})")
    if isinstance(err, OSError) and err.strerror:  # a system call failed: its own words
        return InputError(str(source), f"cannot read: {err.strerror}")
    # An OSError with only a message: pyarrow's and bz2's decompressors raise these.
    return InputError(str(source), f"cannot read ({err})")


@contextmanager
def reading(source):
    """Turn any error of the operating system or of a decompressor raised while reading
    ``source`` into an :class:`InputError` naming it (see :func:`unreadable`)."""
    try:
        yield
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:
        raise unreadable(source, err) from None
