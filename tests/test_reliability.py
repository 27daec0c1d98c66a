"""Failures mid-job, resume, bounded memory, safe network defaults, TLS."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from dask_assign.config import AssignConfig
from dask_assign.errors import InputError
from dask_assign.graph.cluster import connect
from dask_assign.graph.run import run
from tests.conftest import BIG_CONFIG, DEMO, read

CONFIG = BIG_CONFIG


def test_killed_worker_gives_identical_output(big_peaks, undisturbed, tmp_path):
    client, cluster = connect(workers=2)
    out = tmp_path / "out"
    parts = tmp_path / "out.partial" / "parts"
    result = {}

    def job():
        result["summary"] = run(big_peaks, DEMO / "library.csv", out, CONFIG, client=client)

    try:
        pids = client.run(os.getpid)
        thread = threading.Thread(target=job)
        thread.start()
        deadline = time.time() + 400  # a loaded machine is slow to reach the kill point
        while time.time() < deadline and not (parts.exists() and len(list(parts.glob("*.json")))
                                              >= 3):
            time.sleep(0.01)
        finished_at_kill = len(list(parts.glob("*.json")))
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        thread.join(300)
    finally:
        client.close()
        cluster.close()
    n_parts = result["summary"]["partitions"]
    assert 3 <= finished_at_kill < n_parts  # the fault hit a running job
    pd.testing.assert_frame_equal(read(out), read(undisturbed))
    pd.testing.assert_frame_equal(read(out, "candidates"), read(undisturbed, "candidates"))


@pytest.mark.slow
def test_interrupted_cli_run_resumes_to_identical_output(big_peaks, undisturbed, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dask_assign.cli", "run", str(big_peaks),
            str(DEMO / "library.csv"), "--out", str(out), "--workers", "2",
            "--partition-size", "3000"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    parts = tmp_path / "out.partial" / "parts"
    deadline = time.time() + 400  # a loaded machine is slow to reach the kill point
    while time.time() < deadline and len(list(parts.glob("*.json"))) < 10:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its whole local cluster
    proc.wait(30)
    finished = len(list(parts.glob("*.json")))
    assert not out.exists() and finished >= 10
    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["resumed_partitions"] >= finished
    assert manifest["summary"]["resumed_partitions"] < manifest["summary"]["partitions"]
    pd.testing.assert_frame_equal(read(out), read(undisturbed))
    pd.testing.assert_frame_equal(read(out, "candidates"), read(undisturbed, "candidates"))
    assert not (tmp_path / "out.partial").exists()


def test_resume_refuses_other_settings(local_client, tmp_path):
    from dask_assign.output.tables import open_staging

    out = tmp_path / "out"
    open_staging(out, {"inputs": "other"})  # an interrupted run of other inputs
    with pytest.raises(InputError, match="cannot resume"):
        run(DEMO / "peaks.csv", DEMO / "library.csv", out, client=local_client, resume=True)
    assert not out.exists()


def test_small_batches_same_result(local_client, tmp_path):
    small = AssignConfig(partition_size=400, max_pairs=50)
    run(DEMO / "peaks.csv", DEMO / "library.csv", tmp_path / "a", AssignConfig(
        partition_size=400), client=local_client)
    run(DEMO / "peaks.csv", DEMO / "library.csv", tmp_path / "b", small, client=local_client)
    pd.testing.assert_frame_equal(read(tmp_path / "a"), read(tmp_path / "b"))


def test_peak_with_thousands_of_candidates_is_bounded(tmp_path):
    from dask_assign.chemistry.adducts import select_adducts
    from dask_assign.chemistry.ions import build_ions
    from dask_assign.config import Calibration
    from dask_assign.filtering.space import SearchSpace
    from dask_assign.scoring.passes import annotate_partition
    from tests.conftest import library_frame

    lib = library_frame([(f"c{i:04d}", "C10H16N2O3", 1 + (i % 100) / 10) for i in range(3000)])
    config = AssignConfig(adducts=("[M+H]+",), max_isotope=0, max_pairs=500, k_max=50)
    space = SearchSpace.build(build_ions(lib, select_adducts("positive", config.adducts), 0),
                              config.ppm * config.refine_widen)
    mz = float(space.mz[0])
    peaks = pd.DataFrame({"peak_id": ["a", "b"], "mz": [mz, mz], "rt": [5.0, 5.0],
                          "intensity": [1e5, 1e5]})
    a, c = annotate_partition(peaks, space, config.replace(rt_window=20.0), Calibration())
    assert a["n_candidates"].tolist() == [3000, 3000]
    assert a["overflow"].all()
    assert c.groupby("peak_id").size().max() == 50


def test_local_cluster_listens_on_loopback_only(local_client):
    info = local_client.scheduler_info()
    assert local_client.scheduler.address.startswith("tcp://127.0.0.1:")
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
    assert local_client.dashboard_link.startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_tls_between_client_scheduler_and_workers(tmp_path):
    from distributed.security import Security

    security = Security.temporary()  # certificates made here, for this test only
    client, cluster = connect(workers=2, security=security)
    try:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert all(a.startswith("tls://") for a in client.scheduler_info()["workers"])
        run(DEMO / "peaks.csv", DEMO / "library.csv", tmp_path / "tls",
            AssignConfig(partition_size=400), client=client)
    finally:
        client.close()
        cluster.close()
    assert len(read(tmp_path / "tls")) == 1119


@pytest.mark.slow
def test_small_worker_memory_limit_completes(big_peaks, undisturbed, tmp_path):
    """168k peaks through one worker capped at 1 GiB (torch alone takes ~300 MiB of it):
    partitions and batches keep it under the pause threshold."""
    client, cluster = connect(workers=1, memory_limit="1GiB")
    try:
        run(big_peaks, DEMO / "library.csv", tmp_path / "out", CONFIG, client=client)
    finally:
        client.close()
        cluster.close()
    pd.testing.assert_frame_equal(read(tmp_path / "out"), read(undisturbed))


def test_tls_scheduler_address_uses_configured_certificates(tmp_path):
    """--scheduler tls://... takes TLS settings from dask's configuration."""
    import dask
    from distributed import LocalCluster
    from distributed.security import Security

    sec = Security.temporary()
    with LocalCluster(n_workers=1, processes=False, host="127.0.0.1", security=sec,
                      dashboard_address=":0") as cluster:
        ca, cert, key = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
        ca.write_text(sec.tls_ca_file)
        cert.write_text(sec.tls_client_cert)
        key.write_text(sec.tls_client_key)
        with dask.config.set({"distributed.comm.tls.ca-file": str(ca),
                              "distributed.comm.tls.client.cert": str(cert),
                              "distributed.comm.tls.client.key": str(key)}):
            client, none = connect(cluster.scheduler_address)
        try:
            assert none is None and client.scheduler.address.startswith("tls://")
            assert client.submit(sum, [1, 2]).result() == 3
        finally:
            client.close()
