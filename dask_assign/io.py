"""Readers for peak tables and compound libraries (CSV, TSV, Parquet), with validation.

Peak tables exported by XCMS, MZmine, MS-DIAL and asari are recognised by their column names;
any other table is read through an explicit column mapping. Every problem is reported as an
:class:`~dask_assign.errors.InputError` naming the file, the column and the first bad rows.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .chem import parse_formula
from .errors import InputError

log = logging.getLogger(__name__)

#: Column names of peak tables by exporting tool, checked in order (case-insensitive).
PEAK_ALIASES = {
    "peak_id": ["peak_id", "id", "feature_id", "featureid", "row id", "alignment id",
                "id_number", "name", "feature"],
    "mz": ["mz", "m/z", "mzmed", "row m/z", "average mz", "precursor m/z", "mz_mean"],
    "rt": ["rt", "rtmed", "row retention time", "average rt(min)", "rtime", "retention_time",
           "retention time", "rt_min"],
    "intensity": ["intensity", "into", "maxo", "row height", "row area", "peak_area",
                  "peak_height", "height", "area"],
}
#: RT units implied by the exporting tool's column name.
RT_UNIT_OF_ALIAS = {"rtmed": "s", "rtime": "s", "row retention time": "min",
                    "average rt(min)": "min", "rt_min": "min"}

LIBRARY_ALIASES = {
    "compound_id": ["compound_id", "id", "identifier", "compound", "hmdb_id", "accession"],
    "name": ["name", "compound_name", "common_name"],
    "formula": ["formula", "molecular_formula", "chemical_formula"],
    "monoisotopic_mass": ["monoisotopic_mass", "exact_mass", "monoisotopic mass", "mass",
                          "neutral_mass"],
    "rt": ["rt", "retention_time", "rt_min", "retention time"],
}

#: Above this many minutes a retention time is taken to be in seconds (runs are shorter).
RT_SECONDS_THRESHOLD = 60.0


def _read_table(path, kind: str) -> tuple[pd.DataFrame, str]:
    """Read a CSV, TSV or Parquet file; return the frame and what its row numbers count."""
    path = Path(path)
    if not path.exists():
        raise InputError(str(path), f"{kind} file not found")
    if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types for a damaged file
            raise InputError(str(path), f"cannot read Parquet: {err}") from None
        unit = "rows"
    else:
        with open(path, "rb") as fh:
            head = fh.read(65536).decode("utf-8-sig", errors="replace")
        if not head.strip():
            raise InputError(str(path), f"the {kind} file is empty")
        first = head.splitlines()[0]
        sep = "\t" if (path.suffix.lower() in (".tsv", ".tab", ".txt") or
                       first.count("\t") > first.count(",")) else ","
        try:
            # Everything as text first: numbers are converted below, so a bad cell can be named.
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                                na_values=["", "NA", "NaN", "nan", "null", "NULL"],
                                encoding="utf-8-sig")
        except pd.errors.EmptyDataError:
            raise InputError(str(path), f"the {kind} file is empty") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise InputError(str(path), f"cannot parse: {str(err).strip()}") from None
        unit = "lines"
    frame.columns = [str(c).strip() for c in frame.columns]
    dup = frame.columns[frame.columns.duplicated()].tolist()
    if dup:
        raise InputError(str(path), f"duplicated column names {dup}")
    if len(frame) == 0:
        raise InputError(str(path), f"the {kind} file has a header but no rows")
    return frame, unit


def _row_numbers(index: np.ndarray, unit: str) -> list[int]:
    # Text files: the header is line 1, so data row i (0-based) is on line i + 2.
    return [int(i) + (2 if unit == "lines" else 1) for i in index]


def _resolve_columns(frame, aliases, explicit, required, source) -> dict[str, str]:
    """Map canonical names to the frame's columns: explicit mapping first, then aliases."""
    explicit = dict(explicit or {})
    lower = {c.lower(): c for c in frame.columns}
    found = {}
    for canon, names in aliases.items():
        if canon in explicit:
            if explicit[canon] not in frame.columns:
                raise InputError(source, f"mapped column {explicit[canon]!r} for {canon!r} not "
                                 f"found; columns are {list(frame.columns)}")
            found[canon] = explicit[canon]
            continue
        for name in names:
            if name in lower and lower[name] not in found.values():
                found[canon] = lower[name]
                break
    missing = [c for c in required if c not in found]
    if missing:
        raise InputError(
            source,
            f"missing column(s) {missing}: found {list(frame.columns)}; recognised names for "
            + "; ".join(f"{m}: {aliases[m]}" for m in missing)
            + " (or map them explicitly, e.g. --columns mz=MyMz)",
        )
    return found


