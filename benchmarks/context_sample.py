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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from em_sample import sweep  # noqa: E402  (a sibling script)


def fitted_context(out: Path) -> dict:
    """The context model's co-elution tolerances, isotope detection, noise share and largest
    secondary adduct share."""
    ctx = json.loads((out / "context.json").read_text())
    return {"rt_tol": round(ctx["rt_tol"], 4), "adduct_rt_tol": round(ctx["adduct_rt_tol"], 4),
            "isotope_detect": round(ctx["isotope_detect"], 3),
            "noise_share": round(ctx["noise_share"], 3),
            "top_secondary_share": round(max(ctx["adduct_share"][1:]), 3)}


def main(n_peaks: int = 1_000_000, n_compounds: int = 100_000):
    from dask_assign.config import AssignConfig

    sweep("CONTEXT_SAMPLE", lambda n: (50_000, 200_000, n), n_peaks, n_compounds,
          fitted_context, AssignConfig(ppm=10.0, rt_window=0.5))


if __name__ == "__main__":
    main(*(int(float(a)) for a in sys.argv[1:]))
