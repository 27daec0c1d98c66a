"""One script for a machine with a CUDA GPU: GPU results equal CPU results, and GPU timings.

Run: .venv/bin/python benchmarks/gpu_check.py [--sizes 1e6,1e7] [--shared ../shared/data]

1. Equality: each shared evaluation set (and the shipped demo) annotated in this process with
   the pipeline's own stages, on CPU and on CUDA, same calibration and context model: calls,
   adducts and isotopes must be identical, probabilities equal to 1e-6.
2. Timing: synthetic runs (benchmarks/context_pass.py's generator, 100k compounds) of each
   size, block by block on CUDA: first pass, refinement, context pass (CUDA synchronised),
   and the same stages on CPU for the sizes up to 1e6.
3. If dask-cuda is installed, ``dask-assign run --gpu`` on the demo data end to end.

Prints a short table (the card's name included) and writes benchmarks/gpu_check.json; exits
1 if any equality check fails. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def stages(plan, config, device: str):
    """Run the pipeline's block stages of a run plan in this process, on ``device``;
    per-stage seconds and the tables."""
    from dask_assign.graph.tasks import add_context, join_and_score, refine_partition
    from dask_assign.scoring.tables import to_tables

    cfg = config.replace(device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = {"first_pass": 0.0, "refine": 0.0, "context": 0.0}
    tables = []
    space, calibration, model = plan.space, plan.calibration, plan.context
    for block in plan.blocks:
        block = block.compute()
        t = time.perf_counter()
        r = join_and_score(block, space, cfg, calibration)
        sync()
        times["first_pass"] += time.perf_counter() - t
        t = time.perf_counter()
        r = refine_partition(r, space, cfg, calibration)
        sync()
        times["refine"] += time.perf_counter() - t
        t = time.perf_counter()
        if model is not None:
            r = add_context(r, block, space, cfg, calibration, model)
        sync()
        times["context"] += time.perf_counter() - t
        tables.append(to_tables(r, space)[0])
    import pandas as pd

    return times, pd.concat(tables, ignore_index=True)


def fitted(peaks, library, config):
    """The run plan (calibration, blocks, context model), as ``run`` makes it."""
    import dask

    from dask_assign.filtering.space import prepare_library
    from dask_assign.graph.plan import plan_run
    from dask_assign.graph.run import as_dask_frame

    with dask.config.set(scheduler="synchronous"):
        ddf = as_dask_frame(peaks, config)
        return plan_run(ddf, prepare_library(library, config), config)


def compare(a, b) -> dict:
    key = ["peak_id"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    same = {c: bool((a[c].fillna("-") == b[c].fillna("-")).all())
            for c in ("compound_id", "adduct", "isotope")}
    same["prob"] = bool(np.allclose(a["prob"], b["prob"], atol=1e-6, equal_nan=True))
    same["p_null"] = bool(np.allclose(a["p_null"], b["p_null"], atol=1e-6, equal_nan=True))
    return same


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,1e7")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--cpu-up-to", type=float, default=1e6)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: torch.cuda.is_available() is False")
    import dask

    from dask_assign import DEMO_DATA
    from dask_assign.config import AssignConfig

    card = torch.cuda.get_device_name(0)
    print(f"device: {card}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    config = AssignConfig()
    report = {"card": card, "equality": {}, "timing": []}
    ok = True
    sets = {"demo": DEMO_DATA}
    for name in ("repoRT_0392_rp_pos", "repoRT_0228_hilic_pos"):
        if (Path(a.shared) / name).exists():
            sets[name] = Path(a.shared) / name
    with dask.config.set(scheduler="synchronous"):
        for name, folder in sets.items():
            plan = fitted(folder / "peaks.csv", folder / "library.csv", config)
            _, cpu = stages(plan, config, "cpu")
            _, gpu = stages(plan, config, "cuda")
            same = compare(cpu, gpu)
            report["equality"][name] = same
            ok &= all(same.values())
            print(f"{name}: GPU == CPU: {same}", flush=True)

        from context_pass import make

        for size in [int(float(s)) for s in a.sizes.split(",")]:
            work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
            make(work, size, 100_000)
            plan = fitted(work / "peaks.parquet", work / "library.csv",
                          config.replace(device="cuda"))
            row = {"peaks": size}
            for device in ("cuda", "cpu"):
                if device == "cpu" and size > a.cpu_up_to:
                    continue
                times, _ = stages(plan, config, device)
                row[device] = times
            report["timing"].append(row)
            print(json.dumps(row), flush=True)

    try:
        import dask_cuda  # noqa: F401

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "dask_assign.cli", "run",
                                  str(DEMO_DATA / "peaks.csv"), str(DEMO_DATA / "library.csv"),
                                  "--out", f"{tmp}/out", "--gpu"], capture_output=True,
                                 text=True)
            report["cli_gpu"] = {"returncode": res.returncode,
                                 "seconds": time.perf_counter() - t,
                                 "tail": (res.stdout + res.stderr)[-800:]}
            ok &= res.returncode == 0
            print(f"dask-assign run --gpu: exit {res.returncode}", flush=True)
    except ImportError:
        report["cli_gpu"] = "dask-cuda not installed: the --gpu CLI path was not run"
        print(report["cli_gpu"])

    print(f"\n{'peaks':>10} {'device':>6} {'first pass':>11} {'refine':>8} {'context':>8}")
    for row in report["timing"]:
        for device in ("cuda", "cpu"):
            if device in row:
                t = row[device]
                print(f"{row['peaks']:>10,} {device:>6} {t['first_pass']:>10.2f}s "
                      f"{t['refine']:>7.2f}s {t['context']:>7.2f}s")
    (ROOT / "benchmarks" / "gpu_check.json").write_text(json.dumps(report, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
