"""The HTML report: written from a real run, rendered in headless Chromium without errors."""

import os
import re
import shutil
import subprocess

import pytest

from dask_assign.config import AssignConfig
from dask_assign.pipeline import run
from dask_assign.report import write_report
from tests.conftest import DEMO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# In CI the browser is part of the set-up (make test installs it): never skip there.
needs_browser = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                   reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def result(local_client, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    run(DEMO / "peaks.csv", DEMO / "library.csv", out, AssignConfig(partition_size=400),
        client=local_client)
    return out


def test_report_has_every_section(result, tmp_path):
    page = write_report(result, tmp_path / "r.html", truth=DEMO / "truth.csv").read_text()
    for title in ("Mass error against m/z", "RT residual against RT", "Confidence histogram",
                  "Counts by adduct and isotope", "Reliability diagram", "Against the truth"):
        assert f"<h2>{title}</h2>" in page
    assert page.count('src="data:image/png;base64,') == 5  # self-contained: no links out
    assert "http://" not in page and "https://" not in page
    no_truth = write_report(result, tmp_path / "n.html").read_text()
    assert "Reliability diagram" not in no_truth and no_truth.count("data:image/png") == 4


@needs_browser
def test_report_renders_in_headless_chromium_without_console_errors(result, tmp_path):
    page = write_report(result, tmp_path / "r.html", truth=DEMO / "truth.csv")
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
            "--v=0", "--virtual-time-budget=5000"]
    res = subprocess.run(args + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    dom = res.stdout
    assert 'data-ready="1"' in dom  # the page's script ran to its end
    assert len(re.findall(r"<tr><td>\[M\+H\]\+</td>", dom)) == 1  # and filled the table
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == [], console
    shot = tmp_path / "report.png"
    subprocess.run(args + [f"--screenshot={shot}", "--window-size=1100,1600", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000


def test_report_cli(result, tmp_path):
    res = subprocess.run([os.sys.executable, "-m", "dask_assign.cli", "report", str(result),
                          "--truth", str(DEMO / "truth.csv"), "--out", str(tmp_path / "x.html")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "x.html").stat().st_size > 50_000
    res = subprocess.run([os.sys.executable, "-m", "dask_assign.cli", "evaluate", str(result),
                          "--truth", str(DEMO / "truth.csv"), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and '"overall": 0.93' in res.stdout
