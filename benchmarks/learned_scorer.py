"""Does a learned scorer beat the generative one? Leave one run out, on real and simulated runs.

Run: make model   (or .venv/bin/python benchmarks/learned_scorer.py [--generated])

Every run with truth is labeled as ``dask-assign train`` labels it: the three real runs of
``../shared/data/real`` (NetID's yeast run, ipaPy2's E. coli runs), the two shared simulated
sets, and with ``--generated`` twelve sets made with ``../shared/tools/make_eval.py`` from RepoRT
datasets 0187, 0382 and 0027. For each real and shared run, a model is trained on all the
other runs (:func:`dask_assign.training.fit.leave_one_out`: never on the run it is scored on) and
the run is annotated with it and with the generative scorer, same cluster, same settings;
``score.py``'s numbers are printed side by side.

The rule the project follows: a trained model ships only where it beats the generative
scorer on every held-out real run. It did not (README, "Learned scorer"), so none ships.
Writes benchmarks/learned_scorer.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WORK = ROOT / "build" / "learned-scorer"
REAL = {"netid_hilic_neg": "negative", "ipa_ecoli_pos": "positive",
        "ipa_ecoli_neg": "negative"}
SIMULATED = {"repoRT_0392_rp_pos": "positive", "repoRT_0228_hilic_pos": "positive"}
NOISE = {
    "base": [],
    "tight": ["--ppm-sd", "2.0", "--ppm-offset", "-1.5", "--rt-jitter-sd", "0.03"],
    "loose": ["--ppm-sd", "4.5", "--ppm-offset", "2.5", "--rt-jitter-sd", "0.08"],
    "unknowns": ["--ppm-sd", "1.5", "--ppm-offset", "0.0", "--unknown-peak-frac", "0.45"],
}
GENERATED = [(d, n, 100 + i) for d in ("0187", "0382", "0027")
             for i, n in enumerate(NOISE)]


def make_set(dataset: str, noise: str, seed: int) -> Path:
    out = WORK / "sets" / f"{dataset}_{noise}_{seed}"
    if not (out / "truth.csv").exists():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_eval.py"), "--dataset",
                        dataset, "--seed", str(seed), "--out", str(out), *NOISE[noise]],
                       check=True, capture_output=True)
    return out


def reference_score(folder: Path, result: Path) -> dict:
    """score.py on peak_id, compound_id, prob (it would read a result's own formula column
    as the truth's)."""
    calls = pd.read_parquet(result / "assignments.parquet")[["peak_id", "compound_id", "prob"]]
    path = result.with_suffix(".calls.csv")
    calls.to_csv(path, index=False)
    out = subprocess.run([sys.executable, str(SHARED / "tools" / "score.py"),
                          str(folder / "truth.csv"), str(folder / "library.csv"), str(path),
                          "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generated", action="store_true",
                    help="also train on twelve sets made with make_eval.py")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()

    from dask_assign.config import AssignConfig, ScorerParams
    from dask_assign.graph.cluster import connect
    from dask_assign.graph.run import run
    from dask_assign.training.fit import label_run, leave_one_out, train

    folders = {**{n: (SHARED / "data" / "real" / n, m) for n, m in REAL.items()},
               **{n: (SHARED / "data" / n, m) for n, m in SIMULATED.items()}}
    if a.generated:
        folders.update({d.name: (d, "positive") for d in (make_set(*s) for s in GENERATED)})
    client, cluster = connect(None, a.workers)
    rows = []
    try:
        t0 = time.perf_counter()
        with client.as_current():
            runs = [label_run(f / "peaks.csv", f / "library.csv", f / "truth.csv",
                              AssignConfig(mode=m, rt_unit="min", scorer=ScorerParams()), n)
                    for n, (f, m) in folders.items()]
        label_seconds = time.perf_counter() - t0
        for held, training in leave_one_out(runs, held_out_only={*REAL, *SIMULATED}):
            params, report = train(training, start=ScorerParams())
            folder, mode = folders[held.name]
            for scorer, weights in (("generative", ScorerParams()), ("learned", params)):
                out = WORK / "results" / f"{held.name}-{scorer}"
                run(folder / "peaks.csv", folder / "library.csv", out,
                    AssignConfig(mode=mode, rt_unit="min", scorer=weights), client=client,
                    overwrite=True)
                rows.append({"held_out": held.name, "real": held.name in REAL,
                             "scorer": scorer, "trained_on": [r.name for r in training],
                             **{k: getattr(weights, k) for k in ("rt_weight", "count_weight",
                                                                 "bias", "unlisted_prior")},
                             **reference_score(folder, out)})
                print(rows[-1]["held_out"], scorer, {k: rows[-1][k] for k in
                      ("known_top1", "unknown_null", "overall", "ece")}, flush=True)
    finally:
        client.close()
        cluster.close()
    table = pd.DataFrame(rows)
    print(table.pivot_table(index="held_out", columns="scorer",
                            values=["known_top1", "unknown_null", "ece"]).round(4).to_string())
    real = table[table["real"]].pivot_table(index="held_out", columns="scorer",
                                            values="overall")
    wins = bool((real["learned"] > real["generative"]).all())
    print(f"learned beats generative on every held-out real run: {wins}")
    (ROOT / "benchmarks" / "learned_scorer.json").write_text(json.dumps(
        {"rows": rows, "label_seconds": label_seconds, "learned_wins_every_real_run": wins},
        indent=1, default=str))


if __name__ == "__main__":
    main()
