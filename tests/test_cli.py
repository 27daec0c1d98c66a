"""The command line, end to end, on a LocalCluster started by the command itself."""

import gc
import json
import os
import shutil
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


def test_small_run_serves_the_dashboard_only_when_asked(tmp_path):
    """A table under 1 MiB runs in this process without the dashboard (bokeh's import would
    be a fifth of the run); ``--dashboard`` serves it, and the summary says which."""
    args = ("run", DEMO / "peaks.csv", DEMO / "library.csv", "--k-max", "30")
    quiet = cli(*args, "--out", tmp_path / "a")
    assert quiet.returncode == 0, quiet.stderr
    assert "dashboard: off" in quiet.stdout and "http://" not in quiet.stdout
    served = cli(*args, "--out", tmp_path / "b", "--dashboard")
    assert served.returncode == 0, served.stderr
    assert "dashboard        http://127.0.0.1:" in served.stdout
    for name in ("assignments", "candidates"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "b" / f"{name}.parquet"))


def test_a_run_freezes_its_imports_and_keeps_collecting(tmp_path, cli_main):
    """The stack is imported with the collector off, then frozen out of later full
    collections (by the command, and by its in-process worker); the collector is on again
    for the run's own garbage."""
    gc.unfreeze()
    code, err = cli_main(["run", DEMO / "peaks.csv", DEMO / "library.csv", "--out",
                          tmp_path / "out", "--k-max", "30"])
    assert code == 0, err
    assert gc.isenabled() and gc.get_freeze_count() > 10_000


