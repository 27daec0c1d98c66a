"""Reading tabular text and Parquet files: compression, delimiters, header rows, and checks that
name the file, the column and the row of a bad value."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from dask_assign.errors import InputError, reading

#: Lines searched for a header a layout recognises (MS-DIAL has four rows above its header).
HEADER_SEARCH = 20


#: What reading a damaged gzip stream raises (bad header, truncated, corrupt data).
GZIP_ERRORS = (OSError, EOFError, zlib.error)


#: Cell texts read as missing values in numeric columns (in id and text columns only an empty
#: cell is missing).
NULL_TEXT = ["", "NA", "NaN", "nan", "null", "NULL"]


def _text_suffix(path: Path) -> str:
    """The suffix that says what a text file holds, under a ``.gz``: ``.csv`` of ``x.csv.gz``."""
    suffix = path.suffix.lower()
    return Path(path.stem).suffix.lower() if suffix == ".gz" else suffix


def _open_text(path: Path):
    """A text file, decompressed on the fly when it is gzipped (``.gz``)."""
    raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")


def _read_error(path: Path, err) -> InputError:
    what = "the compressed file" if Path(path).suffix.lower() == ".gz" else "the file"
    return InputError(str(path), f"cannot read {what}: {err}")


def head_lines(path, n: int = HEADER_SEARCH) -> list[str]:
    """The first ``n`` lines of a (possibly gzipped) text file, without line ends.

    Raises
    ------
    InputError
        When a gzipped file is damaged.
    """
    path = Path(path)
    lines = []
    try:
        with _open_text(path) as fh:
            for line in fh:
                lines.append(line.rstrip("\r\n"))
                if len(lines) == n:
                    break
    except GZIP_ERRORS as err:
        raise _read_error(path, err) from None
    return lines


def read_tabular(path, kind: str) -> tuple[pd.DataFrame, str]:
    """Read a CSV, TSV (either possibly gzipped) or Parquet file; return the frame and what its
    row numbers count."""
    path = Path(path)
    if path.is_dir():
        raise InputError(str(path), f"is a folder; expected a {kind} file (CSV, TSV or Parquet)")
    with reading(path):  # a truncated or damaged file is named, whatever failed
        return _read_tabular(path, kind)


def _read_tabular(path: Path, kind: str) -> tuple[pd.DataFrame, str]:
    if not path.exists():
        raise InputError(str(path), f"{kind} file not found")
    if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types for a damaged file
            raise InputError(str(path), f"cannot read Parquet: {err}") from None
        unit = "rows"
    else:
        lines = head_lines(path, 1)
        if not lines or not lines[0].strip():
            raise InputError(str(path), f"the {kind} file is empty")
        sep = sniff_delimiter(path, lines[0])
        try:
            # Everything as text first: numbers are converted below, so a bad cell can be named.
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                                na_values=[""], encoding="utf-8-sig")
        except pd.errors.EmptyDataError:
            raise InputError(str(path), f"the {kind} file is empty") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise InputError(str(path), f"cannot parse: {str(err).strip()}") from None
        except GZIP_ERRORS as err:
            raise _read_error(path, err) from None
        unit = "lines"
    frame.columns = [str(c).strip() for c in frame.columns]
    dup = frame.columns[frame.columns.duplicated()].tolist()
    if dup:
        raise InputError(str(path), f"duplicated column names {dup}")
    if len(frame) == 0:
        raise InputError(str(path), f"the {kind} file has a header but no rows")
    return frame, unit


def sniff_delimiter(path: Path, first_line: str) -> str:
    """Tab for .tsv/.tab/.txt (also gzipped), else whichever of comma, tab and semicolon the
    header uses most."""
    if _text_suffix(Path(path)) in (".tsv", ".tab", ".txt") and "\t" in first_line:
        return "\t"
    return max([",", "\t", ";"], key=first_line.count)


def _split(line: str, sep: str) -> list[str]:
    return [n.strip().strip('"') for n in next(csv.reader([line], delimiter=sep))]


def _row_numbers(index, unit: str) -> list[int]:
    # Text files: the header is line 1, so data row i (0-based) is on line i + 2.
    return [int(i) + (2 if unit == "lines" else 1) for i in index]


def _lines(frame, idx, unit: str) -> list[int]:
    """Line (or row) numbers of the positions ``idx`` of a chunk."""
    return _row_numbers(frame.index.to_numpy()[idx], unit)


def _resolve_columns(columns, aliases, explicit, required, source, preset=None,
                     skip=()) -> dict[str, str]:
    """Map canonical names to ``columns``: the explicit mapping first, then ``preset`` (a
    layout's columns), then the aliases (except for the canonical names in ``skip``)."""
    columns = list(columns)
    explicit, preset = dict(explicit or {}), dict(preset or {})
    lower = {c.lower(): c for c in columns}
    found = {}
    for canon in aliases:
        if canon in explicit:
            if explicit[canon] not in columns:
                raise InputError(source, f"mapped column {explicit[canon]!r} for {canon!r} not "
                                 f"found; columns are {columns}")
            found[canon] = explicit[canon]
        elif canon in preset:
            found[canon] = preset[canon]
    for canon, names in aliases.items():
        if canon in found or canon in skip:
            continue
        for name in names:
            if name in lower and lower[name] not in found.values():
                found[canon] = lower[name]
                break
    missing = [c for c in required if c not in found]
    if missing:
        raise InputError(
            source,
            f"missing column(s) {missing}: found {columns}; recognised names for "
            + "; ".join(f"{m}: {aliases[m]}" for m in missing)
            + " (or map them explicitly, e.g. --columns mz=MyMz)",
        )
    return found


def _numeric(frame, column, source, unit, allow_missing=False) -> np.ndarray:
    """Convert a column to float64, naming the rows that are not numbers."""
    raw = frame[column]
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        # Spellings of "missing" count as missing in numbers (an id "NA" stays an id).
        raw = raw.where(~raw.isin(NULL_TEXT))
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values) & raw.notna().to_numpy()
    if bad.any():
        idx = np.flatnonzero(bad)
        raise InputError(source, "not a number", column=column, rows=_lines(frame, idx, unit),
                         values=raw.to_numpy()[idx[:5]].tolist(), unit=unit)
    if not allow_missing and np.isnan(values).any():
        idx = np.flatnonzero(np.isnan(values))
        raise InputError(source, "missing value", column=column, rows=_lines(frame, idx, unit),
                         unit=unit)
    inf = np.isinf(values)
    if inf.any():
        idx = np.flatnonzero(inf)
        raise InputError(source, "infinite value", column=column, rows=_lines(frame, idx, unit),
                         unit=unit)
    return values


def _check(mask, frame, column, values, message, source, unit):
    if mask.any():
        idx = np.flatnonzero(mask)
        raise InputError(source, message, column=column, rows=_lines(frame, idx, unit),
                         values=values[idx[:5]].tolist(), unit=unit)


def _ids(frame, column, source, unit, what) -> pd.Series:
    """An id column as text, with no missing or repeated values."""
    ids = frame[column].astype("string").str.strip()
    _check(ids.isna().to_numpy(), frame, column, ids.to_numpy(), f"missing {what}", source, unit)
    dup = ids.duplicated(keep=False).to_numpy()
    _check(dup, frame, column, ids.to_numpy(dtype=object), f"duplicate {what}", source, unit)
    return ids
