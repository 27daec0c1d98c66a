"""Train the scorer on generated sets and compare it, on held-out sets, with the untrained one.

Run: make model   (or .venv/bin/python benchmarks/learned_scorer.py [--install])

1. Makes labeled sets with ../shared/tools/make_eval.py from RepoRT datasets 0187, 0382 and
   0027 only (several seeds and noise settings): TRAIN for fitting, HELDOUT (other seeds and
   noise) for choosing. The shared sets 0392 and 0228 are never trained on; they are scored
   for the report.
2. Trains a model on TRAIN (``dask-assign train``'s code path).
3. Scores three scorers on HELDOUT and on the shared sets, same cluster, same run:
   ``default`` (generative weights, no self-calibration), ``fitted`` (self-calibration,
   generative weights: ``--model none``) and ``learned`` (self-calibration, trained weights).
4. ``--install`` writes the model to dask_assign/data/model (the shipped default) when it is
   best on HELDOUT by mean overall accuracy.

Prints a table and writes benchmarks/learned_scorer.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WORK = ROOT / "build" / "training-sets"
#: Noise settings of make_eval.py: (name, arguments).
NOISE = {
    "base": [],
    "tight": ["--ppm-sd", "2.0", "--ppm-offset", "-1.5", "--rt-jitter-sd", "0.03"],
    "loose": ["--ppm-sd", "4.5", "--ppm-offset", "2.5", "--rt-jitter-sd", "0.08"],
    "unknowns": ["--ppm-sd", "1.5", "--ppm-offset", "0.0", "--unknown-peak-frac", "0.45"],
    "shifted": ["--ppm-sd", "3.0", "--ppm-offset", "-2.0", "--rt-jitter-sd", "0.06",
                "--present-frac", "0.7"],
}
DATASETS = ("0187", "0382", "0027")
TRAIN = [(d, n, 100 + i) for d in DATASETS for i, n in enumerate(("base", "tight", "loose",
                                                                 "unknowns"))]
HELDOUT = [(d, n, 200 + i) for d in DATASETS for i, n in enumerate(("base", "shifted"))]
SHARED_SETS = ["repoRT_0392_rp_pos", "repoRT_0228_hilic_pos"]


def make_set(dataset: str, noise: str, seed: int) -> Path:
    out = WORK / f"{dataset}_{noise}_{seed}"
    if not (out / "truth.csv").exists():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_eval.py"), "--dataset",
                        dataset, "--seed", str(seed), "--out", str(out), *NOISE[noise]],
                       check=True, capture_output=True)
    return out


def score(folder: Path, result: Path) -> dict:
    from dask_assign.evaluate import evaluate
    from dask_assign.report import read_table

    truth = pd.read_csv(folder / "truth.csv", dtype=str)
    return evaluate(read_table(result, "assignments"), truth)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--install", action="store_true",
                    help="ship the model as the default when it is best on the held-out sets")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()

    from dask_assign.cluster import connect
    from dask_assign.config import AssignConfig, ScorerParams
    from dask_assign.model import save_model
    from dask_assign.pipeline import run
    from dask_assign.training import label_run, train

    train_sets = [make_set(*s) for s in TRAIN]
    heldout = [make_set(*s) for s in HELDOUT]
    client, cluster = connect(None, a.workers)
    base = AssignConfig(scorer=ScorerParams())
    try:
        t0 = time.perf_counter()
        with client.as_current():
            runs = [label_run(d / "peaks.csv", d / "library.csv", d / "truth.csv", base, d.name)
                    for d in train_sets]
        params, report = train(runs, start=ScorerParams())
        report["label_seconds"] = time.perf_counter() - t0 - report["seconds"]
        model_dir = save_model(params, WORK / "model", {
            "trained_on": [d.name for d in train_sets],
            "made_with": "benchmarks/learned_scorer.py: ../shared/tools/make_eval.py sets from "
                         "RepoRT datasets 0187, 0382, 0027 (CC BY-SA 4.0, RepoRT, Kretschmer, "
                         "Harrieder, Witting et al.)",
            "noise_settings": NOISE, "report": report}, overwrite=True)
        scorers = {"default": base.replace(calibrate=False), "fitted": base,
                   "learned": base.replace(scorer=params)}
        rows = []
        for group, folders in (("heldout", heldout),
                               ("shared", [SHARED / "data" / s for s in SHARED_SETS])):
            for d in folders:
                for name, config in scorers.items():
                    out = WORK / "results" / f"{d.name}-{name}"
                    run(d / "peaks.csv", d / "library.csv", out, config, client=client,
                        overwrite=True)
                    rows.append({"group": group, "set": d.name, "scorer": name,
                                 **score(d, out)})
    finally:
        client.close()
        cluster.close()
    table = pd.DataFrame(rows)
    cols = ["known_top1", "unknown_null", "overall", "ece", "brier"]
    print(table.pivot_table(index=["group", "set"], columns="scorer", values="overall")
          .round(4).to_string())
    means = table.groupby(["group", "scorer"])[cols].mean().round(4)
    print(means.to_string())
    print("weights:", {k: round(getattr(params, k), 4) for k in
                       ("mass_weight", "rt_weight", "adduct_weight", "isotope_weight",
                        "intensity_weight", "count_weight", "bias", "unlisted_prior")})
    best = means.loc["heldout"]["overall"].idxmax()
    print(f"best on held-out sets: {best}")
    result = {"rows": rows, "weights": json.loads(json.dumps(
        {k: getattr(params, k) for k in ScorerParams.__dataclass_fields__})),
        "train_report": report, "best_on_heldout": best}
    (ROOT / "benchmarks" / "learned_scorer.json").write_text(json.dumps(result, indent=1))
    if a.install:
        target = ROOT / "dask_assign" / "data" / "model"
        if best == "learned":
            shutil.copytree(model_dir, target, dirs_exist_ok=True)
            print(f"installed the learned model as the default: {target}")
        else:
            print(f"not installed: {best} is better on the held-out sets")


if __name__ == "__main__":
    main()
