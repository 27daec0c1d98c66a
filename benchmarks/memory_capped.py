"""Memory check: the demo peaks 150 times over (168k) through one worker capped at 1 GiB.

Run: OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/memory_capped.py
Prints the wall time and the peak RSS of the worker and of the client.
"""

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dask_assign.config import AssignConfig
from dask_assign.graph.cluster import connect
from dask_assign.graph.run import run

DEMO = Path(__file__).resolve().parents[1] / "dask_assign" / "data" / "demo"


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(copies: int = 150, memory_limit: str = "1GiB"):
    demo = pd.read_csv(DEMO / "peaks.csv")
    rng = np.random.default_rng(3)
    big = pd.concat([demo.assign(peak_id=demo["peak_id"] + f"_{k:03d}",
                                 rt=(demo["rt"] + rng.normal(0, 0.01, len(demo))).clip(lower=0))
                     for k in range(copies)], ignore_index=True)
    work = Path(tempfile.mkdtemp(prefix="dask-assign-bench-"))
    big.to_parquet(work / "peaks.parquet")
    client, cluster = connect(workers=1, memory_limit=memory_limit)
    try:
        t = time.perf_counter()
        summary = run(work / "peaks.parquet", DEMO / "library.csv", work / "out",
                      AssignConfig(partition_size=3000), client=client)
        wall = time.perf_counter() - t
        worker = list(client.run(max_rss_mib).values())[0]
    finally:
        client.close()
        cluster.close()
    print(f"peaks {summary['peaks']}  partitions {summary['partitions']}  wall {wall:.1f} s  "
          f"worker max RSS {worker:.0f} MiB (limit {memory_limit})  "
          f"client max RSS {max_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
