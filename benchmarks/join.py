"""Join stage alone: dask-assign's join (compiled CPU loop; torch kernel) vs numpy
searchsorted, DuckDB and polars.

Run: OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/join.py [N_PEAKS] [N_COMPOUNDS]
(needs `pip install duckdb polars`, the `bench` extra). Synthetic but realistic data: compound
masses 100-1000 Da, 8 adducts (so 8 ions a compound, M+0), RT 0-15 min; peaks near ions (70%)
and anywhere (30%); 10 ppm, RT +/- 0.5 min. Every method must return the same pair set
(asserted); prints the best of 5 runs per method and writes benchmarks/join.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dask_assign.filtering.join import MassBinIndex, range_join

PPM, RTW = 10.0, 0.5
REPEATS = 5
SHIFTS = np.array([1.00728, 22.98922, 18.03383, 38.96316, -17.00329, 0.5036, 181.0, 203.0])


def make(n_peaks: int, n_compounds: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    mass = rng.uniform(100, 1000, n_compounds)
    rt = rng.uniform(0, 15, n_compounds)
    ion_mz = (mass[:, None] + SHIFTS[None, :]).ravel()
    ion_rt = np.repeat(rt, len(SHIFTS))
    order = np.argsort(ion_mz, kind="stable")
    ion_mz, ion_rt = ion_mz[order], ion_rt[order]
    near = int(0.7 * n_peaks)
    pick = rng.integers(0, ion_mz.size, near)
    peak_mz = np.concatenate([ion_mz[pick] * (1 + rng.normal(0, 3e-6, near)),
                              rng.uniform(100, 1200, n_peaks - near)])
    peak_rt = np.concatenate([ion_rt[pick] + rng.normal(0, 0.1, near),
                              rng.uniform(0, 15, n_peaks - near)])
    return peak_mz, peak_rt, ion_mz, ion_rt


def ours(peak_mz, peak_rt, ion_mz, ion_rt, kernel="numba"):
    index = MassBinIndex.build(ion_mz, PPM)
    args = (torch.from_numpy(peak_mz), torch.from_numpy(peak_rt), torch.from_numpy(ion_mz),
            torch.from_numpy(ion_rt), index, PPM, RTW)
    range_join(*(a[:1000] if i < 2 else a for i, a in enumerate(args)), kernel=kernel)  # warm
    t = time.perf_counter()
    p, i = range_join(*args, kernel=kernel)
    return time.perf_counter() - t, p.numpy(), i.numpy()


def ours_torch(peak_mz, peak_rt, ion_mz, ion_rt):
    return ours(peak_mz, peak_rt, ion_mz, ion_rt, kernel="torch")


def numpy_searchsorted(peak_mz, peak_rt, ion_mz, ion_rt):
    t = time.perf_counter()
    lo = np.searchsorted(ion_mz, peak_mz / (1 + PPM * 1e-6) - 1e-9, side="left")
    hi = np.searchsorted(ion_mz, peak_mz / (1 - PPM * 1e-6) + 1e-9, side="right")
    counts = hi - lo
    p = np.repeat(np.arange(peak_mz.size), counts)
    i = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(
        lo, counts)
    keep = (np.abs(peak_mz[p] - ion_mz[i]) <= PPM * 1e-6 * ion_mz[i]) & (
        np.abs(peak_rt[p] - ion_rt[i]) <= RTW)
    return time.perf_counter() - t, p[keep], i[keep]


def duckdb_join(peak_mz, peak_rt, ion_mz, ion_rt):
    import duckdb
    import pandas as pd

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    peaks = pd.DataFrame({"p": np.arange(peak_mz.size), "mz": peak_mz, "rt": peak_rt})
    ions = pd.DataFrame({"i": np.arange(ion_mz.size), "mz": ion_mz, "rt": ion_rt,
                         "lo": ion_mz * (1 - PPM * 1e-6), "hi": ion_mz * (1 + PPM * 1e-6)})
    con.register("peaks", peaks)
    con.register("ions", ions)
    t = time.perf_counter()
    out = con.execute(
        "SELECT p, i FROM peaks JOIN ions ON peaks.mz BETWEEN ions.lo AND ions.hi "
        "AND abs(peaks.mz - ions.mz) <= ? * ions.mz AND abs(peaks.rt - ions.rt) <= ?",
        [PPM * 1e-6, RTW]).fetchnumpy()
    return time.perf_counter() - t, out["p"], out["i"]


def polars_join(peak_mz, peak_rt, ion_mz, ion_rt):
    import polars as pl

    peaks = pl.DataFrame({"p": np.arange(peak_mz.size), "mz": peak_mz, "rt": peak_rt})
    ions = pl.DataFrame({"i": np.arange(ion_mz.size), "imz": ion_mz, "irt": ion_rt,
                         "lo": ion_mz * (1 - PPM * 1e-6), "hi": ion_mz * (1 + PPM * 1e-6)})
    t = time.perf_counter()
    out = peaks.join_where(
        ions, pl.col("mz") >= pl.col("lo"), pl.col("mz") <= pl.col("hi"),
    ).filter(((pl.col("mz") - pl.col("imz")).abs() <= PPM * 1e-6 * pl.col("imz"))
             & ((pl.col("rt") - pl.col("irt")).abs() <= RTW))
    return time.perf_counter() - t, out["p"].to_numpy(), out["i"].to_numpy()


def pairs(p, i):
    return np.unique(np.asarray(p, np.int64) * (1 << 32) + np.asarray(i, np.int64))


def main(n_peaks: int = 1_000_000, n_compounds: int = 100_000):
    torch.set_num_threads(2)
    data = make(n_peaks, n_compounds)
    results, reference = {}, None
    for name, fn in (("dask-assign (numba, CPU default)", ours),
                     ("dask-assign (torch, the CUDA kernel)", ours_torch),
                     ("numpy searchsorted", numpy_searchsorted),
                     ("DuckDB", duckdb_join), ("polars join_where", polars_join)):
        runs = [fn(*data) for _ in range(REPEATS)]
        seconds, p, i = min(runs, key=lambda r: r[0])  # best of the repeats: the least noise
        got = pairs(p, i)
        if reference is None:
            reference = got
        assert np.array_equal(got, reference), f"{name}: another pair set"
        results[name] = round(seconds, 3)
    print(f"{n_peaks:,} peaks x {data[2].size:,} ions, {reference.size:,} pairs "
          f"(10 ppm, RT +/- 0.5 min); identical pair sets")
    duck = results["DuckDB"]
    for name, seconds in results.items():
        print(f"  {name:38s} {seconds:7.3f} s   DuckDB / this = {duck / seconds:5.2f}")
    Path(__file__).with_name("join.json").write_text(json.dumps(
        {"peaks": n_peaks, "ions": int(data[2].size), "pairs": int(reference.size),
         "seconds": results}, indent=1))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
