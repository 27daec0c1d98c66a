"""The command line, end to end, on a LocalCluster started by the command itself."""

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import DEMO


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dask_assign.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_run_end_to_end_csv(tmp_path):
    out = tmp_path / "result"
    res = cli("run", DEMO / "peaks.csv", DEMO / "library.csv", "--out", out, "--workers", "2",
              "--format", "csv", "--partition-size", "400", "--k-max", "30")
    assert res.returncode == 0, res.stderr
    assert "dashboard" in res.stdout and "http://127.0.0.1:" in res.stdout
    a = pd.read_csv(out / "assignments.csv", dtype={"peak_id": str})
    peaks = pd.read_csv(DEMO / "peaks.csv", dtype={"peak_id": str})
    assert sorted(a["peak_id"]) == sorted(peaks["peak_id"]) and a["rt"].is_monotonic_increasing
    assert a["prob"].between(0, 1).all()
    c = pd.read_csv(out / "candidates.csv")
    assert c["rank"].max() < 30
    assert (out / "_SUCCESS").exists()


def test_demo_prints_summary_and_accuracy(tmp_path):
    res = cli("demo", "--out", tmp_path / "demo", "--workers", "2")
    assert res.returncode == 0, res.stderr
    for word in ("peaks            1119", "assigned", "not in library", "mean confidence",
                 "dashboard", "known_top1=", "overall=", "ece="):
        assert word in res.stdout


@pytest.mark.parametrize("make_input,expect", [
    (lambda d: d.joinpath("p.csv").write_text("peak_id,mz,rt\na,100,1\nb,-3,2\n"),
     "p.csv: column 'mz': m/z must be positive (lines 3: -3.0)"),
    (lambda d: d.joinpath("p.csv").write_text("peak_id,mz,rt\na,100,1\na,101,2\n"),
     "duplicate peak id"),
    (lambda d: d.joinpath("p.csv").write_text(""), "is empty"),
])
def test_bad_input_fails_cleanly(tmp_path, make_input, expect):
    make_input(tmp_path)
    out = tmp_path / "out"
    res = cli("run", tmp_path / "p.csv", DEMO / "library.csv", "--out", out)
    assert res.returncode == 2
    assert expect in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_unknown_adduct_fails_before_any_work(tmp_path):
    res = cli("run", DEMO / "peaks.csv", DEMO / "library.csv", "--out", tmp_path / "o",
              "--adducts", "[M+H]+,[M+Zz]+")
    assert res.returncode == 2 and "unknown adduct(s) ['[M+Zz]+']" in res.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_submit_job_spec(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("peaks.csv", "library.csv"):
        (tmp_path / "data" / name).write_bytes((DEMO / name).read_bytes())
    job = tmp_path / "job.yaml"
    job.write_text("name: t\npeaks: data/peaks.csv\nlibrary: data/library.csv\nout: results\n"
                   "format: csv\nworkers: 2\nsettings:\n  ppm: 10\n  k_max: 30\n")
    res = cli("submit", job)
    assert res.returncode == 0, res.stderr
    a = pd.read_csv(tmp_path / "results" / "assignments.csv")
    assert len(a) == 1119
    outside = tmp_path / "escape.yaml"
    outside.write_text("peaks: ../x.csv\nlibrary: data/library.csv\nout: r\n")
    res = cli("submit", outside)
    assert res.returncode == 2 and "points outside" in res.stderr


def test_shipped_demo_job_spec_loads():
    from dask_assign.jobs import load_job

    root = DEMO.parents[2]
    job = load_job(root / "jobs" / "demo.yaml", allow=[root])
    assert job.peaks == (DEMO / "peaks.csv").resolve() and job.format == "parquet"
