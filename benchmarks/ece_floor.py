"""How low ECE can go on a set by chance alone: the ECE of a perfectly calibrated predictor
with a result's own probabilities (each call right with exactly its probability), over many
draws; ECE binned as ``../shared/tools/score.py`` bins it (10 equal bins of prob).

    .venv/bin/python benchmarks/ece_floor.py RESULT_DIR TRUTH.csv [RESULT_DIR TRUTH.csv ...]

Prints, per result, the peaks scored and the floor's mean and 95th percentile (500 draws,
seed 0). A target below the 95th percentile cannot be told from noise on that set.

Twice: with each peak's outcome drawn on its own, and with the outcomes of one molecule's
ions drawn together (one uniform draw per called compound and 0.05-min RT bin, each ion right
where the draw falls below its probability; a null call is its own group): the ions of one
molecule share its RT and its ambiguity, so their calls are right or wrong together, and a
set of few molecules is noisier than its peak count says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

DRAWS = 500


def ece(prob: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    b = np.minimum((prob * bins).astype(int), bins - 1)
    total = 0.0
    for k in range(bins):
        s = b == k
        if s.any():
            total += s.mean() * abs(right[s].mean() - prob[s].mean())
    return total


#: The RT bin (min) within which the ions called as one compound count as one molecule.
MOLECULE_RT_BIN = 0.05


def floor(result: Path, truth: Path, seed: int = 0,
          by_molecule: bool = False) -> tuple[int, int, float, float]:
    """Peaks scored, independent draws (groups), and the floor's mean and 95th percentile."""
    a = pd.read_parquet(result / "assignments.parquet",
                        columns=["peak_id", "prob", "compound_id", "rt"])
    t = pd.read_csv(truth, usecols=["peak_id"], dtype=str)
    m = t.merge(a, on="peak_id")
    p = m["prob"].fillna(0).clip(0, 1).to_numpy()
    if by_molecule:
        called = m["compound_id"].notna()
        key = m["compound_id"].fillna("") + "|" + (m["rt"] / MOLECULE_RT_BIN).round().astype(
            "int64").astype(str)
        group = pd.factorize(key.where(called, m["peak_id"]))[0]
    else:
        group = np.arange(p.size)
    n_groups = int(group.max()) + 1 if group.size else 0
    rng = np.random.default_rng(seed)
    draws = [ece(p, (rng.random(n_groups)[group] < p).astype(float)) for _ in range(DRAWS)]
    return p.size, n_groups, float(np.mean(draws)), float(np.percentile(draws, 95))


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit(__doc__)
    for result, truth in zip(args[::2], args[1::2], strict=True):
        for by_molecule in (False, True):
            n, groups, mean, p95 = floor(Path(result), Path(truth), by_molecule=by_molecule)
            how = f"{groups} molecules drawn together" if by_molecule else "peaks drawn alone"
            print(f"{result}: {n} peaks, {how}; ECE of a calibrated predictor: mean "
                  f"{mean:.4f}, 95th percentile {p95:.4f}")
