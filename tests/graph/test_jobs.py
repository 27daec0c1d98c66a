"""Job specs: the shipped demo job runs as shipped, ``package:`` inputs name the package's own
data and nothing else, and a spec's own paths still may not leave its folder."""

import shutil

import pandas as pd
import pytest

from dask_assign.errors import InputError
from dask_assign.graph.jobs import load_job, package_data
from tests.conftest import DEMO
from tests.test_cli import cli

JOBS = DEMO.parents[2] / "jobs"


def test_shipped_demo_job_loads_in_place_without_allow():
    job = load_job(JOBS / "demo.yaml")
    assert job.peaks == (DEMO / "peaks.csv").resolve()
    assert job.library == (DEMO / "library.csv").resolve()
    assert job.out == (JOBS / "demo-output").resolve()  # inside jobs/, git-ignored
    ignored = (JOBS.parent / ".gitignore").read_text().split()
    assert {"demo-output/", "demo-output.partial/", "demo-output.input/"} <= set(ignored)


@pytest.mark.slow
def test_shipped_demo_job_runs_as_shipped(tmp_path):
    # The shipped spec, byte for byte, submitted with no flag (its output lands beside it).
    spec = tmp_path / "jobs" / "demo.yaml"
    spec.parent.mkdir()
    shutil.copyfile(JOBS / "demo.yaml", spec)
    res = cli("submit", spec)
    assert res.returncode == 0, res.stderr
    a = pd.read_parquet(tmp_path / "jobs" / "demo-output" / "assignments.parquet")
    peaks = pd.read_csv(DEMO / "peaks.csv", dtype={"peak_id": str})
    assert sorted(a["peak_id"]) == sorted(peaks["peak_id"])
    assert (tmp_path / "jobs" / "demo-output" / "_SUCCESS").exists()


def _spec(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


DEMO_INPUTS = "peaks: package:demo/peaks.csv\nlibrary: package:demo/library.csv\n"


@pytest.mark.parametrize("text,message", [
    ("peaks: package:../jobs.py\nlibrary: package:demo/library.csv\nout: r\n",
     "'peaks' points outside the package's data"),
    ("peaks: package:demo/../../cli.py\nlibrary: package:demo/library.csv\nout: r\n",
     "'peaks' points outside the package's data"),
    ("peaks: package:/etc/passwd\nlibrary: package:demo/library.csv\nout: r\n",
     "'peaks' points outside the package's data"),
    (DEMO_INPUTS + "out: package:demo/out\n", "'out' cannot be package data"),
    ("peaks: package:demo/none.csv\nlibrary: package:demo/library.csv\nout: r\n",
     "'peaks' file not found"),
    (DEMO_INPUTS + "out: ../elsewhere\n", "'out' points outside the allowed folders"),
])
def test_package_paths_stay_in_the_package_data(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        load_job(_spec(tmp_path, text))


def test_package_data_for_settings(tmp_path):
    job = load_job(_spec(tmp_path, DEMO_INPUTS + "out: r\nsettings:\n"
                         "  adduct_table: package:adducts.tsv\n  model: default\n"))
    assert job.config.adduct_table == str(package_data() / "adducts.tsv")
    assert job.config.scorer == load_job(_spec(tmp_path, DEMO_INPUTS + "out: r\n")).config.scorer


def test_a_spec_pointing_outside_its_folder_is_still_refused(tmp_path):
    # (tests/test_cli.py submits such a spec: exit 2, nothing written.)
    inner = tmp_path / "jobs"
    inner.mkdir()
    shutil.copyfile(DEMO / "peaks.csv", tmp_path / "peaks.csv")  # exists, but outside
    spec = inner / "job.yaml"
    spec.write_text("peaks: ../peaks.csv\nlibrary: package:demo/library.csv\nout: r\n")
    with pytest.raises(InputError, match="'peaks' points outside the allowed folders"):
        load_job(spec)
    assert load_job(spec, allow=[tmp_path]).peaks == (tmp_path / "peaks.csv").resolve()
