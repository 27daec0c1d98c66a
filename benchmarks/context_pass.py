"""Cost of the context pass against the first pass, on a synthetic run of 1M peaks.

Run: OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/context_pass.py [N_PEAKS] [N_COMPOUNDS]

Synthetic but structured like a real run: a library of random CHNO formulas (100k by default)
with RTs over 15 min; molecules in the sample (a quarter from the library, the rest unknown)
make [M+H]+, [M+Na]+, [M+NH4]+, [M+K]+ and [M-H2O+H]+ peaks with 13C1/13C2 isotope peaks from
their carbon count, a detection threshold, 3 ppm mass noise and RT jitter (0.05 min a molecule,
0.005 a peak), like ``../shared/tools/make_eval.py``. The pipeline's own stages run block by
block in this process (one thread, as on one worker): the first pass (join + score), the
refinement of low-confidence rows, and the context pass; their times are summed over blocks.
Prints a table and writes benchmarks/context_pass.json; with the truth it also reports how
many calls the context pass changed, and how many of those it got right.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import torch

from dask_assign.chemistry.formulas import C13_SPACING, c13_abundances
from dask_assign.config import AssignConfig
from dask_assign.filtering.space import prepare_library
from dask_assign.graph.plan import plan_run
from dask_assign.graph.tasks import add_context, join_and_score, refine_partition
from dask_assign.io.peaks import read_peaks

MASS = {"C": 12.0, "H": 1.00782503207, "N": 14.0030740048, "O": 15.99491461956}
ADDUCTS = {"[M+H]+": (1.00727646688, 0.95, 1.0), "[M+Na]+": (22.98922070, 0.35, 0.15),
           "[M+NH4]+": (18.03382555, 0.10, 0.10), "[M+K]+": (38.96315840, 0.08, 0.05),
           "[M-H2O+H]+": (1.00727646688 - 18.0105646863, 0.20, 0.10)}


def formulas(n: int, rng):
    c = rng.integers(3, 40, n)
    h = np.maximum(c + rng.integers(-2, c + 3), 2)
    nn = rng.integers(0, 4, n)
    o = rng.integers(0, 10, n)
    h = h + ((h + nn) % 2)  # even electrons
    text = [f"C{a}H{b}" + (f"N{x}" if x else "") + (f"O{y}" if y else "")
            for a, b, x, y in zip(c, h, nn, o, strict=True)]
    mass = c * MASS["C"] + h * MASS["H"] + nn * MASS["N"] + o * MASS["O"]
    return text, mass, c, o


def make(folder: Path, n_peaks: int, n_compounds: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    text, mass, carbon, oxygen = formulas(n_compounds, rng)
    lib_rt = rng.uniform(0.5, 15.0, n_compounds)
    pd.DataFrame({"compound_id": [f"C{i:06d}" for i in range(n_compounds)], "name": "",
                  "formula": text, "rt": lib_rt.round(3)}).to_csv(folder / "library.csv",
                                                                    index=False)
    # Molecules: ~3.3 peaks each; a quarter from the library, the rest unknown.
    n_mol = int(n_peaks / 3.3)
    known = rng.random(n_mol) < 0.25
    src = rng.integers(0, n_compounds, n_mol)
    u_text, u_mass, u_carbon, u_oxygen = formulas(n_mol, rng)
    m_mass = np.where(known, mass[src], u_mass)
    m_carbon = np.where(known, carbon[src], u_carbon)
    m_oxygen = np.where(known, oxygen[src], u_oxygen)
    m_rt = np.where(known, lib_rt[src], rng.uniform(0.5, 15.0, n_mol)) + rng.normal(0, 0.05,
                                                                                   n_mol)
    base = 10 ** rng.normal(5.8, 0.8, n_mol)
    ratios = c13_abundances(m_carbon, 2)
    rows = []
    for name, (delta, p, rel) in ADDUCTS.items():
        has = rng.random(n_mol) < p
        if name == "[M+H]+":
            has |= True
        if name == "[M-H2O+H]+":
            has &= m_oxygen > 0
        i0 = base * (1.0 if name == "[M+H]+" else rel * np.exp(rng.normal(0, 0.7, n_mol)))
        for k in range(3):
            inten = i0 * ratios[:, k] * (np.exp(rng.normal(0, 0.08, n_mol)) if k else 1.0)
            keep = has & (inten >= 5e3)
            idx = np.flatnonzero(keep)
            mz = (m_mass[idx] + delta + k * C13_SPACING) * (1 + rng.normal(0, 3e-6, idx.size))
            rows.append(pd.DataFrame({
                "mz": mz, "rt": m_rt[idx] + rng.normal(0, 0.005, idx.size),
                "intensity": inten[idx].round(1),
                "compound_id": np.where(known[idx], np.char.add("C", np.char.zfill(
                    src[idx].astype(str), 6)), None)}))
    peaks = pd.concat(rows, ignore_index=True)
    peaks = peaks[peaks["rt"] > 0].sample(frac=1.0, random_state=seed)[:n_peaks]
    peaks["peak_id"] = [f"P{i:07d}" for i in range(len(peaks))]
    peaks[["peak_id", "mz", "rt", "intensity"]].to_parquet(folder / "peaks.parquet")
    peaks[["peak_id", "compound_id"]].to_parquet(folder / "truth.parquet")
    return len(peaks)


def calls(result, space) -> np.ndarray:
    """The compound id called for each peak of a block (None: not in library)."""
    ion = result.scored.features.ion[result.pair.clamp(min=0)].numpy()
    out = space.compounds["compound_id"].to_numpy()[space.compound[ion]].astype(object)
    out[result.pair.numpy() < 0] = None
    return out


def main(n_peaks: int = 1_000_000, n_compounds: int = 100_000):
    torch.set_num_threads(1)
    folder = Path("benchmarks/.context_data")
    folder.mkdir(exist_ok=True)
    t = time.perf_counter()
    n = make(folder, n_peaks, n_compounds)
    print(f"made {n} peaks, {n_compounds} compounds in {time.perf_counter() - t:.1f} s")
    config = AssignConfig()
    space = prepare_library(folder / "library.csv", config)
    times = {"first_pass": 0.0, "refine": 0.0, "context": 0.0}
    changed = right_before = right_after = 0
    truth = pd.read_parquet(folder / "truth.parquet").set_index("peak_id")["compound_id"]
    with dask.config.set(scheduler="sync"):
        ddf = read_peaks(folder / "peaks.parquet", partition_size=config.partition_size)
        t = time.perf_counter()
        plan = plan_run(ddf, space, config)  # calibration, blocks, context model: as run
        t_plan = time.perf_counter() - t
        space, calibration, model, blocks = (plan.space, plan.calibration, plan.context,
                                             plan.blocks)
        # Compiled kernels load once per process (a worker does it once): not timed.
        warm = blocks[0].compute().iloc[:2000]
        add_context(refine_partition(join_and_score(warm, space, config, calibration), space,
                                     config, calibration), warm, space, config, calibration,
                    model)
        for block in blocks:
            block = block.compute()
            t0 = time.perf_counter()
            first = join_and_score(block, space, config, calibration)
            t1 = time.perf_counter()
            refined = refine_partition(first, space, config, calibration)
            t2 = time.perf_counter()
            ctx = add_context(refined, block, space, config, calibration, model)
            t3 = time.perf_counter()
            times["first_pass"] += t1 - t0
            times["refine"] += t2 - t1
            times["context"] += t3 - t2
            want = truth.reindex(first.part["peak_id"].to_numpy()).to_numpy()
            before, after = calls(refined, space), calls(ctx, space)
            moved = ctx.changed.numpy()
            changed += int(moved.sum())
            right_before += int((before[moved] == want[moved]).sum()
                                + (pd.isna(before[moved]) & pd.isna(want[moved])).sum())
            right_after += int((after[moved] == want[moved]).sum()
                               + (pd.isna(after[moved]) & pd.isna(want[moved])).sum())
    ratio = (times["context"]) / times["first_pass"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
        "peaks": n, "compounds": n_compounds, "blocks": len(blocks),
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "plan_s": round(t_plan, 2),
        "context_over_first_pass": round(ratio, 3),
        "refine_and_context_over_first_pass": round(
            (times["refine"] + times["context"]) / times["first_pass"], 3),
        "changed": changed, "right_before_change": right_before,
        "right_after_change": right_after, "model": model.to_dict(),
    }
    print(f"{'stage':<12}{'seconds':>10}")
    for k, v in times.items():
        print(f"{k:<12}{v:>10.2f}")
    print(f"context / first pass = {ratio:.2f}; changed {changed} calls: right before "
          f"{right_before}, right after {right_after}")
    Path("benchmarks/context_pass.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
