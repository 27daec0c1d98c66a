"""Side by side on the shared evaluation sets: dask-assign, a nearest-ion rule and IPA.

Run: make bench-accuracy   (or .venv/bin/python benchmarks/accuracy.py [--no-ipa])
Every method gets the same inputs; every result is scored by ../shared/tools/score.py (the
reference scorer) in the same run. IPA runs in its own environment (.venv-ipa, `make ipa-env`)
through the runner in ../shared/tools/ipa, as that runner's README describes: MS1 stage, 8 ppm,
the five adducts the sets use, isotope peaks given the call of their monoisotopic peak.
Prints a table and writes benchmarks/accuracy.json.
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
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SETS = ["repoRT_0392_rp_pos", "repoRT_0228_hilic_pos"]
FIVE = ["[M+H]+", "[M+Na]+", "[M+NH4]+", "[M+K]+", "[M-H2O+H]+"]


def score(data: Path, assignments: Path) -> dict:
    res = subprocess.run([sys.executable, str(SHARED / "tools" / "score.py"),
                          str(data / "truth.csv"), str(data / "library.csv"), str(assignments),
                          "--json"], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def run_dask_assign(data: Path, work: Path, client) -> float:
    from dask_assign.pipeline import run

    t = time.perf_counter()
    run(data / "peaks.csv", data / "library.csv", work / "dask-assign", client=client)
    return time.perf_counter() - t


def run_nearest_ion(data: Path, work: Path) -> float:
    """The rule of ../shared/data/README.md: the nearest ion (5 adducts x 13C isotopes)
    within 10 ppm and RT +/- 0.5 min, else not in library; no probabilities."""
    from dask_assign.adducts import select_adducts
    from dask_assign.io import load_peaks, read_library
    from dask_assign.ions import build_ions

    t = time.perf_counter()
    peaks, lib = load_peaks(data / "peaks.csv"), read_library(data / "library.csv")
    ions = build_ions(lib, select_adducts("positive", FIVE), 2).ions
    mz, rt = ions["mz"].to_numpy(), ions["rt"].to_numpy()
    calls = []
    for pmz, prt in zip(peaks["mz"].to_numpy(), peaks["rt"].to_numpy(), strict=True):
        lo, hi = np.searchsorted(mz, [pmz / (1 + 1e-5), pmz / (1 - 1e-5)])
        ok = np.arange(lo, hi)[np.abs(rt[lo:hi] - prt) <= 0.5]
        if ok.size:
            best = ok[np.argmin(np.abs(mz[ok] - pmz))]
            calls.append(lib["compound_id"].iloc[int(ions["compound"].iloc[best])])
        else:
            calls.append(None)
    pd.DataFrame({"peak_id": peaks["peak_id"], "compound_id": calls}).to_csv(
        work / "nearest.csv", index=False)
    return time.perf_counter() - t


def run_ipa(data: Path, work: Path) -> float | None:
    python = ROOT / ".venv-ipa" / "bin" / "python"
    if not python.exists():
        return None
    tools = SHARED / "tools" / "ipa"
    pd.read_csv(data / "peaks.csv").rename(columns={"peak_id": "id"}).to_csv(
        work / "ipa_peaks.csv", index=False)
    pd.read_csv(data / "library.csv").rename(columns={"compound_id": "id"}).to_csv(
        work / "ipa_lib.csv", index=False)
    t = time.perf_counter()
    subprocess.run([str(python), str(tools / "run_ipa.py"), str(work / "ipa_peaks.csv"),
                    str(work / "ipa_lib.csv"), str(work / "ipa_out.csv"), "--mode", "pos",
                    "--ppm", "8", "--adducts", "M+H,M+Na,M+NH4,M+K,M-H2O+H", "--rt-unit", "min",
                    "--group", "rt", "--cache-dir", str(work / "ipa-cache")],
                   check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    subprocess.run([str(python), str(tools / "ipa_to_assignments.py"), str(work / "ipa_out.csv"),
                    str(work / "ipa.csv"), "propagate"], check=True, capture_output=True)
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-ipa", action="store_true")
    args = ap.parse_args()
    from dask_assign.cluster import connect

    client, cluster = connect(workers=2)
    rows = []
    try:
        for name in SETS:
            data = SHARED / "data" / name
            work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
            seconds = {"dask-assign": run_dask_assign(data, work, client),
                       "nearest ion": run_nearest_ion(data, work)}
            files = {"dask-assign": work / "dask-assign" / "assignments.parquet",
                     "nearest ion": work / "nearest.csv"}
            if not args.no_ipa:
                ipa = run_ipa(data, work)
                if ipa is None:
                    print("IPA not run: make ipa-env first", file=sys.stderr)
                else:
                    seconds["IPA (ipaPy2 1.4.0, MS1)"] = ipa
                    files["IPA (ipaPy2 1.4.0, MS1)"] = work / "ipa.csv"
            for method, path in files.items():
                s = score(data, path)
                rows.append({"set": name, "method": method, **{k: s.get(k) for k in (
                    "known_top1", "unknown_null", "overall", "ece", "brier")},
                    "seconds": round(seconds[method], 2)})
    finally:
        client.close()
        cluster.close()
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    for name in SETS:
        sub = table[table["set"] == name].set_index("method")["overall"]
        if "IPA (ipaPy2 1.4.0, MS1)" in sub:
            print(f"{name}: dask-assign - IPA = "
                  f"{sub['dask-assign'] - sub['IPA (ipaPy2 1.4.0, MS1)']:+.3f} overall")
    (ROOT / "benchmarks" / "accuracy.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
