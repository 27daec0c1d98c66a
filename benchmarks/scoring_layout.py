"""Padded [n, K+1] softmax vs ragged (segment) softmax, same logits, same answers.

Run: OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/scoring_layout.py
Candidate counts are drawn like real runs: most peaks have 0-2 candidates, a few many.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from dask_assign.scoring.scorer import segment_softmax


def padded_softmax(logits, segment, n, k):
    rank = torch.arange(segment.numel()) - (torch.cumsum(torch.bincount(segment, minlength=n), 0)
                                            - torch.bincount(segment, minlength=n))[segment]
    dense = torch.full((n, k + 1), float("-inf"), dtype=logits.dtype)
    dense[:, 0] = 0.0
    dense[segment, rank + 1] = logits
    p = torch.softmax(dense, dim=1)
    return p[segment, rank + 1], p[:, 0]


def main(k=50, repeats=5):
    torch.set_num_threads(1)
    rows = []
    rng = np.random.default_rng(0)
    for n in (100_000, 1_000_000):
        counts = np.minimum(rng.geometric(0.45, n) - 1, k)
        segment = torch.from_numpy(np.repeat(np.arange(n), counts))
        logits = torch.randn(segment.numel(), dtype=torch.float64)
        res = {}
        args = (logits, segment, n)
        for name, fn in (("ragged", lambda a=args: segment_softmax(*a)),
                         ("padded", lambda a=args: padded_softmax(*a, k))):
            fn()
            t = time.perf_counter()
            for _ in range(repeats):
                out = fn()
            res[name] = (time.perf_counter() - t) / repeats
            res[name + "_out"] = out
        torch.testing.assert_close(res["ragged_out"][0], res["padded_out"][0])
        rows.append({"peaks": n, "pairs": int(segment.numel()), "k": k,
                     "fill": round(float(counts.mean() / (k + 1)), 4),
                     "ragged_s": round(res["ragged"], 4), "padded_s": round(res["padded"], 4),
                     "speedup": round(res["padded"] / res["ragged"], 1)})
    print(f"{'peaks':>9} {'pairs':>9} {'fill':>7} {'ragged s':>9} {'padded s':>9} {'x':>5}")
    for r in rows:
        print(f"{r['peaks']:>9} {r['pairs']:>9} {r['fill']:>7} {r['ragged_s']:>9} "
              f"{r['padded_s']:>9} {r['speedup']:>5}")
    with open("benchmarks/scoring_layout.json", "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
