"""dask-assign against pyOpenMS AccurateMassSearch, same features, same library, same run.

Run: make bench-openms   (or .venv/bin/python benchmarks/vs_pyopenms.py [SIZES...])

pyOpenMS runs in its own environment (.venv-openms, `make openms-env`: PyPI `pyopenms`), as a
child process. The library is the HMDB mapping file its wheel ships
(share/OpenMS/CHEMISTRY/HMDBMappingFile.tsv, HMDB 4.0; used in place, never copied into this
repository): the rows whose formula both tools read, written once for each tool. The adducts
are those both tools know, in each tool's notation. The features are synthetic: 70% are ions
of library compounds (m/z with 3 ppm noise, random RT, log-normal intensity), 30% random m/z.
pyOpenMS has no RT and no probabilities; dask-assign gets the library without RT too.

Timed: dask-assign, the CLI end to end (reading CSV, cluster start, calibration, scoring,
refinement, context pass, writing Parquet), with its ion table built (``--ion-cache off``)
and read from the ion cache (every run after a library's first); pyOpenMS, its engine's
init (reading its database) and run (search and mzTab), the FeatureMap already built. Peak
RSS: sampled over each whole process tree (dask-assign: client and workers). Prints a table
and writes benchmarks/vs_pyopenms.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_peaks import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPENMS_PY = ROOT / ".venv-openms" / "bin" / "python"
#: Adducts both tools know: dask-assign name -> OpenMS notation.
ADDUCTS = {
    "[M+H]+": "M+H;1+", "[M+Na]+": "M+Na;1+", "[M+NH4]+": "M+NH4;1+", "[M+K]+": "M+K;1+",
    "[M+2H]2+": "M+2H;2+", "[2M+H]+": "2M+H;1+", "[2M+Na]+": "2M+Na;1+",
    "[M+H+Na]2+": "M+H+Na;2+", "[M+H+NH4]2+": "M+H+NH4;2+", "[M+CH3OH+H]+": "M+CH3OH+H;1+",
    "[M+ACN+H]+": "M+CH3CN+H;1+", "[M+ACN+Na]+": "M+CH3CN+Na;1+", "[M+2Na-H]+": "M+2Na-H;1+",
    "[M+3H]3+": "M+3H;3+", "[M+H+K]2+": "M+H+K;2+", "[M+2Na]2+": "M+2Na;2+",
    "[M+2K-H]+": "M+2K-H;1+", "[M+2ACN+H]+": "M+2CH3CN+H;1+", "[M+ACN+2H]2+": "M+CH3CN+2H;2+",
    "[2M+NH4]+": "2M+NH4;1+", "[2M+K]+": "2M+K;1+", "[2M+ACN+H]+": "2M+CH3CN+H;1+",
}

#: The child: builds a FeatureMap from the CSV, then times the engine.
CHILD = r"""
import csv, json, sys, time
import pyopenms as oms
features, mapping, struct, adducts, out = sys.argv[1:6]
fm = oms.FeatureMap()
for row in csv.DictReader(open(features)):
    mz, rt, inten = float(row["mz"]), float(row["rt"]), float(row["intensity"])
    f = oms.Feature()
    f.setMZ(float(mz)); f.setRT(float(rt) * 60); f.setIntensity(float(inten)); f.setCharge(0)
    fm.push_back(f)
t0 = time.perf_counter()
ams = oms.AccurateMassSearchEngine()
p = ams.getDefaults()
p.setValue("mass_error_value", 10.0)
p.setValue("ionization_mode", "positive")
p.setValue("db:mapping", [mapping])
p.setValue("db:struct", [struct])
p.setValue("positive_adducts", adducts)
ams.setParameters(p)
ams.init()
t1 = time.perf_counter()
mztab = oms.MzTab()
ams.run(fm, mztab)
t2 = time.perf_counter()
oms.MzTabFile().store(out, mztab)
t3 = time.perf_counter()
rows = [line for line in open(out) if line.startswith("SML\t")]
print(json.dumps({"init_s": t1 - t0, "run_s": t2 - t1, "store_s": t3 - t2,
                  "rows": len(rows)}))
