"""How many peaks the context model needs: its fit and the run's accuracy against the RT
blocks it is fitted on, on one synthetic run (``context_pass.make``: peaks x compounds, truth
known).

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/context_sample.py [PEAKS] [COMPOUNDS]

(default 1M peaks x 100k compounds, 10 ppm, RT window 0.5 min as ``marginal.py`` runs).

For each size the run is annotated end to end (``dask_assign.run`` on a 2-worker
LocalCluster, started once) with ``plan.CONTEXT_SAMPLE`` set to it (the blocks are every k-th
RT block, :func:`~dask_assign.graph.plan.context_sample`; the largest size fits on every
block); prints the plan's seconds (calibration and context model), the fitted co-elution
tolerances, isotope detection, noise share and the largest secondary adduct share, and the
run's known_top1, unknown_null and overall against the truth.
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
from context_pass import make  # noqa: E402  (sibling scripts)
from em_sample import scores  # noqa: E402


def main(n_peaks: int = 1_000_000, n_compounds: int = 100_000):
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    import dask_assign
    from dask_assign.config import AssignConfig
    from dask_assign.graph import plan
    from dask_assign.graph.cluster import connect

    work = Path(tempfile.mkdtemp(prefix="context-sample-"))
    n = make(work, n_peaks, n_compounds)
    truth = pd.read_parquet(work / "truth.parquet")
    truth["compound_id"] = truth["compound_id"].astype("string")
    config = AssignConfig(ppm=10.0, rt_window=0.5)
    client, cluster = connect(workers=2)
    rows = []
    try:
        for size in (50_000, 200_000, n):
            plan.CONTEXT_SAMPLE = size
            out = work / f"out-{size}"
            t = time.perf_counter()
            summary = dask_assign.run(work / "peaks.parquet", work / "library.csv", out,
                                      config, client=client)
            wall = time.perf_counter() - t
            ctx = json.loads((out / "context.json").read_text())
            rows.append({"context_sample": size, "run_s": round(wall, 1),
                         "plan_s": round(summary["seconds"]["calibrate"], 1),
                         "rt_tol": round(ctx["rt_tol"], 4),
                         "adduct_rt_tol": round(ctx["adduct_rt_tol"], 4),
                         "isotope_detect": round(ctx["isotope_detect"], 3),
                         "noise_share": round(ctx["noise_share"], 3),
                         "top_secondary_share": round(max(ctx["adduct_share"][1:]), 3),
                         **scores(out, truth)})
            print(rows[-1], flush=True)
    finally:
        client.close()
        cluster.close()
    print(f"\n{n:,} peaks x {n_compounds:,} compounds")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main(*(int(float(a)) for a in sys.argv[1:]))
