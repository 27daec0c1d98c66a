"""How low ECE can go on a set by chance alone: the ECE of a perfectly calibrated predictor
with a result's own probabilities (each call right with exactly its probability), over many
draws; ECE binned as ``../shared/tools/score.py`` bins it (10 equal bins of prob).

    .venv/bin/python benchmarks/ece_floor.py RESULT_DIR TRUTH.csv [RESULT_DIR TRUTH.csv ...]

Prints, per result, the peaks scored and the floor's mean and 95th percentile (500 draws,
seed 0). A target below the 95th percentile cannot be told from noise on that set.
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


def floor(result: Path, truth: Path, seed: int = 0) -> tuple[int, float, float]:
    a = pd.read_parquet(result / "assignments.parquet", columns=["peak_id", "prob"])
    t = pd.read_csv(truth, usecols=["peak_id"], dtype=str)
    p = t.merge(a, on="peak_id")["prob"].fillna(0).clip(0, 1).to_numpy()
    rng = np.random.default_rng(seed)
    draws = [ece(p, (rng.random(p.size) < p).astype(float)) for _ in range(DRAWS)]
    return p.size, float(np.mean(draws)), float(np.percentile(draws, 95))


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit(__doc__)
    for result, truth in zip(args[::2], args[1::2], strict=True):
        n, mean, p95 = floor(Path(result), Path(truth))
        print(f"{result}: {n} peaks, ECE of a calibrated predictor: mean {mean:.4f}, "
              f"95th percentile {p95:.4f}")
