"""Writers: partitions written by the workers into a temporary folder, renamed when complete.

A run leaves either its whole output folder or nothing: every file goes to ``OUT.tmp-*`` and
the folder is renamed to ``OUT`` only after the manifest and the ``_SUCCESS`` marker are
written. Partitions are written where they were computed (no gathering to the client).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .annotate import ASSIGNMENT_DTYPES, CANDIDATE_DTYPES, annotate_partition

FORMATS = ("parquet", "csv")


def arrow_schema(dtypes: dict) -> pa.Schema:
    """A fixed Arrow schema, so that all-null partitions still agree on types."""
    kind = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(),
            "bool": pa.bool_()}
    return pa.schema([(name, kind[t]) for name, t in dtypes.items()])


def _write(frame: pd.DataFrame, path: Path, fmt: str, dtypes: dict):
    if fmt == "parquet":
        table = pa.Table.from_pandas(frame, schema=arrow_schema(dtypes), preserve_index=False)
        pq.write_table(table, path)
    else:
        frame.to_csv(path, index=False)


def write_partition(part, space, config, calibration, folder: str, fmt: str,
                    partition_info=None):
    """Task: annotate one partition and write its two tables; returns a one-row summary."""
    assignments, candidates = annotate_partition(part, space, config, calibration)
    i = partition_info["number"] if partition_info else 0
    folder = Path(folder)
    ext = "parquet" if fmt == "parquet" else "csv"
    _write(assignments, folder / "assignments" / f"part.{i:05d}.{ext}", fmt, ASSIGNMENT_DTYPES)
    _write(candidates, folder / "candidates" / f"part.{i:05d}.{ext}", fmt, CANDIDATE_DTYPES)
    called = assignments["compound_id"].notna()
    return pd.DataFrame({
        "partition": [i], "peaks": [len(assignments)], "assigned": [int(called.sum())],
        "prob_sum": [float(assignments["prob"].sum(skipna=True))],
        "refined": [int(assignments["refined"].sum())],
        "overflow": [int(assignments["overflow"].sum())],
        "candidates": [len(candidates)],
        "n_cand_p99": [float(assignments["n_candidates"].quantile(0.99))
                       if len(assignments) else 0.0],
    })


WRITE_SUMMARY_META = {"partition": "int64", "peaks": "int64", "assigned": "int64",
                      "prob_sum": "float64", "refined": "int64", "overflow": "int64",
                      "candidates": "int64", "n_cand_p99": "float64"}


def new_staging(out: Path) -> Path:
    """An empty temporary folder beside ``out`` (same filesystem, so the rename is atomic)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    (staging / "assignments").mkdir()
    (staging / "candidates").mkdir()
    return staging


def combine_parts(staging: Path, fmt: str):
    """Join the partition files of each table into one file, in partition order."""
    for name, dtypes in (("assignments", ASSIGNMENT_DTYPES), ("candidates", CANDIDATE_DTYPES)):
        parts = sorted((staging / name).iterdir())
        target = staging / f"{name}.{fmt}"
        if fmt == "parquet":
            schema = arrow_schema(dtypes)
            with pq.ParquetWriter(target, schema) as writer:
                for p in parts:  # one partition in memory at a time
                    writer.write_table(pq.read_table(p, schema=schema))
        else:
            with open(target, "wb") as dst:
                for k, p in enumerate(parts):
                    with open(p, "rb") as src:
                        if k:
                            src.readline()  # the header once
                        shutil.copyfileobj(src, dst)
        shutil.rmtree(staging / name)


def sha256(path) -> str:
    """Checksum of an input file, for the manifest."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def commit(staging: Path, out: Path, manifest: dict):
    """Write the manifest and the completion marker, then move the folder into place."""
    out = Path(out).resolve()
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    (staging / "_SUCCESS").write_text("")
    if out.exists():
        old = out.with_name(out.name + ".old-" + staging.name.rsplit("-", 1)[-1])
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def discard(staging: Path):
    """Remove a staging folder after a failure: no partial output remains."""
    shutil.rmtree(staging, ignore_errors=True)
