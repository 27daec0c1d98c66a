"""Deployment: the compose commands run as a real cluster on 127.0.0.1, the dashboard over
HTTP during a run, and every deploy file validated (YAML, Kubernetes core objects, the
DaskCluster and DaskJob CRD schemas shipped by dask-kubernetes, Dockerfiles)."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import pandas as pd
import pytest
import yaml

from tests.conftest import BIG_CONFIG, DEMO, read

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interpolate(word: str, env: dict) -> str:
    """Compose's ${VAR:-default}, with the test's values."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), word)


def compose_command(service: str, env: dict) -> list[str]:
    spec = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return [interpolate(w, env) for w in spec["services"][service]["command"]]


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode("utf-8", "replace")


@pytest.mark.slow
def test_compose_cluster_runs_a_submitted_job_like_a_local_cluster(big_peaks, undisturbed,
                                                                   tmp_path):
    port, dash = free_port(), free_port()
    env = {"DASK_HOST": "127.0.0.1", "DASK_SCHEDULER_HOST": "127.0.0.1",
           "DASK_SCHEDULER_PORT": str(port), "DASK_DASHBOARD_PORT": str(dash),
           "DASK_WORKER_MEMORY": "2GiB"}
    # deploy/dask.yaml where the image puts it (/etc/dask): DASK_CONFIG stands in for it.
    (tmp_path / "etc-dask").mkdir()
    (tmp_path / "etc-dask" / "dask-assign.yaml").write_text((DEPLOY / "dask.yaml").read_text())
    run_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
               "OMP_WAIT_POLICY": "passive", "DASK_CONFIG": str(tmp_path / "etc-dask")}
    procs = [subprocess.Popen(compose_command(name, env), env=run_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
             for name in ("scheduler", "worker-1", "worker-2")]
    try:
        from distributed import Client

        address = f"tcp://127.0.0.1:{port}"
        deadline = time.time() + 60
        client = None
        while time.time() < deadline:
            try:
                client = Client(address, timeout=2)
                client.wait_for_workers(2, timeout=30)
                break
            except OSError:
                time.sleep(0.5)
        assert client is not None
        from dask_assign.graph.cluster import WORKER_MALLOC

        seen = client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC})
        assert list(seen.values()) == [WORKER_MALLOC, WORKER_MALLOC]
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "peaks.parquet").write_bytes(big_peaks.read_bytes())
        (tmp_path / "data" / "library.csv").write_bytes((DEMO / "library.csv").read_bytes())
        job = tmp_path / "job.yaml"
        job.write_text("peaks: data/peaks.parquet\nlibrary: data/library.csv\nout: results\n"
                       f"settings:\n  partition_size: {BIG_CONFIG.partition_size}\n")
        sub = subprocess.Popen([str(BIN / "dask-assign"), "submit", str(job), "--scheduler",
                                address], env=run_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        pages = {}
        while sub.poll() is None and len(pages) < 2:
            if client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) > 0:
                for page in ("status", "individual-task-stream"):
                    status, body = fetch(f"http://127.0.0.1:{dash}/{page}")
                    pages[page] = (status, body, sub.poll() is None)
            time.sleep(0.05)
        out, err = sub.communicate(timeout=300)
        assert sub.returncode == 0, err
        assert f"http://127.0.0.1:{dash}/status" in out  # the CLI printed the dashboard link
        for page, (status, body, running) in pages.items():
            assert status == 200 and running, page  # fetched while the job ran
            assert "bokeh" in body.lower(), page
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        for name in ("read_parquet", "summarize_peaks", "drift_search", "em_fit",
                     "join_and_score",
                     "refine_partition", "write_partition"):
            assert any(p.startswith(name) for p in prefixes), (name, prefixes)
        client.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    pd.testing.assert_frame_equal(read(tmp_path / "results"), read(undisturbed))
    pd.testing.assert_frame_equal(read(tmp_path / "results", "candidates"),
                                  read(undisturbed, "candidates"))


def test_every_deploy_yaml_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 5
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path


def _docs(name):
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def test_core_kubernetes_objects_validate():
    docs = _docs("storage.yaml")
    assert {d["kind"] for d in docs} == {"PersistentVolumeClaim", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, desired_version="1.30", strict=True)
    job = yaml.safe_load(docs[1]["data"]["demo.yaml"])  # the job spec it carries is valid too
    assert set(job) <= {"name", "peaks", "library", "out", "settings"}


def crd_schema(kind: str) -> dict:
    import dask_kubernetes

    crds = Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm" / \
        "dask-kubernetes-operator" / "crds"
    crd = yaml.safe_load((crds / f"{kind.lower()}.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return crd["spec"]["group"], version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("name,kind", [("daskcluster.yaml", "DaskCluster"),
                                       ("daskjob.yaml", "DaskJob")])
def test_dask_operator_resources_match_the_crd_schemas(name, kind):
    (doc,) = _docs(name)
    group, schema = crd_schema(kind)
    assert doc["kind"] == kind and doc["apiVersion"] == f"{group}/v1"
    jsonschema.validate(doc, schema)
    bad = {**doc, "spec": {k: v for k, v in doc["spec"].items() if k not in ("worker", "job")}}
    with pytest.raises(jsonschema.ValidationError):  # the schema does check something
        jsonschema.validate(bad, schema)


def test_helm_values_name_our_image():
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    for part in ("scheduler", "worker", "jupyter"):
        assert values[part]["image"]["repository"] == "dask-assign"
    assert values["worker"]["threads_per_worker"] == 1


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_build_the_package(name):
    lines = [ln.strip() for ln in (DEPLOY / name).read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0].startswith("FROM ")
    text = "\n".join(lines)
    assert "COPY dask_assign" in text and 'pip install ".[test]"' in text
    assert "OMP_WAIT_POLICY=passive" in text
    assert "COPY deploy/dask.yaml /etc/dask/" in text  # the workers' malloc settings
    assert ("torch==2.13.0" in text) == (name == "Dockerfile")


def test_compose_services_and_loopback_ports():
    spec = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"scheduler", "worker-1", "worker-2", "jupyter"} <= set(spec["services"])
    for service in spec["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port  # published on the host's loopback only