def test_demo_prints_summary_and_accuracy(tmp_path):
    res = cli("demo", "--out", tmp_path / "demo", "--workers", "2")
    assert res.returncode == 0, res.stderr
    for word in ("peaks            1119", "assigned", "not in library", "mean confidence",
                 "dashboard", "known_top1=", "overall=", "ece="):
        assert word in res.stdout
    # The report page: written, and its path printed (what `make demo` shows).
    page = (tmp_path / "demo" / "report.html").resolve()
    assert f"report page      {page}\n" in res.stdout and page.stat().st_size > 1e6


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
    res = cli("submit", job, "--ion-cache", tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    a = pd.read_csv(tmp_path / "results" / "assignments.csv")
    assert len(a) == 1119
    assert len(list((tmp_path / "cache").glob("*.ions.pickle"))) == 1
    outside = tmp_path / "escape.yaml"
    outside.write_text("peaks: ../x.csv\nlibrary: data/library.csv\nout: r\n")
    res = cli("submit", outside)
    assert res.returncode == 2 and "points outside" in res.stderr


def test_shipped_demo_job_spec_loads():
    from dask_assign.graph.jobs import load_job

    root = DEMO.parents[2]
    job = load_job(root / "jobs" / "demo.yaml", allow=[root])
    assert job.peaks == (DEMO / "peaks.csv").resolve() and job.format == "parquet"


# What each command may touch: a folder of the user's survives byte for byte -------------

@pytest.fixture(scope="module")
def result(local_client, tmp_path_factory):
    """A real result of the demo set."""
    from dask_assign.graph.run import run

    out = tmp_path_factory.mktemp("cli") / "result"
    run(DEMO / "peaks.csv", DEMO / "library.csv", out, client=local_client)
    return out


def tree(folder):
    """Every entry under ``folder`` with its bytes: nothing written, changed or removed."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.rglob("*"))}


P, L, T = DEMO / "peaks.csv", DEMO / "library.csv", DEMO / "truth.csv"
EVERY_COMMAND = [  # (id, argv with {mine} the user's folder, the path the refusal names)
    ("run", ["run", P, L, "--out", "{mine}"], "{mine}"),
    ("run --overwrite", ["run", P, L, "--out", "{mine}", "--overwrite"], "{mine}"),
    ("run --resume", ["run", P, L, "--out", "{mine}", "--resume"], "{mine}"),
    ("run --resume --overwrite", ["run", P, L, "--out", "{mine}", "--resume", "--overwrite"],
     "{mine}"),
    ("run: OUT.partial is the user's", ["run", P, L, "--out", "{tmp}/res", "--resume",
                                        "--overwrite"], "{tmp}/res.partial"),
    ("run: OUT.input is the user's", ["run", P, L, "--out", "{tmp}/res", "--overwrite"],
     "{tmp}/res.input"),
    ("submit --overwrite", ["submit", "{tmp}/job.yaml", "--overwrite"], "{mine}"),
    ("submit --resume", ["submit", "{tmp}/job.yaml", "--resume"], "{mine}"),
    ("train --overwrite", ["train", "--set", DEMO, "--out", "{mine}", "--overwrite"], "{mine}"),
    ("demo --overwrite", ["demo", "--out", "{mine}", "--overwrite"], "{mine}"),
    ("report --out FILE", ["report", "{result}", "--out", "{mine}/notes.txt"],
     "{mine}/notes.txt"),
    ("report --out FOLDER", ["report", "{result}", "--out", "{mine}"], "{mine}"),
    ("evaluate --plot FILE", ["evaluate", "{result}", "--truth", T, "--plot",
                              "{mine}/figure.png"], "{mine}/figure.png"),
]


@pytest.mark.parametrize("argv,named", [c[1:] for c in EVERY_COMMAND],
                         ids=[c[0] for c in EVERY_COMMAND])
def test_a_folder_of_the_users_survives_every_command(result, tmp_path, cli_main, argv, named):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("two years of notes\n")
    (mine / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n my figure")
    (mine / "raw").mkdir()
    (mine / "raw" / "run1.mzML").write_bytes(bytes(range(256)) * 64)
    for beside in (".partial", ".input"):  # the user's, under the name of a folder of ours
        if named.endswith(beside):
            (tmp_path / f"res{beside}").mkdir()
            (tmp_path / f"res{beside}" / "keep.txt").write_text("mine")
    (tmp_path / "job.yaml").write_text(f"peaks: {P}\nlibrary: {L}\nout: mine\n")
    res = tmp_path / "result"
    shutil.copytree(result, res)
    fill = {"mine": mine, "tmp": tmp_path, "result": res}
    before = tree(tmp_path)
    code, err = cli_main([str(a).format(**fill) for a in argv + (
        ["--allow", DEMO.parent] if argv[0] == "submit" else [])])
    assert code == 2
    assert err.startswith(f"dask-assign: error: {named.format(**fill)}: "), err
    assert err.count("\n") == 1, err
    assert tree(tmp_path) == before  # nothing written, nothing removed


@pytest.mark.slow
def test_overwrite_replaces_only_the_files_dask_assign_wrote(result, tmp_path):
    from dask_assign.files import lock_path, replaced_path
    from dask_assign.report import write_report

    out = tmp_path / "result"
    shutil.copytree(result, out)
    write_report(out)  # the package's own report of the old result: replaced as well
    (out / "notes.txt").write_text("what I saw in this run\n")
    (out / "raw").mkdir()
    (out / "raw" / "run1.mzML").write_bytes(bytes(range(256)) * 64)
    (out / "latest").symlink_to("notes.txt")
    mine = {p: (p.read_bytes(), p.stat().st_ino) for p in (out / "notes.txt",
                                                           out / "raw" / "run1.mzML")}
    old_files = set(json.loads((out / "manifest.json").read_text())["files"])
    res = cli("run", DEMO / "peaks.csv", DEMO / "library.csv", "--out", out, "--workers", "1",
              "--format", "csv", "--overwrite")
    assert res.returncode == 0, res.stderr
    new_files = json.loads((out / "manifest.json").read_text())["files"]
    assert new_files == sorted(["_SUCCESS", "assignments.csv", "calibration.json",
                                "candidates.csv", "context.json", "manifest.json"])
    assert sorted(os.listdir(out)) == sorted([*new_files, "notes.txt", "raw", "latest"])
    assert {"assignments.parquet", "candidates.parquet"} <= old_files  # gone now, with the report
    for path, (data, inode) in mine.items():  # the same files, not copies
        assert path.read_bytes() == data and path.stat().st_ino == inode
    assert os.readlink(out / "latest") == "notes.txt"
    assert len(pd.read_csv(out / "assignments.csv")) == 1119
    assert sorted(os.listdir(tmp_path)) == ["result"]  # no .partial, .input, .replaced, lock
    assert not replaced_path(out).exists() and not lock_path(out).exists()


@pytest.mark.slow
def test_two_runs_started_at_once_leave_one_complete_result(tmp_path):
    out = tmp_path / "result"
    args = [sys.executable, "-m", "dask_assign.cli", "run", str(DEMO / "peaks.csv"),
            str(DEMO / "library.csv"), "--out", str(out), "--workers", "1"]
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], errs
    loser = errs[codes.index(2)]
    # Refused while the other one ran (its lock), or after it (its finished result).
    assert loser.count("\n") == 1 and loser.startswith(f"dask-assign: error: {out}: ")
    assert "another dask-assign command is writing it" in loser or "--overwrite" in loser
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(os.listdir(out)) == manifest["files"]
    assert len(pd.read_parquet(out / "assignments.parquet")) == 1119
    assert sorted(os.listdir(tmp_path)) == ["result"]


FLAG_CASES = [  # an option out of range is named by its flag, as the user wrote it
    (["--k-max", "0"], "--k-max: must be at least 1, not 0"),
    (["--ppm", "0"], "--ppm: must be above 0 and below 100000, not 0.0"),
    (["--rt-window", "-1"], "--rt-window: must be positive, not -1.0"),
    (["--partition-size", "0"], "--partition-size: must be at least 1, not 0"),
    (["--block-pairs", "-5"], "--block-pairs: must be at least 1, not -5"),
    (["--max-coelution", "0"], "--max-coelution: must be positive, not 0.0"),
    (["--workers", "0"], "--workers: must be at least 1, not 0"),
]


@pytest.mark.parametrize("extra,message", FLAG_CASES, ids=[c[0][0] for c in FLAG_CASES])
def test_an_option_out_of_range_is_named_by_its_flag(tmp_path, cli_main, extra, message):
    code, err = cli_main(["run", P, L, "--out", tmp_path / "out", *extra])
    assert code == 2 and err == f"dask-assign: error: {message}\n"
    assert os.listdir(tmp_path) == []


def test_a_second_run_reads_the_ion_table_from_the_cache(tmp_path, cli_main, monkeypatch):
    """``--ion-cache DIR`` keeps the library's ion table; the next run reads it back and
    writes the same result; ``off`` keeps none; without the option, the environment's
    folder."""
    from dask_assign.filtering import ion_cache

    args = ["run", DEMO / "peaks.csv", DEMO / "library.csv", "--k-max", "30"]
    from dask_assign.filtering import space

    cache = tmp_path / "cache"
    code, err = cli_main([*args, "--out", tmp_path / "a", "--ion-cache", cache])
    assert code == 0, err
    with monkeypatch.context() as m:  # the second run must not build the table
        m.setattr(space, "build_ions", lambda *a, **k: pytest.fail("table built again"))
        code, err = cli_main([*args, "--out", tmp_path / "b", "--ion-cache", cache])
    assert code == 0, err
    assert len(ion_cache.entries(cache)) == 1
    for name in ("assignments", "candidates"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "b" / f"{name}.parquet"))
    monkeypatch.setenv(ion_cache.CACHE_ENV, str(tmp_path / "from-env"))
    code, err = cli_main([*args, "--out", tmp_path / "c", "--ion-cache", "off"])
    assert code == 0, err
    assert not (tmp_path / "from-env").exists()
    code, err = cli_main([*args, "--out", tmp_path / "d"])
    assert code == 0, err
    assert len(ion_cache.entries(tmp_path / "from-env")) == 1
