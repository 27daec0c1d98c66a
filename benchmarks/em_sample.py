"""How many peaks the calibration needs: its fit and the run's accuracy against the size of
the EM sample, on one synthetic run (``context_pass.make``: peaks x compounds, truth known).

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/em_sample.py [PEAKS] [COMPOUNDS]

(default 200k peaks x 10k compounds).

For each sample size the run is annotated end to end (``dask_assign.run`` on a 2-worker
LocalCluster, started once) with ``EM_SAMPLE`` set to it; prints the plan's seconds,
its fitted mass spread, RT spread and null prior, and the run's known_top1, unknown_null and
overall against the truth. A peak sample is chosen by a hash of the peak id, so a smaller
sample is a subset of a larger one.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from context_pass import make  # noqa: E402  (a sibling script)

SIZES = (12_500, 50_000, 200_000)


def scores(result: Path, truth: pd.DataFrame) -> dict:
    a = pd.read_parquet(result / "assignments.parquet", columns=["peak_id", "compound_id"])
    m = truth.merge(a, on="peak_id", suffixes=("_true", ""))
    known = m["compound_id_true"].notna()
    right = m["compound_id"].fillna("") == m["compound_id_true"].fillna("")
    return {"known_top1": round(float(right[known].mean()), 4),
            "unknown_null": round(float(m.loc[~known, "compound_id"].isna().mean()), 4),
            "overall": round(float(right.mean()), 4)}


def sweep(constant: str, sizes, n_peaks: int, n_compounds: int, measure, config=None):
    """One synthetic run (``context_pass.make``) annotated end to end for each size, with
    ``dask_assign.graph.plan.<constant>`` set to it, on one 2-worker LocalCluster.

    ``sizes(n)`` gives the sizes for a run of ``n`` peaks; ``measure(out)`` the fitted values
    to report from the output folder. Each row: the size, the run's and the plan's seconds,
    those values and the scores against the truth; printed as they come and as a markdown
    table at the end.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    import dask_assign
    from dask_assign.graph import plan
    from dask_assign.graph.cluster import connect

    work = Path(tempfile.mkdtemp(prefix=f"{constant.lower()}-"))
    n = make(work, n_peaks, n_compounds)
    truth = pd.read_parquet(work / "truth.parquet")
    truth["compound_id"] = truth["compound_id"].astype("string")
    client, cluster = connect(workers=2)
    rows = []
    try:
        for size in sizes(n):
            setattr(plan, constant, size)
            out = work / f"out-{size}"
            t = time.perf_counter()
            summary = dask_assign.run(work / "peaks.parquet", work / "library.csv", out,
                                      config, client=client)
            wall = time.perf_counter() - t
            rows.append({constant.lower(): size, "run_s": round(wall, 1),
                         "plan_s": round(summary["seconds"]["calibrate"], 1),
                         **measure(out), **scores(out, truth)})
            print(rows[-1], flush=True)
    finally:
        client.close()
        cluster.close()
    print(f"\n{n:,} peaks x {n_compounds:,} compounds")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")


def fitted_errors(out: Path) -> dict:
    """The calibration's fitted mass spread, RT spread and null prior."""
    cal = json.loads((out / "calibration.json").read_text())
    return {"mass_sigma_ppm": round(cal["mass_sigma_ppm"], 3),
            "rt_sigma": round(cal["rt_sigma"], 4), "null_prior": round(cal["null_prior"], 4)}


def main(n_peaks: int = 200_000, n_compounds: int = 10_000):
    sweep("EM_SAMPLE", lambda n: [s for s in SIZES if s <= n], n_peaks, n_compounds,
          fitted_errors)


if __name__ == "__main__":
    main(*(int(float(a)) for a in sys.argv[1:]))
