"""The GPU path. Tests marked ``gpu`` run where a device query finds a CUDA device and skip
elsewhere (an importable cudf is not a GPU); the others check how a machine without one
answers ``--gpu``."""

import subprocess
import sys

import dask
import numpy as np
import pytest

from dask_assign.config import AssignConfig
from dask_assign.graph.cluster import cuda_devices
from tests.conftest import DEMO

needs_gpu = pytest.mark.skipif(cuda_devices() == 0, reason="no CUDA device (device query)")


@pytest.mark.skipif(cuda_devices() > 0, reason="this machine has a CUDA device")
def test_gpu_flag_without_a_device_fails_before_any_work(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "dask_assign.cli", "run", DEMO / "peaks.csv",
                          DEMO / "library.csv", "--out", out, "--gpu"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "--gpu: no CUDA device found" in res.stderr
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def _annotate(device):
    from dask_assign.filtering.space import prepare_library
    from dask_assign.graph.plan import plan_run
    from dask_assign.graph.run import as_dask_frame
    from dask_assign.graph.tasks import add_context, join_and_score, refine_partition
    from dask_assign.scoring.tables import to_tables

    config = AssignConfig()
    with dask.config.set(scheduler="synchronous"):
        ddf = as_dask_frame(DEMO / "peaks.csv", config)
        plan = plan_run(ddf, prepare_library(DEMO / "library.csv", config), config)
        space, cal, cfg = plan.space, plan.calibration, config.replace(device=device)
        tables = []
        for block in plan.blocks:  # the run's blocks, scored on ``device`` here
            block = block.compute()
            r = refine_partition(join_and_score(block, space, cfg, cal), space, cfg, cal)
            r = add_context(r, block, space, cfg, cal, plan.context)
            tables.append(to_tables(r, space)[0])
    import pandas as pd

    return pd.concat(tables).sort_values("peak_id").reset_index(drop=True)


@pytest.mark.gpu
@needs_gpu
def test_gpu_results_equal_cpu_results():
    cpu, gpu = _annotate("cpu"), _annotate("cuda")
    for col in ("compound_id", "adduct", "isotope"):
        assert (cpu[col].fillna("-") == gpu[col].fillna("-")).all(), col
    np.testing.assert_allclose(gpu["prob"], cpu["prob"], atol=1e-6)
    np.testing.assert_allclose(gpu["p_null"], cpu["p_null"], atol=1e-6)



@pytest.mark.gpu
@needs_gpu
def test_gpu_cli_run(tmp_path):
    pytest.importorskip("dask_cuda")  # after the device query: dask-cuda is the gpu extra
    res = subprocess.run([sys.executable, "-m", "dask_assign.cli", "run", DEMO / "peaks.csv",
                          DEMO / "library.csv", "--out", tmp_path / "out", "--gpu"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "_SUCCESS").exists()

