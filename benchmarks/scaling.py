"""Whole annotation, end to end through the CLI, at growing sizes: a scaling table.

Run: OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/scaling.py [MAX_PEAKS]
or: ... benchmarks/scaling.py PEAKSxCOMPOUNDS ... (e.g. ``1e7x2e5``: those rows alone, added to
benchmarks/scaling.json), and after ``--`` the settings every run gets (e.g. ``-- --ppm 10
--rt-window 0.5``: the settings of ``marginal.py``).

For each size (peaks x compounds: 1e4 x 1e4, 1e5 x 2e4, 1e6 x 1e5, and 1e7 x 2e5 when
MAX_PEAKS allows) the synthetic run of ``benchmarks/context_pass.py`` is written as Parquet and
``dask-assign run`` annotates it on a 2-worker LocalCluster: read and validate, calibrate, RT
blocks, join, score, refine, context pass, write Parquet. The summed RSS of the whole process
tree (client, nannies, workers) is sampled every 0.2 s. Prints a table and writes
benchmarks/scaling.json (after each row, so a long run keeps what it measured).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from context_pass import make  # noqa: E402  (a sibling script)
from stream_peaks import run_cli, split_settings  # noqa: E402

SIZES = [(10_000, 10_000), (100_000, 20_000), (1_000_000, 100_000), (10_000_000, 200_000)]
JSON = Path(__file__).with_name("scaling.json")


def run_one(n_peaks: int, n_compounds: int, settings: tuple = ()) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dask-assign-scale-"))
    try:
        n = make(work, n_peaks, n_compounds)
        wall, peak = run_cli(work / "peaks.parquet", work / "library.csv", work / "out",
                             every=0.2, extra=settings)
        summary = json.loads((work / "out" / "manifest.json").read_text())["summary"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"peaks": n, "compounds": n_compounds, "settings": " ".join(settings),
            "wall_s": round(wall, 1), "pipeline_s": round(summary["seconds"]["total"], 1),
            "calibrate_s": round(summary["seconds"]["calibrate"], 1),
            "combine_s": round(summary["seconds"].get("combine", float("nan")), 1),
            "us_per_peak": round(wall / n * 1e6, 1), "peak_rss_gib": round(peak / 2**30, 2),
            "assigned": summary["assigned"], "overflow": summary["overflow"],
            "context_changed": summary["context_changed"]}


def print_table(rows: list):
    print(f"{'peaks':>11} {'compounds':>10} {'wall s':>8} {'pipeline s':>11} {'us/peak':>8} "
          f"{'peak RSS GiB':>13}  settings")
    for r in rows:
        print(f"{r['peaks']:>11,} {r['compounds']:>10,} {r['wall_s']:>8} {r['pipeline_s']:>11} "
              f"{r['us_per_peak']:>8} {r['peak_rss_gib']:>13}  {r.get('settings', '')}")


def main(args: list[str]):
    args, settings = split_settings(args)
    if any("x" in a for a in args):
        sizes = [tuple(int(float(v)) for v in a.split("x")) for a in args]
        old = json.loads(JSON.read_text()) if JSON.exists() else []
    else:
        max_peaks = int(float(args[0])) if args else 1_000_000
        sizes, old = [(n, c) for n, c in SIZES if n <= max_peaks], []
    rows = []
    for n, c in sizes:
        rows.append(run_one(n, c, settings))
        print_table(rows[-1:])
        done = {(x["peaks"], x["compounds"], x["settings"]) for x in rows}
        kept = [r for r in old if (r["peaks"], r["compounds"], r.get("settings", "")) not in done]
        JSON.write_text(json.dumps(kept + rows, indent=1))
    print_table(json.loads(JSON.read_text()))


if __name__ == "__main__":
    main(sys.argv[1:])