def _numeric(frame, column, source, unit, allow_missing=False) -> np.ndarray:
    """Convert a column to float64, naming the rows that are not numbers."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values) & raw.notna().to_numpy()
    if bad.any():
        idx = np.flatnonzero(bad)
        raise InputError(source, "not a number", column=column, rows=_row_numbers(idx, unit),
                         values=raw.to_numpy()[idx[:5]].tolist(), unit=unit)
    if not allow_missing and np.isnan(values).any():
        idx = np.flatnonzero(np.isnan(values))
        raise InputError(source, "missing value", column=column, rows=_row_numbers(idx, unit),
                         unit=unit)
    inf = np.isinf(values)
    if inf.any():
        idx = np.flatnonzero(inf)
        raise InputError(source, "infinite value", column=column, rows=_row_numbers(idx, unit),
                         unit=unit)
    return values


def _check(mask, frame, column, values, message, source, unit):
    if mask.any():
        idx = np.flatnonzero(mask)
        raise InputError(source, message, column=column, rows=_row_numbers(idx, unit),
                         values=values[idx[:5]].tolist(), unit=unit)


def _ids(frame, column, source, unit, what) -> pd.Series:
    """An id column as text, with no missing or repeated values."""
    ids = frame[column].astype("string").str.strip()
    _check(ids.isna().to_numpy(), frame, column, ids.to_numpy(), f"missing {what}", source, unit)
    dup = ids.duplicated(keep=False).to_numpy()
    _check(dup, frame, column, ids.to_numpy(dtype=object), f"duplicate {what}", source, unit)
    return ids


def infer_rt_unit(rt: np.ndarray, alias: str | None = None) -> tuple[str, str]:
    """Guess whether retention times are in minutes or seconds.

    Parameters
    ----------
    rt : array
        Retention times.
    alias : str, optional
        The column name they came from (tools such as XCMS write seconds).

    Returns
    -------
    unit, reason : str
        ``"min"`` or ``"s"``, and why.

    Examples
    --------
    >>> infer_rt_unit(np.array([30.0, 600.0, 1100.0]))[0]
    's'
    >>> infer_rt_unit(np.array([0.5, 12.0]))[0]
    'min'
    """
    if alias is not None and alias.lower() in RT_UNIT_OF_ALIAS:
        unit = RT_UNIT_OF_ALIAS[alias.lower()]
        return unit, f"column {alias!r} is written in {'seconds' if unit == 's' else 'minutes'}"
    top = float(np.nanmax(rt)) if rt.size else 0.0
    if top > RT_SECONDS_THRESHOLD:
        return "s", f"largest RT {top:g} > {RT_SECONDS_THRESHOLD:g}, taken as seconds"
    return "min", f"largest RT {top:g} <= {RT_SECONDS_THRESHOLD:g}, taken as minutes"


def load_peaks(path, columns=None, rt_unit: str = "auto") -> pd.DataFrame:
    """Read and validate a peak table into pandas.

    Parameters
    ----------
    path : str or Path
        CSV, TSV or Parquet file.
    columns : dict, optional
        Explicit mapping of ``peak_id``, ``mz``, ``rt``, ``intensity`` to the file's columns.
    rt_unit : {"auto", "min", "s"}
        Unit of the file's retention times; converted to minutes.

    Returns
    -------
    pandas.DataFrame
        Columns ``peak_id`` (text), ``mz``, ``rt`` (minutes), ``intensity`` (float64; NaN where
        the table has none), in file order.
    """
    source = str(path)
    frame, unit = _read_table(path, "peak")
    cols = _resolve_columns(frame, PEAK_ALIASES, columns, ("mz", "rt"), source)
    mz = _numeric(frame, cols["mz"], source, unit)
    _check(~(mz > 0), frame, cols["mz"], mz, "m/z must be positive", source, unit)
    rt = _numeric(frame, cols["rt"], source, unit)
    _check(rt < 0, frame, cols["rt"], rt, "retention time must not be negative", source, unit)
    if "intensity" in cols:
        inten = _numeric(frame, cols["intensity"], source, unit, allow_missing=True)
        _check(inten < 0, frame, cols["intensity"], inten, "intensity must not be negative",
               source, unit)
    else:
        inten = np.full(len(frame), np.nan)
    if "peak_id" in cols:
        ids = _ids(frame, cols["peak_id"], source, unit, "peak id")
    else:
        log.info("%s: no peak id column; peaks are numbered by row", source)
        ids = pd.Series(np.arange(1, len(frame) + 1).astype(str), dtype="string")
    if rt_unit == "auto":
        rt_unit, reason = infer_rt_unit(rt, cols["rt"])
        log.info("%s: retention times in %s (%s)", source, rt_unit, reason)
    if rt_unit == "s":
        rt = rt / 60.0
    return pd.DataFrame({"peak_id": ids.to_numpy(), "mz": mz, "rt": rt, "intensity": inten}
                        ).astype({"peak_id": "string"})


def read_peaks(path, columns=None, rt_unit: str = "auto", partition_size: int = 250_000):
    """Read a peak table into a dask DataFrame.

    The file is validated as a whole first (errors name the file, column and rows), then split
    into partitions of ``partition_size`` peaks. The partitions follow ``dataframe.backend``
    (pandas by default, cudf where configured).

    Parameters
    ----------
    path : str or Path
        CSV, TSV or Parquet peak table.
    columns : dict, optional
        Explicit column mapping, see :func:`load_peaks`.
    rt_unit : {"auto", "min", "s"}
    partition_size : int
        Peaks per partition.

    Returns
    -------
    dask.dataframe.DataFrame
        Columns ``peak_id``, ``mz``, ``rt`` (minutes), ``intensity``.
    """
    import dask
    import dask.dataframe as dd

    frame = load_peaks(path, columns, rt_unit)
    nparts = max(1, math.ceil(len(frame) / partition_size))
    ddf = dd.from_pandas(frame, npartitions=nparts, sort=False)
    # from_pandas ignores dataframe.backend; move the partitions where the config says.
    backend = dask.config.get("dataframe.backend", "pandas")
    return ddf if backend == "pandas" else ddf.to_backend(backend)


def read_library(path, columns=None, rt_unit: str = "min") -> pd.DataFrame:
    """Read and validate a compound library.

    Parameters
    ----------
    path : str or Path
        CSV, TSV or Parquet with ``compound_id``, ``name``, ``formula`` and/or
        ``monoisotopic_mass``, and an optional ``rt``.
    columns : dict, optional
        Explicit mapping of the canonical names to the file's columns.
    rt_unit : {"min", "s"}
        Unit of the library's retention times; converted to minutes.

    Returns
    -------
    pandas.DataFrame
        ``compound_id``, ``name``, ``formula`` (Hill notation; missing where only a mass is
        known), ``monoisotopic_mass``, ``rt`` (minutes; NaN where unknown), ``charge`` and
        element counts ``n_C``, ``n_H``, ``n_N``, ``n_O``, ``n_S``, ``n_P`` used downstream.
        The library is small next to the peaks, so it stays a pandas frame on the client.
    """
    source = str(path)
    frame, unit = _read_table(path, "library")
    cols = _resolve_columns(frame, LIBRARY_ALIASES, columns, ("compound_id",), source)
    if "formula" not in cols and "monoisotopic_mass" not in cols:
        raise InputError(source, "need a 'formula' or a 'monoisotopic_mass' column; found "
                         f"{list(frame.columns)}")
    ids = _ids(frame, cols["compound_id"], source, unit, "compound id")
    n = len(frame)
    mass = (_numeric(frame, cols["monoisotopic_mass"], source, unit, allow_missing=True).copy()
            if "monoisotopic_mass" in cols else np.full(n, np.nan))
    formulas = np.full(n, None, dtype=object)
    charge = np.zeros(n, dtype=np.int64)
    counts = {el: np.zeros(n, dtype=np.int64) for el in ("C", "H", "N", "O", "S", "P")}
    if "formula" in cols:
        raw = frame[cols["formula"]]
        bad_rows, bad_vals, bad_msg = [], [], None
        for i, text in enumerate(raw.to_numpy(dtype=object)):
            if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
                continue
            try:
                f = parse_formula(text)
            except ValueError as err:
                bad_rows.append(i)
                bad_vals.append(text)
                bad_msg = bad_msg or str(err)
                continue
            formulas[i] = f.formula
            mass[i] = f.mass
            charge[i] = f.charge
            for el in counts:
                counts[el][i] = f.count(el)
        if bad_rows:
            raise InputError(source, f"unparsable formula ({bad_msg})", column=cols["formula"],
                             rows=_row_numbers(np.array(bad_rows), unit), values=bad_vals[:5],
                             unit=unit)
    no_mass = np.isnan(mass)
    _check(no_mass, frame, cols.get("formula", cols.get("monoisotopic_mass")),
           ids.to_numpy(dtype=object), "neither a formula nor a mass", source, unit)
    _check(~(mass > 0), frame, cols.get("monoisotopic_mass", "formula"), mass,
           "mass must be positive", source, unit)
    if "rt" in cols:
        rt = _numeric(frame, cols["rt"], source, unit, allow_missing=True)
        _check(rt < 0, frame, cols["rt"], rt, "retention time must not be negative", source,
               unit)
        if rt_unit == "s":
            rt = rt / 60.0
    else:
        rt = np.full(n, np.nan)
    names = (frame[cols["name"]].astype("string") if "name" in cols
             else ids.astype("string"))
    out = pd.DataFrame({
        "compound_id": ids.to_numpy(dtype=object),
        "name": names.to_numpy(dtype=object),
        "formula": formulas,
        "monoisotopic_mass": mass,
        "rt": rt,
        "charge": charge,
        **{f"n_{el}": v for el, v in counts.items()},
    })
    return out.astype({"compound_id": "string", "name": "string", "formula": "string"})
