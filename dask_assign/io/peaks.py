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

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from dask_assign.errors import InputError, reading
from dask_assign.io.tables import (
    GZIP_ERRORS,
    _check,
    _ids,
    _numeric,
    _read_error,
    _resolve_columns,
    _row_numbers,
    _split,
    head_lines,
    sniff_delimiter,
)

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


#: Peaks above this m/z are kept, with a warning (a unit problem is likely).
MZ_WARN = 5000.0


#: Above this many minutes a retention time is taken to be in seconds (runs are shorter).
RT_SECONDS_THRESHOLD = 60.0


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
        package made it (see :func:`~dask_assign.files.fresh_own_folder`); any other folder
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
    from dask_assign.files import fresh_own_folder, remove_own_folder

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
