"""Speed against IPA (ipaPy2) at 1e3 .. 5e3 peaks, same inputs, same run.

Run: make bench-ipa   (or .venv/bin/python benchmarks/vs_ipa.py)
Needs the IPA environment (`make ipa-env`) and ../shared. Three labeled sets of growing size:
the shared sets 0392 (1.1k peaks) and 0228 (1.7k), and a 5.2k-peak set generated with
../shared/tools/make_eval.py from RepoRT 0382 (seed 99, 62% of the library present; 0382's
compounds were among the shipped model's training sets, so its accuracy is not a held-out
figure). dask-assign runs with default settings on a 2-worker LocalCluster started once and
warmed up on the demo set (both reported apart); IPA through ../shared/tools/ipa/run_ipa.py
(MS1 stage, 8 ppm, the five adducts of the sets, RT grouping), timed as a whole (its ion
table build included), as in benchmarks/accuracy.py. Both are scored by
../shared/tools/score.py. Prints a table and writes benchmarks/vs_ipa.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, run_dask_assign, run_ipa, score  # noqa: E402  (a sibling script)

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "build" / "ipa-sets" / "0382_seed99"


def sets() -> list[tuple[str, Path]]:
    if not (GENERATED / "truth.csv").exists():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_eval.py"), "--dataset",
                        "0382", "--seed", "99", "--present-frac", "0.62", "--out",
                        str(GENERATED)], check=True, capture_output=True)
    return [("0392 (shared)", SHARED / "data" / "repoRT_0392_rp_pos"),
            ("0228 (shared)", SHARED / "data" / "repoRT_0228_hilic_pos"),
            ("0382 (generated, seed 99)", GENERATED)]


def main():
    from dask_assign.graph.cluster import connect

    if not (ROOT / ".venv-ipa" / "bin" / "python").exists():
        raise SystemExit("IPA is not installed: make ipa-env first")
    t = time.perf_counter()
    client, cluster = connect(workers=2)
    start = time.perf_counter() - t
    rows = []
    try:
        # The workers' first run loads the compiled kernels (about 0.7 s): done once, untimed,
        # on the demo set, as a long-lived cluster would have done it already.
        from dask_assign.graph.run import run

        demo = ROOT / "dask_assign" / "data" / "demo"
        t = time.perf_counter()
        run(demo / "peaks.csv", demo / "library.csv", Path(tempfile.mkdtemp()) / "warm",
            client=client)
        warm = time.perf_counter() - t
        for name, data in sets():
            work = Path(tempfile.mkdtemp(prefix="bench-ipa-"))
            n = len(pd.read_csv(data / "peaks.csv"))
            ours = run_dask_assign(data, work, client)
            ipa = run_ipa(data, work)
            a = score(data, work / "dask-assign" / "assignments.parquet")
            b = score(data, work / "ipa.csv")
            rows.append({"set": name, "peaks": n, "dask_assign_s": round(ours, 2),
                         "ipa_s": round(ipa, 2), "ipa_ms_per_peak": round(ipa / n * 1e3, 1),
                         "faster": round(ipa / ours, 1),
                         "overall": round(a["overall"], 3), "ipa_overall": round(b["overall"], 3)})
    finally:
        client.close()
        cluster.close()
    print(f"cluster start (once): {start:.1f} s; first run (demo, untimed below): {warm:.1f} s")
    print(pd.DataFrame(rows).to_string(index=False))
    (ROOT / "benchmarks" / "vs_ipa.json").write_text(json.dumps(
        {"cluster_start_s": round(start, 1), "warm_up_s": round(warm, 1), "rows": rows},
        indent=1))


if __name__ == "__main__":
    main()
