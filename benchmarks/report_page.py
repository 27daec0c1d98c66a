"""The report page's size and the time to write it, at 1e4 and 1e6 peaks.

Usage: ``python benchmarks/report_page.py [N ...]`` (default 10000 1000000). Each N gets a
synthetic result folder: ``assignments.parquet`` and ``candidates.parquet`` with the pipeline's
columns and dtypes (``ASSIGNMENT_DTYPES``, ``CANDIDATE_DTYPES``), the calibration and context
files a run writes, and a manifest; molecules of three co-eluting peaks (an [M+H]+, its 13C
peak, an [M+Na]+), a quarter of the peaks not in the library, about three candidates a peak.
The pipeline itself does not run. Prints peaks, drawn peaks, review queue, page MB, seconds
to write it (best of ``--repeat``) and, where Debian's chromium is installed, seconds until
headless Chromium (offline, software rendering) has drawn every view; writes
``benchmarks/report_page.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dask_assign.config import Calibration  # noqa: E402
from dask_assign.output.tables import arrow_schema  # noqa: E402
from dask_assign.report import load_result, write_report  # noqa: E402
from dask_assign.scoring.tables import ASSIGNMENT_DTYPES, CANDIDATE_DTYPES  # noqa: E402

ADDUCTS = np.array(["[M+H]+", "[M+Na]+", "[M+NH4]+", "[M+K]+", "[M-H2O+H]+"], dtype=object)


def synthetic_result(n: int, folder: Path, seed: int = 1):
    """A result folder of ``n`` peaks with the pipeline's tables and files."""
    rng = np.random.default_rng(seed)
    n_mol = n // 3
    compound = rng.integers(0, max(n_mol // 2, 1), n_mol)  # a compound seen about twice
    mol_rt = rng.uniform(0.5, 20.0, n_mol)
    mol_mz = rng.uniform(80.0, 1100.0, n_mol)
    rt = np.concatenate([mol_rt, mol_rt + rng.normal(0, 0.004, n_mol),
                         mol_rt + rng.normal(0, 0.004, n_mol)])
    mz = np.concatenate([mol_mz, mol_mz + 1.00336, mol_mz + 21.98194])
    comp = np.concatenate([compound] * 3)
    adduct = np.repeat(np.array(["[M+H]+", "[M+H]+", "[M+Na]+"], dtype=object), n_mol)
    isotope = np.repeat(np.array([None, "13C1", None], dtype=object), n_mol)
    extra = n - rt.size  # a remainder of lone peaks
    rt = np.concatenate([rt, rng.uniform(0.5, 20, extra)])
    mz = np.concatenate([mz, rng.uniform(80, 1100, extra)])
    comp = np.concatenate([comp, rng.integers(0, max(n_mol, 1), extra)])
    adduct = np.concatenate([adduct, ADDUCTS[rng.integers(0, 5, extra)]])
    isotope = np.concatenate([isotope, np.full(extra, None, dtype=object)])
    order = np.argsort(rt, kind="stable")  # the pipeline writes peaks in RT order
    rt, mz, comp, adduct, isotope = rt[order], mz[order], comp[order], adduct[order], \
        isotope[order]
    called = rng.random(n) > 0.25
    prob = np.clip(rng.beta(20, 1, n), 0, 1)  # about an eighth below 0.9, as in the demo
    p_null = np.where(called, 1 - prob, prob)
    ids = np.array([f"C{c:07d}" for c in comp], dtype=object)
    cid = np.where(called, ids, None)
    a = pd.DataFrame({
        "peak_id": [f"P{i:08d}" for i in range(n)], "compound_id": cid,
        "name": np.where(called, np.char.add("compound ", comp.astype(str)).astype(object),
                         None),
        "formula": np.where(called, np.char.add("C", (comp % 40 + 2).astype(str))
                            .astype(object), None),
        "adduct": np.where(called, adduct, None), "isotope": np.where(called, isotope, None),
        "prob": prob, "p_formula": np.where(called, np.minimum(prob + rng.exponential(
            0.01, n), 1), np.nan), "p_null": p_null,
        "ppm_error": np.where(called, rng.normal(1.0, 3.0, n), np.nan),
        "rt_error": np.where(called, rng.normal(0.1, 0.05, n), np.nan),
        "n_candidates": 1 + rng.poisson(2.0, n), "overflow": rng.random(n) < 0.001,
        "refined": rng.random(n) < 0.2, "n_partners": rng.integers(0, 3, n),
        "context_changed": rng.random(n) < 0.03, "mz": mz, "rt": rt,
        "intensity": rng.lognormal(11.5, 2.0, n)}).astype(ASSIGNMENT_DTYPES)
    k = a["n_candidates"].to_numpy()
    peak = np.repeat(np.arange(n), k)
    rank = np.arange(peak.size) - np.repeat(np.cumsum(k) - k, k)
    cand_comp = np.where(rank == 0, comp[peak], rng.integers(0, max(n_mol, 1), peak.size))
    cprob = np.where(rank == 0, np.where(called[peak], prob[peak], 1 - prob[peak]),
                     (1 - prob[peak]) / (k[peak] + 1))
    c = pd.DataFrame({
        "peak_id": a["peak_id"].to_numpy()[peak], "rank": rank,
        "compound_id": np.array([f"C{x:07d}" for x in cand_comp], dtype=object),
        "adduct": np.where(rank == 0, adduct[peak], ADDUCTS[rng.integers(0, 5, peak.size)]),
        "isotope": np.where(rank == 0, isotope[peak], None),
        "ppm_error": rng.normal(1.0, 4.0, peak.size),
        "rt_error": rng.normal(0.1, 0.3, peak.size), "prob": cprob}).astype(CANDIDATE_DTYPES)
    folder.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, frame, dtypes in (("assignments", a, ASSIGNMENT_DTYPES),
                                ("candidates", c, CANDIDATE_DTYPES)):
        pq.write_table(pa.Table.from_pandas(frame, schema=arrow_schema(dtypes),
                                            preserve_index=False), folder / f"{name}.parquet")
    cal = Calibration(mass_knots=(80.0, 600.0, 1100.0), mass_offsets=(0.8, 1.0, 1.3),
                      mass_sigma_ppm=3.0, rt_knots=(0.5, 10.0, 20.0),
                      rt_values=(0.6, 10.1, 20.05), rt_sigma=0.05, rt_tail_share=0.02,
                      rt_tail_sigma=0.5, iterations=7).to_dict()
    context = {"rt_tol": 0.03, "rt_sigma": 0.008}
    (folder / "calibration.json").write_text(json.dumps(cal))
    (folder / "context.json").write_text(json.dumps(context))
    files = ["_SUCCESS", "assignments.parquet", "calibration.json", "candidates.parquet",
             "context.json", "manifest.json"]
    (folder / "manifest.json").write_text(json.dumps({
        "dask_assign_version": "bench", "calibration": cal, "context": context,
        "config": {"max_coelution": 0.1}, "format": "parquet", "files": files,
        "summary": {"peaks": n, "assigned": int(called.sum())}}))
    (folder / "_SUCCESS").write_text("")


def open_seconds(page: Path, tmp) -> float | None:
    """Seconds from navigation until every view of the page has been drawn (headless
    Chromium, offline, one tab; the browser's start not counted)."""
    from tests.browser import CHROMIUM, Browser

    if CHROMIUM is None:
        return None
    with Browser(Path(tmp) / f"profile-{page.parent.name}") as b:
        t0 = time.perf_counter()
        b.open(page.as_uri(), "window.Bokeh && Bokeh.index.roots.length > 0 && "
                              "Bokeh.index.roots.every(v => v.has_finished())", timeout=300)
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[10_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-browser", action="store_true", help="skip the time to open")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"r{n}"
            t0 = time.perf_counter()
            synthetic_result(n, folder)
            made = time.perf_counter() - t0
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                page = write_report(folder)
                times.append(time.perf_counter() - t0)
            data = load_result(folder)  # what the page drew, for the table
            rows.append({"peaks": n, "drawn": int(len(data.shown)),
                         "queue": int(len(data.queue)), "page_mb": page.stat().st_size / 1e6,
                         "seconds": min(times), "synthesis_s": made,
                         "open_s": None if args.no_browser else open_seconds(page, tmp)})
            r = rows[-1]
            opened = "" if r["open_s"] is None else f"  open {r['open_s']:6.2f} s"
            print(f"{r['peaks']:>10,} peaks  drawn {r['drawn']:>6,}  queue {r['queue']:>8,}  "
                  f"page {r['page_mb']:6.2f} MB  write {r['seconds']:6.2f} s{opened}",
                  flush=True)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                  if ln.startswith("Model name")), platform.processor())
    out = ROOT / "benchmarks" / "report_page.json"
    out.write_text(json.dumps({"machine": model, "python": platform.python_version(),
                               "rows": rows}, indent=1))
    print(f"machine: {model}; written {out}")


if __name__ == "__main__":
    main()
