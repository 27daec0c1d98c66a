"""Readers for peak tables and compound libraries (CSV, TSV, Parquet), with validation.

Peak tables exported by XCMS, MZmine, MS-DIAL and asari are recognised by their column names;
any other table is read through an explicit column mapping. Every problem is reported as an
:class:`~dask_assign.errors.InputError` naming the file, the column and the first bad rows.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .chem import parse_formula
from .errors import InputError
from .isotopes import hill_order

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

#: Elements whose counts a library table always has (others where its formulas hold them).
LIBRARY_ELEMENTS = ("C", "H", "N", "O", "S", "P")
#: Cell texts read as missing values in numeric columns (in id and text columns only an empty
#: cell is missing).
NULL_TEXT = ["", "NA", "NaN", "nan", "null", "NULL"]
#: Peaks above this m/z are kept, with a warning (a unit problem is likely).
MZ_WARN = 5000.0
#: Above this many minutes a retention time is taken to be in seconds (runs are shorter).
RT_SECONDS_THRESHOLD = 60.0


def read_tabular(path, kind: str) -> tuple[pd.DataFrame, str]:
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
        sep = sniff_delimiter(path, head.splitlines()[0])
        try:
            # Everything as text first: numbers are converted below, so a bad cell can be named.
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                                na_values=[""], encoding="utf-8-sig")
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


def sniff_delimiter(path: Path, first_line: str) -> str:
    """Tab for .tsv/.tab/.txt, else whichever of comma, tab and semicolon the header uses most."""
    if path.suffix.lower() in (".tsv", ".tab", ".txt") and "\t" in first_line:
        return "\t"
    return max([",", "\t", ";"], key=first_line.count)


def _row_numbers(index, unit: str) -> list[int]:
    # Text files: the header is line 1, so data row i (0-based) is on line i + 2.
    return [int(i) + (2 if unit == "lines" else 1) for i in index]


def _lines(frame, idx, unit: str) -> list[int]:
    """Line (or row) numbers of the positions ``idx`` of a chunk."""
    return _row_numbers(frame.index.to_numpy()[idx], unit)


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


class _PeakStream:
    """Validated chunks of a peak table, read in bounded memory.

    Iterating yields pandas frames ``peak_id, mz, rt, intensity`` (RT in the file's unit);
    afterwards ``rt_max``, ``rt_column`` and the id hashes are known for the checks that need
    the whole file (duplicate ids, RT unit).
    """

    def __init__(self, path, columns=None, batch_rows: int = 500_000):
        self.path, self.source = Path(path), str(path)
        self.explicit, self.batch_rows = columns, batch_rows
        self.rt_max, self.rt_column = -np.inf, None
        self.hashes, self.unit = [], "rows"
        self.n_high_mz = 0

    def _batches(self):
        import pyarrow.csv as pacsv
        import pyarrow.dataset as pads

        path = self.path
        if not path.exists():
            raise InputError(self.source, "peak file not found")
        if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
            try:
                dataset = pads.dataset(path, format="parquet")
                names = dataset.schema.names
                batches = dataset.to_batches(batch_size=self.batch_rows)
            except Exception as err:  # pyarrow raises many types for a damaged file
                raise InputError(self.source, f"cannot read Parquet: {err}") from None
            self.unit = "rows"
        else:
            with open(path, "rb") as fh:
                head = fh.read(65536).decode("utf-8-sig", errors="replace")
            if not head.strip():
                raise InputError(self.source, "the peak file is empty")
            first = head.splitlines()[0]
            sep = sniff_delimiter(path, first)
            names = [n.strip().strip('"') for n in next(csv.reader([first], delimiter=sep))]
            self._check_names(names)
            try:
                batches = pacsv.open_csv(
                    path, read_options=pacsv.ReadOptions(block_size=1 << 24),
                    parse_options=pacsv.ParseOptions(delimiter=sep),
                    # Text first: numbers are converted here, so a bad cell can be named.
                    convert_options=pacsv.ConvertOptions(
                        column_types={n: pa.string() for n in names},
                        strings_can_be_null=True, null_values=[""]))
            except pa.ArrowInvalid as err:
                raise InputError(self.source, f"cannot parse: {err}") from None
            self.unit = "lines"
        if self.unit == "rows":  # text headers were checked before the reader opened
            self._check_names(names)
        self.names = [str(n).strip() for n in names]
        return batches

    def _check_names(self, names):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(self.source, f"duplicated column names {dup}")

    def __iter__(self):
        batches = self._batches()
        cols = None
        offset = 0
        try:
            for batch in batches:
                # Metadata would turn a saved pandas index into the index: keep it a column.
                frame = batch.to_pandas(ignore_metadata=True)
                frame.columns = self.names
                if cols is None:
                    cols = _resolve_columns(frame, PEAK_ALIASES, self.explicit, ("mz", "rt"),
                                            self.source)
                    self.rt_column = cols["rt"]
                if len(frame):
                    yield self._validate(frame, cols, offset)
                offset += len(frame)
        except pa.ArrowInvalid as err:
            raise InputError(self.source, f"cannot parse: {str(err).strip()}") from None
        if offset == 0:
            if cols is None and self.unit == "rows":
                raise InputError(self.source, "the peak file is empty")
            raise InputError(self.source, "the peak file has a header but no rows")
        if self.n_high_mz:
            log.warning("%s: %d peaks above m/z %g, beyond small-molecule libraries; they are "
                        "kept and can only be called 'not in library'", self.source,
                        self.n_high_mz, MZ_WARN)

    def _validate(self, frame, cols, offset) -> pd.DataFrame:
        source, unit = self.source, self.unit
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        mz = _numeric(frame, cols["mz"], source, unit)
        _check(~(mz > 0), frame, cols["mz"], mz, "m/z must be positive", source, unit)
        rt = _numeric(frame, cols["rt"], source, unit)
        _check(rt < 0, frame, cols["rt"], rt, "retention time must not be negative", source,
               unit)
        if "intensity" in cols:
            inten = _numeric(frame, cols["intensity"], source, unit, allow_missing=True)
            _check(inten < 0, frame, cols["intensity"], inten, "intensity must not be negative",
                   source, unit)
        else:
            inten = np.full(len(frame), np.nan)
        if "peak_id" in cols:
            # Within the chunk here; across chunks by hash in check_unique.
            ids = _ids(frame, cols["peak_id"], source, unit, "peak id")
        else:
            ids = pd.Series((np.arange(len(frame)) + offset + 1).astype(str), dtype="string")
        self.hashes.append(pd.util.hash_array(ids.to_numpy(dtype=object)))
        self.n_high_mz += int((mz > MZ_WARN).sum())
        self.rt_max = max(self.rt_max, float(rt.max()))
        return pd.DataFrame({"peak_id": ids.to_numpy(dtype=object), "mz": mz, "rt": rt,
                             "intensity": inten}).astype({"peak_id": "string"})

    def check_unique(self, ids_of_rows):
        """Raise for ids repeated across chunks; ``ids_of_rows(rows)`` gives their ids."""
        hashes = np.concatenate(self.hashes) if self.hashes else np.zeros(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        same = np.flatnonzero(np.diff(hashes[order]) == 0)
        if same.size == 0:
            return
        rows = np.unique(np.concatenate([order[same], order[same + 1]]))
        ids = pd.Series(ids_of_rows(rows), index=rows)
        dup = ids[ids.duplicated(keep=False)]  # equal hashes of different ids are not errors
        if len(dup):
            raise InputError(self.source, "duplicate peak id",
                             column=self.explicit_id_column, rows=_row_numbers(
                                 dup.index.to_numpy(), self.unit),
                             values=dup.tolist()[:5], unit=self.unit)

    @property
    def explicit_id_column(self):
        found = _resolve_columns(pd.DataFrame(columns=self.names), PEAK_ALIASES, self.explicit,
                                 (), self.source)
        return found.get("peak_id")

    def rt_unit(self, rt_unit: str) -> str:
        if rt_unit != "auto":
            return rt_unit
        unit, reason = infer_rt_unit(np.array([self.rt_max]), self.rt_column)
        log.info("%s: retention times in %s (%s)", self.source, unit, reason)
        return unit


def load_peaks(path, columns=None, rt_unit: str = "auto") -> pd.DataFrame:
    """Read and validate a peak table into one pandas frame.

    Parameters
    ----------
    path : str or Path
        CSV, TSV or Parquet file (or a folder of Parquet files).
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
    stream = _PeakStream(path, columns)
    frame = pd.concat(list(stream), ignore_index=True)
    stream.check_unique(lambda rows: frame["peak_id"].to_numpy(dtype=object)[rows])
    if stream.rt_unit(rt_unit) == "s":
        frame["rt"] = frame["rt"] / 60.0
    return frame


def read_peaks(path, columns=None, rt_unit: str = "auto", partition_size: int = 250_000,
               workdir=None):
    """Read a peak table into a dask DataFrame, in bounded memory.

    The file is streamed once on the client and validated chunk by chunk (errors name the
    file, column and lines), and written as Parquet files of ``partition_size`` peaks into
    ``workdir``; the workers then read those files. Partitions follow ``dataframe.backend``
    (pandas by default, cudf where configured), since they are read by ``dd.read_parquet``.

    Parameters
    ----------
    path : str or Path
        CSV, TSV or Parquet peak table.
    columns : dict, optional
        Explicit column mapping, see :func:`load_peaks`.
    rt_unit : {"auto", "min", "s"}
    partition_size : int
        Peaks per partition.
    workdir : str or Path, optional
        Folder for the validated partitions, on a filesystem the workers see; when omitted, a
        new temporary folder removed when this Python process exits. Emptied first.

    Returns
    -------
    dask.dataframe.DataFrame
        Columns ``peak_id``, ``mz``, ``rt`` (minutes), ``intensity``, in file order.
    """
    import atexit
    import shutil
    import tempfile

    import dask.dataframe as dd
    import pyarrow.parquet as pq

    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="dask-assign-peaks-"))
        atexit.register(shutil.rmtree, workdir, True)  # lives as long as this process
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    schema = pa.schema([("peak_id", pa.string()), ("mz", pa.float64()), ("rt", pa.float64()),
                        ("intensity", pa.float64())])
    stream = _PeakStream(path, columns)
    files, buffer = [], []

    def flush(frame):
        name = workdir / f"part.{len(files):05d}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), name)
        files.append(str(name))

    try:
        held = 0
        for chunk in stream:
            buffer.append(chunk)
            held += len(chunk)
            while held >= partition_size:
                whole = pd.concat(buffer, ignore_index=True)
                flush(whole.iloc[:partition_size])
                buffer, held = [whole.iloc[partition_size:]], held - partition_size
        if held:
            flush(pd.concat(buffer, ignore_index=True))

        def ids_of_rows(rows):
            ids = pa.concat_tables([pq.read_table(f, columns=["peak_id"]) for f in files])
            return ids.column("peak_id").to_numpy(zero_copy_only=False)[rows]

        stream.check_unique(ids_of_rows)
        unit = stream.rt_unit(rt_unit)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    # One partition per file, in file order.
    ddf = dd.read_parquet(files)
    return ddf.assign(rt=ddf["rt"] / 60.0) if unit == "s" else ddf


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
        element counts ``n_<element>`` of every element in the library (at least
        ``n_C``, ``n_H``, ``n_N``, ``n_O``, ``n_S``, ``n_P``; Hill order), used by the isotope
        patterns and the adducts' feasibility downstream. Isotope-labelled atoms (``[13C]``)
        are in the mass but not in the counts: they do not vary.
        The library is small next to the peaks, so it stays a pandas frame on the client.
    """
    source = str(path)
    frame, unit = read_tabular(path, "library")
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
    counts = {el: np.zeros(n, dtype=np.int64) for el in LIBRARY_ELEMENTS}
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
            for el, k in f.elements.items():
                if el.isalpha():  # '13C' and the like are fixed labels, not elements
                    counts.setdefault(el, np.zeros(n, dtype=np.int64))[i] = k
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
        **{f"n_{el}": counts[el] for el in hill_order(counts)},
    })
    return out.astype({"compound_id": "string", "name": "string", "formula": "string"})
