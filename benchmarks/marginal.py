"""The marginal cost of peaks, end to end, against DuckDB's bare range join of the same data.

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/marginal.py [SMALL LARGE [COMPOUNDS]] \
        [-- RUN SETTINGS]

Two synthetic runs (``context_pass.make``: 200k and 2M peaks x 100k compounds by default)
are annotated by ``dask-assign run`` (the CLI, end to end: reading and validating, cluster
start, calibration, scoring, writing; 2 worker processes; 10 ppm, RT window 0.5 min).
DuckDB (2 threads) joins the same peaks to the same ion table (the run's ions, every
isotopologue: ``prepare_library``) on 10 ppm and |RT difference| <= 0.5 min where the ion
has an RT. The marginal cost of each is its time at LARGE minus its time at SMALL; prints
both and their ratio (issue 16 asks for at most 6x). Settings after ``--`` go to every
``dask-assign run`` after the fixed ones (e.g. ``-- --no-calibrate --no-context
--refine-below 0``: the least the product does for a peak).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from context_pass import make  # noqa: E402  (sibling scripts)
from stream_peaks import run_cli, split_settings  # noqa: E402

PPM, RTW = 10.0, 0.5


def duckdb_seconds(peaks: Path, ions: pd.DataFrame) -> tuple[float, int]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    p = pd.read_parquet(peaks, columns=["mz", "rt"])
    con.register("peaks", p)
    con.register("ions", ions)
    t = time.perf_counter()
    n = con.execute(
        "SELECT count(*) FROM peaks JOIN ions ON peaks.mz BETWEEN ions.lo AND ions.hi "
        "AND (ions.rt IS NULL OR abs(peaks.rt - ions.rt) <= ?)", [RTW]).fetchone()[0]
    return time.perf_counter() - t, int(n)


def main(small: int = 200_000, large: int = 2_000_000, compounds: int = 100_000,
         settings: tuple = ()):
    from dask_assign.config import AssignConfig
    from dask_assign.filtering.space import prepare_library

    rows = {}
    for n_peaks in (small, large):
        work = Path(tempfile.mkdtemp(prefix="dask-assign-marginal-"))
        n = make(work, n_peaks, compounds)
        space = prepare_library(work / "library.csv", AssignConfig())
        rt = np.where(np.isfinite(space.rt), space.rt, np.nan)
        ions = pd.DataFrame({"lo": space.mz * (1 - PPM * 1e-6), "hi": space.mz * (1 + PPM * 1e-6),
                             "rt": rt})
        duck, pairs = min(duckdb_seconds(work / "peaks.parquet", ions) for _ in range(3))
        wall, rss = run_cli(work / "peaks.parquet", work / "library.csv", work / "out",
                            extra=("--ppm", str(PPM), "--rt-window", str(RTW), *settings))
        summary = json.loads((work / "out" / "manifest.json").read_text())["summary"]
        rows[n_peaks] = {"peaks": n, "ions": len(ions), "duckdb_s": round(duck, 2),
                         "duckdb_pairs": pairs, "cli_s": round(wall, 1),
                         "calibrate_s": round(summary["seconds"]["calibrate"], 1),
                         "pipeline_s": round(summary["seconds"]["total"], 1),
                         "peak_rss_gib": round(rss / 2**30, 2)}
        print(rows[n_peaks], flush=True)
        shutil.rmtree(work, ignore_errors=True)
    a, b = rows[small], rows[large]
    ours, theirs = b["cli_s"] - a["cli_s"], b["duckdb_s"] - a["duckdb_s"]
    print(f"\nmarginal {small:,} -> {large:,} peaks x {compounds:,} compounds: dask-assign "
          f"{ours:.1f} s, DuckDB {theirs:.2f} s, ratio {ours / theirs:.1f}x")


if __name__ == "__main__":
    args, settings = split_settings(sys.argv[1:])
    main(*(int(float(a)) for a in args), settings=settings)
