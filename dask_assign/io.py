"""Readers for peak tables and compound libraries (CSV, TSV, Parquet; text files may be gzipped),
with validation.

Peak tables are read as the field's tools write them, with no options: each tool's layout is one
row of :data:`LAYOUTS` (the columns that tell it apart, its id, m/z and RT columns, the RT unit,
where its per-sample intensities are). The header is the first line a layout recognises, so rows
above it (MS-DIAL's four rows of sample metadata) are skipped; the tool's own id column is
always ``peak_id`` (XCMS row names, MZmine ``id`` / ``row ID``, MS-DIAL ``Alignment ID``, asari
``id_number``). Any other table is read by its column names (:data:`PEAK_ALIASES`) or an explicit
column mapping, which also overrides a layout.

**Intensity.** Where a layout has per-sample intensity columns (MS-DIAL samples, MZmine 3
``datafile:FILE:area``, MZmine 2 ``FILE Peak area``, asari's sample columns), a peak's intensity
is the median over the samples where it was detected (value > 0; missing and 0 are "not
detected"), the same rule for every tool, so one run exported by two tools gets one intensity.
The tools' own summary columns (MZmine ``height``/``area``, asari ``peak_area``) are not used
for those layouts: they mean different things in each tool. XCMS ``featureDefinitions()`` has
no intensity (its per-group columns count peaks), so its peaks have none unless a column
named like an intensity (``into``, ``intensity``, ...) was added. Which source was used is logged
(``-v``).

Every problem is reported as an :class:`~dask_assign.errors.InputError` naming the file, the
column and the first bad rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .chem import parse_formula
from .errors import InputError, reading
from .isotopes import hill_order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """How one tool lays out its peak table.

    Attributes
    ----------
    tool : str
        The tool and export, for messages.
    signature : tuple of str
        Regular expressions (whole name, case-insensitive): a header is this tool's when each
        matches one of its column names.
    peak_id, mz, rt : str
        The tool's id, m/z and RT columns (case-insensitive); ``peak_id=""`` is an unnamed
        first column (R's row names, as ``write.csv`` writes them).
    rt_unit : {"min", "s"}
        The unit the tool writes RT in.
    samples : str, optional
        Where the per-sample intensities are: a regular expression for their column names,
        ``"after:COLUMN"`` (every column after that one) or ``"metadata"`` (the columns that
        the rows above the header describe). None where the table has none.
    """

    tool: str
    signature: tuple
    peak_id: str
    mz: str
    rt: str
    rt_unit: str
    samples: str | None = None


#: The layouts of the field's tools, checked in order (see the module docstring).
LAYOUTS = (
    # featureDefinitions() through write.csv: feature ids as row names; per-group columns
    # between npeaks and peakidx count peaks, they are no intensities.
    Layout("XCMS featureDefinitions", ("mzmed", "rtmed", "npeaks"), peak_id="", mz="mzmed",
           rt="rtmed", rt_unit="s"),
    Layout("MZmine 3 feature list", ("id", "mz", "rt", r"datafile:.+"), peak_id="id", mz="mz",
           rt="rt", rt_unit="min", samples=r"datafile:(.+):area"),
    Layout("MZmine 2 / GNPS", ("row id", "row m/z", "row retention time"), peak_id="row ID",
           mz="row m/z", rt="row retention time", rt_unit="min", samples=r"(.+) peak area"),
    Layout("MS-DIAL alignment", ("alignment id", "average mz", r"average rt\(min\)"),
           peak_id="Alignment ID", mz="Average Mz", rt="Average Rt(min)", rt_unit="min",
           samples="metadata"),
    Layout("asari feature table", ("id_number", "mz", "rtime", "detection_counts"),
           peak_id="id_number", mz="mz", rt="rtime", rt_unit="s",
           samples="after:detection_counts"),
)
#: What reading a damaged gzip stream raises (bad header, truncated, corrupt data).
GZIP_ERRORS = (OSError, EOFError, zlib.error)
#: Lines searched for a header a layout recognises (MS-DIAL has four rows above its header).
HEADER_SEARCH = 20
#: Labels of MS-DIAL's summary columns in its metadata rows (class averages and spreads); the
#: header names these columns by class, so each is renamed "Average CLASS" / "Stdev CLASS".
SUMMARY_LABELS = ("Average", "Stdev")

#: Column names of peak tables by exporting tool, checked in order (case-insensitive), for
#: tables no layout recognises and for what a layout leaves open.
PEAK_ALIASES = {
    "peak_id": ["peak_id", "id", "feature_id", "featureid", "row id", "alignment id",
                "id_number", "name", "feature"],
    "mz": ["mz", "m/z", "mzmed", "row m/z", "average mz", "precursor m/z", "mz_mean"],
    "rt": ["rt", "rtmed", "row retention time", "average rt(min)", "rtime", "retention_time",
           "retention time", "rt_min"],
    "intensity": ["intensity", "into", "maxo", "row height", "row area", "peak_area",
                  "peak_height", "height", "area"],
}
#: RT units implied by a column name alone: the tools' own RT names (a bare "rt" says nothing).
RT_UNIT_OF_ALIAS = {**{lay.rt.lower(): lay.rt_unit for lay in LAYOUTS if lay.rt.lower() != "rt"},
                    "rt_min": "min"}

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


def detect_layout(names) -> Layout | None:
    """The first of :data:`LAYOUTS` whose signature the column ``names`` match, else None."""
    for layout in LAYOUTS:
        if all(any(re.fullmatch(pattern, n, re.IGNORECASE) for n in names)
               for pattern in layout.signature):
            return layout
    return None


@dataclass
class Header:
    """Where a text table's header is and what it says (see :func:`find_header`).

    Attributes
    ----------
    line : int
        Lines above the header (0-based line number of the header).
    sep : str
    names : list of str
        Column names, made unique where the layout says how (MS-DIAL's summary columns).
    layout : Layout or None
    samples : list of str
        The per-sample intensity columns, in file order (empty when there are none).
    sample_metadata : dict
        ``{label: {sample: value}}`` from the rows above the header (MS-DIAL: Class, File type,
        Injection order, Batch ID).
    """

    line: int
    sep: str
    names: list
    layout: Layout | None
    samples: list
    sample_metadata: dict


def find_header(path, lines: list[str]) -> Header:
    """The header of a peak table: the first of ``lines`` whose names a layout recognises
    (rows above it are metadata), else the first line.

    Parameters
    ----------
    path : str or Path
        The file (its suffix says whether tabs are expected).
    lines : list of str
        Its first lines (:func:`head_lines`).

    Returns
    -------
    Header
    """
    for k, line in enumerate(lines):
        sep = sniff_delimiter(Path(path), line)
        names = _split(line, sep)
        layout = detect_layout(names)
        if layout is not None:
            meta_rows = [_split(row, sep) for row in lines[:k]]
            return _with_samples(Header(k, sep, names, layout, [], {}), meta_rows)
    sep = sniff_delimiter(Path(path), lines[0])
    return _with_samples(Header(0, sep, _split(lines[0], sep), None, [], {}), [])


def _with_samples(header: Header, meta_rows: list[list[str]]) -> Header:
    """Fill in the per-sample columns the header's layout names (and their metadata)."""
    layout, names = header.layout, header.names
    if layout is None or layout.samples is None:
        return header
    if layout.samples == "metadata":
        # The labels (Class, File type, ...) stand in the column just before the first sample.
        rows = [r for r in meta_rows if any(c for c in r)]
        if not rows:
            return header
        label_col = next(i for i, c in enumerate(rows[0]) if c)
        names = list(names)
        samples, meta = [], {}
        for j in range(label_col + 1, len(names)):
            cells = [r[j] if j < len(r) else "" for r in rows]
            summary = next((c for c in cells if c in SUMMARY_LABELS), None)
            if summary is not None:
                names[j] = f"{summary} {names[j]}"
                continue
            samples.append(names[j])
            for r, c in zip(rows, cells, strict=True):
                label = r[label_col] if label_col < len(r) else ""
                meta.setdefault(label, {})[names[j]] = c
        header.names, header.samples, header.sample_metadata = names, samples, meta
    elif layout.samples.startswith("after:"):
        lower = [n.lower() for n in names]
        after = layout.samples.split(":", 1)[1].lower()
        if after in lower:
            header.samples = [n for n in names[lower.index(after) + 1:] if n]
    else:
        header.samples = [n for n in names if re.fullmatch(layout.samples, n, re.IGNORECASE)]
    return header


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


def layout_columns(layout: Layout, names) -> dict[str, str]:
    """The columns a layout names (``peak_id``, ``mz``, ``rt``) that ``names`` has."""
    names = list(names)
    lower = {n.lower(): n for n in names}
    out = {}
    if layout.peak_id == "":
        if names and names[0] == "":
            out["peak_id"] = ""
    elif layout.peak_id.lower() in lower:
        out["peak_id"] = lower[layout.peak_id.lower()]
    for canon in ("mz", "rt"):
        column = getattr(layout, canon).lower()
        if column in lower:
            out[canon] = lower[column]
    return out


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
    the whole file (duplicate ids, RT unit). The layout, columns and samples are known once
    the header has been read.
    """

    def __init__(self, path, columns=None, batch_rows: int = 500_000):
        self.path, self.source = Path(path), str(path)
        self.explicit, self.batch_rows = columns, batch_rows
        self.rt_max, self.rt_column = -np.inf, None
        self.hashes, self.unit = [], "rows"
        self.n_high_mz = 0
        self.header = None  # a Header (text and Parquet alike)

    def _batches(self):
        import pyarrow.csv as pacsv
        import pyarrow.dataset as pads

        path = self.path
        if not path.exists():
            raise InputError(self.source, "peak file not found")
        if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
            try:
                dataset = pads.dataset(path, format="parquet")
                names = [str(n).strip() for n in dataset.schema.names]
                batches = dataset.to_batches(batch_size=self.batch_rows)
            except Exception as err:  # pyarrow raises many types for a damaged file
                raise InputError(self.source, f"cannot read Parquet: {err}") from None
            self.unit = "rows"
            layout = detect_layout(names)
            self.header = _with_samples(Header(0, "", names, layout, [], {}), [])
            self._check_names(names)
        else:
            lines = head_lines(path)
            if not lines or not "".join(lines).strip():
                raise InputError(self.source, "the peak file is empty")
            self.header = header = find_header(path, lines)
            self._check_names(header.names)
            try:
                # Names given, so the rows above the header and the header itself are skipped
                # (and MS-DIAL's renamed summary columns keep their new names).
                batches = pacsv.open_csv(
                    path, read_options=pacsv.ReadOptions(
                        block_size=1 << 24, skip_rows=header.line + 1,
                        column_names=header.names),
                    parse_options=pacsv.ParseOptions(delimiter=header.sep),
                    # Text first: numbers are converted here, so a bad cell can be named.
                    convert_options=pacsv.ConvertOptions(
                        column_types={n: pa.string() for n in header.names},
                        strings_can_be_null=True, null_values=[""]))
            except pa.ArrowInvalid as err:
                raise InputError(self.source, f"cannot parse: {err}") from None
            except GZIP_ERRORS as err:
                raise _read_error(path, err) from None
            self.unit = "lines"
        self.names = self.header.names
        self.cols = self._columns()
        self.rt_column = self.cols["rt"]
        return batches

    def _check_names(self, names):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(self.source, f"duplicated column names {dup}")

    def _columns(self) -> dict:
        """Canonical columns; the intensity from the samples where the layout has some."""
        header = self.header
        layout = header.layout
        preset = layout_columns(layout, header.names) if layout else {}
        use_samples = bool(header.samples) and "intensity" not in (self.explicit or {})
        cols = _resolve_columns(header.names, PEAK_ALIASES, self.explicit, ("mz", "rt"),
                                self.source, preset=preset,
                                skip=("intensity",) if use_samples else ())
        self.samples = header.samples if use_samples else []
        if use_samples:
            how = (f"median of {len(self.samples)} sample columns where detected (> 0): "
                   + ", ".join(self.samples[:5]) + (", ..." if len(self.samples) > 5 else ""))
        elif "intensity" in cols:
            how = f"column {cols['intensity']!r}"
        else:
            how = "none (no intensity column)"
        log.info("%s: %s; peak_id %s, m/z %r, RT %r; intensity: %s", self.source,
                 f"{layout.tool} layout" if layout else "no tool layout recognised",
                 repr(cols["peak_id"]) if "peak_id" in cols else "numbered by row",
                 cols["mz"], cols["rt"], how)
        for label, values in header.sample_metadata.items():
            log.info("%s: sample %s: %s", self.source, label,
                     ", ".join(f"{k}={v}" for k, v in values.items()))
        return cols

    def __iter__(self):
        with reading(self.source):  # a truncated or damaged file is named, whatever failed
            yield from self._chunks()

    def _chunks(self):
        batches = self._batches()
        cols = self.cols
        offset = 0
        try:
            for batch in batches:
                # Metadata would turn a saved pandas index into the index: keep it a column.
                frame = batch.to_pandas(ignore_metadata=True)
                frame.columns = self.names
                if len(frame):
                    yield self._validate(frame, cols, offset)
                offset += len(frame)
        except pa.ArrowInvalid as err:
            raise InputError(self.source, f"cannot parse: {str(err).strip()}") from None
        except GZIP_ERRORS as err:
            raise _read_error(self.path, err) from None
        if offset == 0:
            raise InputError(self.source, "the peak file has a header but no rows")
        if self.n_high_mz:
            log.warning("%s: %d peaks above m/z %g, beyond small-molecule libraries; they are "
                        "kept and can only be called 'not in library'", self.source,
                        self.n_high_mz, MZ_WARN)

    @property
    def first_row(self) -> int:
        """Lines above the header (rows of metadata) in a text file."""
        return self.header.line if self.unit == "lines" else 0

    def _validate(self, frame, cols, offset) -> pd.DataFrame:
        source, unit = self.source, self.unit
        # Labelled by row in the file, so line numbers count the rows above the header.
        frame.index = pd.RangeIndex(offset + self.first_row,
                                    offset + self.first_row + len(frame))
        mz = _numeric(frame, cols["mz"], source, unit)
        _check(~(mz > 0), frame, cols["mz"], mz, "m/z must be positive", source, unit)
        rt = _numeric(frame, cols["rt"], source, unit)
        _check(rt < 0, frame, cols["rt"], rt, "retention time must not be negative", source,
               unit)
        if self.samples:
            inten = _sample_intensity(frame, self.samples, source, unit)
        elif "intensity" in cols:
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
                             column=self.cols.get("peak_id"), rows=_row_numbers(
                                 dup.index.to_numpy() + self.first_row, self.unit),
                             values=dup.tolist()[:5], unit=self.unit)

    def rt_unit(self, rt_unit: str) -> str:
        if rt_unit != "auto":
            return rt_unit
        layout = self.header.layout
        if layout is not None and self.rt_column.lower() == layout.rt.lower():
            unit = layout.rt_unit
            reason = (f"{layout.tool} writes {self.rt_column!r} in "
                      f"{'seconds' if unit == 's' else 'minutes'}")
        else:
            unit, reason = infer_rt_unit(np.array([self.rt_max]), self.rt_column)
        log.info("%s: retention times in %s (%s)", self.source, unit, reason)
        return unit


def _sample_intensity(frame, samples, source, unit) -> np.ndarray:
    """Per peak, the median of its per-sample intensities where it was detected (> 0)."""
    values = np.empty((len(frame), len(samples)))
    for k, column in enumerate(samples):
        v = _numeric(frame, column, source, unit, allow_missing=True)
        _check(v < 0, frame, column, v, "intensity must not be negative", source, unit)
        values[:, k] = v
    detected = pd.DataFrame(np.where(values > 0, values, np.nan))
    return detected.median(axis=1, skipna=True).to_numpy(dtype=np.float64)


def load_peaks(path, columns=None, rt_unit: str = "auto") -> pd.DataFrame:
    """Read and validate a peak table into one pandas frame.

    Parameters
    ----------
    path : str or Path
        CSV or TSV file (possibly gzipped: ``.csv.gz``, ``.tsv.gz``, ``.txt.gz``), Parquet file
        or a folder of Parquet files; a tool's export as it wrote it (:data:`LAYOUTS`).
    columns : dict, optional
        Explicit mapping of ``peak_id``, ``mz``, ``rt``, ``intensity`` to the file's columns
        (over what a layout or the aliases would choose).
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
        Peak table, see :func:`load_peaks`.
    columns : dict, optional
        Explicit column mapping, see :func:`load_peaks`.
    rt_unit : {"auto", "min", "s"}
    partition_size : int
        Peaks per partition.
    workdir : str or Path, optional
        Folder for the validated partitions, on a filesystem the workers see; when omitted, a
        new temporary folder removed when this Python process exits. Emptied first if this
        package made it (see :func:`~dask_assign.output.fresh_own_folder`); any other folder
        that is not empty is refused.

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
    from .output import fresh_own_folder, remove_own_folder

    # Only a folder this package made is emptied: anything else there is refused.
    workdir = fresh_own_folder(workdir)
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
        remove_own_folder(workdir)
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
    cols = _resolve_columns(frame.columns, LIBRARY_ALIASES, columns, ("compound_id",), source)
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
