"""Streaming check: N peaks (default 10 million) from Parquet through the CLI.

Run: OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/stream_peaks.py [N]
Makes the peaks from the demo set (jittered copies), runs `dask-assign run` with 2 workers,
samples the summed RSS of the whole process tree (client, nannies, workers) every 0.5 s, and
prints wall time, peak tree RSS and the run summary.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

DEMO = Path(__file__).resolve().parents[1] / "dask_assign" / "data" / "demo"


def make_peaks(path: Path, n: int):
    demo = pd.read_csv(DEMO / "peaks.csv")
    rng = np.random.default_rng(5)
    schema = pa.schema([("peak_id", pa.string()), ("mz", pa.float64()), ("rt", pa.float64()),
                        ("intensity", pa.float64())])
    with pq.ParquetWriter(path, schema) as writer:
        done, k = 0, 0
        while done < n:
            copy = demo.assign(peak_id=demo["peak_id"] + f"_{k:05d}",
                               rt=(demo["rt"] + rng.normal(0, 0.01, len(demo))).clip(lower=0),
                               mz=demo["mz"] * (1 + rng.normal(0, 2e-6, len(demo))))
            copy = copy.iloc[: n - done]
            writer.write_table(pa.Table.from_pandas(copy, schema=schema, preserve_index=False))
            done, k = done + len(copy), k + 1


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def split_settings(args: list[str]) -> tuple[list[str], tuple]:
    """A benchmark's own arguments, and the ``dask-assign run`` settings after ``--``."""
    if "--" not in args:
        return list(args), ()
    cut = args.index("--")
    return list(args[:cut]), tuple(args[cut + 1:])


def run_cli(peaks: Path, library: Path, out: Path, every: float = 0.5,
            extra: tuple = ()) -> tuple[float, int]:
    """``dask-assign run`` on 2 workers (plus ``extra`` options); wall seconds and the peak
    summed RSS of its whole process tree (client, nannies, workers), sampled every ``every``
    seconds. The ion table is built in every run (``--ion-cache off``) unless ``extra``
    names a cache: runs against one library stay comparable (and a marginal cost between
    two of them is not the cache's)."""
    if "--ion-cache" not in extra:
        extra = (*extra, "--ion-cache", "off")
    cmd = [sys.executable, "-m", "dask_assign.cli", "run", str(peaks), str(library),
           "--out", str(out), "--workers", "2", *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(watched))
        time.sleep(every)
    if proc.returncode:
        raise SystemExit(f"dask-assign run failed on {peaks}")
    return time.perf_counter() - t, peak


def main(n: int = 10_000_000):
    work = Path(tempfile.mkdtemp(prefix="dask-assign-stream-"))
    make_peaks(work / "peaks.parquet", n)
    wall, peak = run_cli(work / "peaks.parquet", DEMO / "library.csv", work / "out")
    summary = json.loads((work / "out" / "manifest.json").read_text())["summary"]
    print(f"peaks {summary['peaks']:,}  wall {wall:.0f} s  peak tree RSS {peak / 2**30:.2f} GiB"
          f"  (pipeline {summary['seconds']['total']:.0f} s, of which calibration "
          f"{summary['seconds']['calibrate']:.0f} s)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000)