"""


def openms_share() -> Path:
    out = subprocess.run([str(OPENMS_PY), "-c", "import os, pyopenms; print(os.path.join("
                          "os.path.dirname(pyopenms.__file__), 'share', 'OpenMS', 'CHEMISTRY'))"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def libraries(share: Path, work: Path):
    """The HMDB rows both tools read: a dask-assign library CSV and an OpenMS mapping file."""
    from dask_assign.chemistry.formulas import parse_formula

    lines = (share / "HMDBMappingFile.tsv").read_text().splitlines()
    header, body = lines[:2], lines[2:]
    keep, rows = [], []
    for line in body:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        try:
            f = parse_formula(parts[1])
        except ValueError:
            continue
        if f.charge != 0 or f.mass <= 0:
            continue
        keep.append(line)
        rows.append({"compound_id": parts[2].split()[0].replace("HMDB:", ""),
                     "name": parts[2].split()[0], "formula": parts[1],
                     "monoisotopic_mass": float(parts[0])})
    lib = pd.DataFrame(rows).drop_duplicates("compound_id")
    lib.to_csv(work / "library.csv", index=False)
    (work / "mapping.tsv").write_text("\n".join(header + keep) + "\n")
    (work / "adducts.tsv").write_text("\n".join(ADDUCTS.values()) + "\n")
    return lib, len(body)


def features(lib: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    from dask_assign.chemistry.adducts import select_adducts

    rng = np.random.default_rng(seed)
    adducts = select_adducts("positive", list(ADDUCTS))
    n_known = int(0.7 * n)
    comp = rng.integers(0, len(lib), n_known)
    which = rng.integers(0, len(adducts), n_known)
    mass = lib["monoisotopic_mass"].to_numpy()[comp]
    mz = np.array([adducts[a].mz(m) for a, m in zip(which, mass, strict=True)])
    mz *= 1 + rng.normal(0, 3, n_known) * 1e-6
    mz = np.concatenate([mz, rng.uniform(80, 1000, n - n_known)])
    keep = (mz > 50) & (mz < 2000)
    mz = mz[keep]
    return pd.DataFrame({"peak_id": [f"F{i}" for i in range(mz.size)], "mz": mz,
                         "rt": rng.uniform(0.5, 20, mz.size),
                         "intensity": 10 ** rng.normal(5.5, 0.8, mz.size)})


def run_openms(work: Path, share: Path, csv: Path):
    import psutil

    child = work / "child.py"
    child.write_text(CHILD)
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(OPENMS_PY), str(child), str(csv), str(work / "mapping.tsv"),
                             str(share / "HMDB2StructMapping.tsv"), str(work / "adducts.tsv"),
                             str(work / "out.mzTab")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(err[-2000:])
    res = json.loads(out.strip().splitlines()[-1])
    res.update(wall_s=time.perf_counter() - t0, peak_rss_gib=peak / 2**30)
    return res


def main():
    sizes = [int(float(s)) for s in sys.argv[1:]] or [1000, 10_000, 100_000]
    if not OPENMS_PY.exists():
        sys.exit("pyOpenMS environment missing: make openms-env")
    share = openms_share()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lib, n_db = libraries(share, work)
        print(f"library: {len(lib)} HMDB compounds ({n_db} mapping rows), "
              f"{len(ADDUCTS)} adducts in common", flush=True)
        for n in sizes:
            peaks = features(lib, n)
            csv = work / f"features_{n}.csv"
            peaks.to_csv(csv, index=False)
            om = run_openms(work, share, csv)
            out = work / f"da_{n}"
            adducts = ("--adducts", ",".join(ADDUCTS))
            wall, peak = run_cli(csv, work / "library.csv", out, every=0.1,
                                 extra=(*adducts, "--ion-cache", "off"))
            da = {"wall_s": wall, "peak_rss_gib": peak / 2**30}
            # A lab's next run against the same library: its ion table from the cache.
            cache = ("--ion-cache", str(work / "cache"))
            if n == sizes[0]:
                run_cli(csv, work / "library.csv", work / "prime", extra=(*adducts, *cache))
            warm, _ = run_cli(csv, work / "library.csv", work / f"warm_{n}", every=0.1,
                              extra=(*adducts, *cache))
            summary = json.loads((out / "manifest.json").read_text())["summary"]
            engine = om["init_s"] + om["run_s"] + om["store_s"]
            rows.append({
                "features": len(peaks), "openms_engine_s": engine,
                "openms_wall_s": om["wall_s"], "openms_rss_gib": om["peak_rss_gib"],
                "openms_rows": om["rows"], "dask_assign_wall_s": da["wall_s"],
                "dask_assign_pipeline_s": summary["seconds"]["total"],
                "dask_assign_rss_gib": da["peak_rss_gib"],
                "dask_assign_cached_wall_s": warm,
                "speedup_wall": engine / da["wall_s"],
                "speedup_cached_wall": engine / warm,
                "memory_ratio": om["peak_rss_gib"] / da["peak_rss_gib"]})
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print(table.round(3).to_string(index=False))
    (ROOT / "benchmarks" / "vs_pyopenms.json").write_text(json.dumps({
        "machine": os.uname().nodename, "cpus": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
