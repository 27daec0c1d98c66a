"""What a user waits for in a small job: ``dask-assign --help``, an argument error, and a
whole ``dask-assign run`` on shared set 0228 (1,736 peaks), against ``python -c "import
torch"`` in the same environment, measured in one run (best of ``--repeat``).

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/startup.py [--repeat 3]

Prints a table and the ratios issue 16 asks for (``--help`` <= 0.4x, the run <= 2.5x the
torch import). The run uses the CLI's defaults (a small table: an in-process cluster) and,
for comparison, ``--workers 2`` (a cluster of two worker processes); with the library's ion
table read from the ion cache (a lab's every run but the first), and built (``--ion-cache
off``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SET = ROOT.parent / "shared" / "data" / "repoRT_0228_hilic_pos"
BIN = Path(sys.executable).parent


def wall(cmd: list[str], ok=(0,)) -> float:
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    took = time.perf_counter() - t0
    if rc not in ok:
        raise SystemExit(f"{' '.join(cmd)}: exit {rc}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cli = str(BIN / "dask-assign")
    tmp = Path(tempfile.mkdtemp())
    run = [cli, "run", str(SET / "peaks.csv"), str(SET / "library.csv"), "--out"]
    cached = ["--ion-cache", str(tmp / "cache")]
    wall([*run, str(tmp / "prime"), *cached])  # the cache's entry, made once
    cases = {
        'python -c "import torch"': lambda k: wall([sys.executable, "-c", "import torch"]),
        "dask-assign --help": lambda k: wall([cli, "--help"]),
        "dask-assign run --k-max 0 (argument error)": lambda k: wall(
            [*run, str(tmp / "never"), "--k-max", "0"], ok=(2,)),
        "dask-assign run 0228 --ion-cache off (in-process cluster)": lambda k: wall(
            [*run, str(tmp / f"a{k}"), "--ion-cache", "off"]),
        "dask-assign run 0228 (ion table from the cache)": lambda k: wall(
            [*run, str(tmp / f"c{k}"), *cached]),
        "dask-assign run 0228 --workers 2 (worker processes, cache)": lambda k: wall(
            [*run, str(tmp / f"b{k}"), "--workers", "2", *cached]),
    }
    best = {}
    for name, case in cases.items():
        best[name] = min(case(k) for k in range(args.repeat))
    shutil.rmtree(tmp)
    torch_s = best['python -c "import torch"']
    print(f"| what | best of {args.repeat}, s | x import torch |")
    print("|---|---|---|")
    for name, s in best.items():
        print(f"| {name} | {s:.2f} | {s / torch_s:.2f} |")


if __name__ == "__main__":
    main()
