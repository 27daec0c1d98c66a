"""The result tables: written by the workers as part files (Parquet or CSV), combined (or
kept as a dataset folder), and committed with a manifest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dask_assign.errors import InputError
from dask_assign.files import (
    MANIFEST,
    OWN_MARKER,
    RESULT,
    SUCCESS,
    _atomic,
    fresh_own_folder,
    is_own_folder,
    staging_path,
    swap_in,
    write_json,
)
from dask_assign.output.metrics import report_partition
from dask_assign.scoring.tables import ASSIGNMENT_DTYPES, CANDIDATE_DTYPES, to_tables

#: The format of the tables for each output format: ``mztab`` is an export written beside the
#: Parquet tables, which stay the lossless record (:mod:`dask_assign.output.mztab`).
TABLE_FORMAT = {"parquet": "parquet", "csv": "csv", "mztab": "parquet",
                "parquet-dataset": "parquet"}

#: Output formats whose tables stay as the workers wrote them: a folder per table
#: (``assignments.parquet/part.00000.parquet``, ...; what ``dask.dataframe.to_parquet`` and
#: Spark write, and what ``pandas.read_parquet`` and ``dask.dataframe.read_parquet`` read
#: whole), so the client never reads and rewrites the rows.
FOLDER_FORMATS = frozenset({"parquet-dataset"})


def arrow_schema(dtypes: dict) -> pa.Schema:
    """A fixed Arrow schema, so that all-null partitions still agree on types."""
    kind = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(),
            "bool": pa.bool_()}
    return pa.schema([(name, kind[t]) for name, t in dtypes.items()])


#: Columns Parquet stores dictionary-encoded: the library's labels, a few thousand distinct
#: values in millions of rows. Ids of peaks and floats are unique: trying a dictionary for
#: them only costs time (benchmarks/NOTES.md).
DICTIONARY_COLUMNS = ["compound_id", "name", "formula", "adduct", "isotope"]


def _write(frame: pd.DataFrame, path: Path, fmt: str, dtypes: dict):
    if fmt == "parquet":
        # Without pandas' metadata: a table folder reads back with the dtypes of the
        # combined file (written from the bare Arrow schema).
        table = pa.Table.from_pandas(frame, schema=arrow_schema(dtypes), preserve_index=False)
        pq.write_table(table.replace_schema_metadata(), path,
                       use_dictionary=_dictionary(dtypes))
    else:
        frame.to_csv(path, index=False)


def _dictionary(columns) -> list:
    return [c for c in DICTIONARY_COLUMNS if c in columns]


def finished_summary(folder, i: int) -> pd.DataFrame | None:
    """The summary of partition ``i`` if an earlier (interrupted) run finished it."""
    done = Path(folder) / "parts" / f"part.{i:05d}.json"
    if not done.exists():
        return None
    saved = json.loads(done.read_text())
    return pd.DataFrame([saved])[list(WRITE_SUMMARY_META)].astype(WRITE_SUMMARY_META)


def write_partition(result, space, folder: str, fmt: str, i: int) -> pd.DataFrame:
    """Task: write the two tables of a scored partition; returns a one-row summary.

    Files are written under temporary names and renamed; the summary file, written last,
    marks the partition as finished.
    """
    folder = Path(folder)
    done = folder / "parts" / f"part.{i:05d}.json"
    assignments, candidates = to_tables(result, space)
    ext = "parquet" if fmt == "parquet" else "csv"
    for name, frame, dtypes in (("assignments", assignments, ASSIGNMENT_DTYPES),
                                ("candidates", candidates, CANDIDATE_DTYPES)):
        _atomic(lambda p, f=frame, d=dtypes: _write(f, p, fmt, d),
                folder / name / f"part.{i:05d}.{ext}")
    summary = _partition_summary(i, assignments, candidates)
    report_partition(assignments)  # live counts for the scheduler's /metrics
    write_json(done, summary.iloc[0].to_dict())
    return summary


def _partition_summary(i, assignments, candidates) -> pd.DataFrame:
    called = assignments["compound_id"].notna()
    return pd.DataFrame({
        "partition": [i], "peaks": [len(assignments)], "assigned": [int(called.sum())],
        "prob_sum": [float(assignments["prob"].sum(skipna=True))],
        "refined": [int(assignments["refined"].sum())],
        "context_changed": [int(assignments["context_changed"].sum())],
        "overflow": [int(assignments["overflow"].sum())],
        "candidates": [len(candidates)],
        "n_cand_p99": [float(assignments["n_candidates"].quantile(0.99))
                       if len(assignments) else 0.0],
    })


WRITE_SUMMARY_META = {"partition": "int64", "peaks": "int64", "assigned": "int64",
                      "prob_sum": "float64", "refined": "int64", "context_changed": "int64",
                      "overflow": "int64",
                      "candidates": "int64", "n_cand_p99": "float64"}


def open_staging(out, fingerprint: dict, resume: bool = False) -> tuple[Path, bool]:
    """Prepare the staging folder of a run.

    Parameters
    ----------
    out : str or Path
        The final output folder.
    fingerprint : dict
        What must match for a run to be resumed: input checksums, settings, format,
        partitions.
    resume : bool
        Keep the finished partitions of an interrupted run with the same fingerprint.

    Returns
    -------
    staging : Path
    resumed : bool
        Whether an earlier run's partitions are reused.

    Raises
    ------
    InputError
        When asked to resume a run whose inputs or settings differ, or when ``OUT.partial``
        exists but was not made by this package (it is never removed then).
    """
    staging = staging_path(out)
    marker = staging / "fingerprint.json"
    if resume and is_own_folder(staging):
        if marker.exists() and json.loads(marker.read_text()) == fingerprint:
            return staging, True
        raise InputError(str(staging), "cannot resume: the interrupted run had other "
                         "inputs, settings or partitions (run without --resume to restart)")
    staging = fresh_own_folder(staging)
    for sub in ("assignments", "candidates", "parts"):
        (staging / sub).mkdir()
    write_json(marker, fingerprint)
    return staging, False


def combine_parts(staging: Path, fmt: str):
    """Join the partition files of each table into one file, in partition order, or (a
    format of :data:`FOLDER_FORMATS`) rename each table's folder of part files into place.

    Parameters
    ----------
    staging : Path
        The run's staging folder, every partition written.
    fmt : str
        The output format (a key of :data:`TABLE_FORMAT`).
    """
    ext = TABLE_FORMAT[fmt]
    folders = fmt in FOLDER_FORMATS
    for name, dtypes in (("assignments", ASSIGNMENT_DTYPES), ("candidates", CANDIDATE_DTYPES)):
        source, target = staging / name, staging / f"{name}.{ext}"
        if folders:
            if not source.exists() and target.is_dir():
                continue  # renamed by a run killed before its commit (resumed now)
            for p in source.iterdir():
                if p.name.endswith(".tmp"):  # what a killed task left
                    p.unlink()
            os.rename(source, target)
            continue
        parts = sorted(p for p in source.iterdir() if not p.name.endswith(".tmp"))
        if ext == "parquet":
            schema = arrow_schema(dtypes)

            def write(path, parts=parts, schema=schema):
                with pq.ParquetWriter(path, schema,
                                      use_dictionary=_dictionary(schema.names)) as writer:
                    for p in parts:  # one partition in memory at a time
                        writer.write_table(pq.read_table(p, schema=schema))
        else:

            def write(path, parts=parts):
                with open(path, "wb") as dst:
                    for k, p in enumerate(parts):
                        with open(p, "rb") as src:
                            if k:
                                src.readline()  # the header once
                            shutil.copyfileobj(src, dst)

        _atomic(write, target)
    # Partition files go only once both tables are whole: a run killed before this point
    # still resumes from them.
    for name in ("parts",) if folders else ("assignments", "candidates", "parts"):
        shutil.rmtree(staging / name)
    (staging / "fingerprint.json").unlink()
    (staging / "blocks.json").unlink(missing_ok=True)  # the manifest has the block count


def commit(staging: Path, out: Path, manifest: dict):
    """Write the manifest (with the list of the result's files) and the completion marker,
    then switch the folder into place (:func:`swap_in`)."""
    files = sorted({e.name for e in os.scandir(staging) if e.name != OWN_MARKER}
                   | {MANIFEST, SUCCESS})
    _atomic(lambda p: p.write_text(json.dumps({**manifest, "files": files}, indent=1,
                                              default=str)),
            staging / MANIFEST)
    (staging / SUCCESS).write_text("")
    swap_in(staging, Path(out).resolve(), RESULT)
