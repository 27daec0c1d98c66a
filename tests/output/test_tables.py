"""What a run may touch on disk: refusals, the switch of a new result into place (killed at
every step), the lock, the package's own working folders and single files.

Results are real runs of the demo set on the shared LocalCluster. A kill is a real one: the
commit runs in a forked process that ends itself with ``os._exit`` at its k-th change to the
filesystem (counted by a Python audit hook), for every k until the commit completes.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib
import pytest

from dask_assign.config import AssignConfig
from dask_assign.errors import InputError
from dask_assign.files import (
    BUSY,
    LOCK_TEXT,
    OWN_MARKER,
    claim,
    fresh_own_folder,
    is_marked,
    is_own_folder,
    lock_path,
    replaced_path,
    result_files,
    staging_path,
)
from dask_assign.graph.run import run
from dask_assign.output.tables import commit
from tests.conftest import DEMO

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[2]
#: Entries of the user's put into a result folder (a file, a folder, a symbolic link).
USER = {"notes.txt": b"my notes\n", "raw/run1.mzML": b"<mzML>" + bytes(range(256)) * 40}


@pytest.fixture(scope="module")
def results(local_client, tmp_path_factory):
    """Two real results of the demo set: ``old`` (Parquet) and ``new`` (CSV, other ppm)."""
    base = tmp_path_factory.mktemp("results")
    run(DEMO / "peaks.csv", DEMO / "library.csv", base / "old", client=local_client)
    run(DEMO / "peaks.csv", DEMO / "library.csv", base / "new", AssignConfig(ppm=8),
        client=local_client, fmt="csv")
    return base / "old", base / "new"


@pytest.fixture(scope="module")
def dataset(local_client, tmp_path_factory):
    """A real result of the demo set as table folders, in 3 partitions."""
    out = tmp_path_factory.mktemp("dataset") / "out"
    run(DEMO / "peaks.csv", DEMO / "library.csv", out, AssignConfig(partition_size=400),
        client=local_client, fmt="parquet-dataset")
    return out


def add_user_files(folder: Path):
    for name, data in USER.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    os.symlink("notes.txt", folder / "latest")


def state(folder: Path) -> dict | None:
    """Every entry under ``folder``: bytes of files, targets of links; manifests parsed."""
    if not folder.exists():
        return None
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        elif path.name == "manifest.json":
            out[rel] = json.loads(path.read_text())
        else:
            out[rel] = path.read_bytes()
    return out


def tree(folder: Path) -> dict:
    """Every entry under ``folder`` (the tmp folder of a test), with bytes: to show nothing
    was written, changed or removed."""
    return {str(p.relative_to(folder)): (os.readlink(p) if p.is_symlink() else
                                         None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def user_state(folder: Path) -> dict:
    return {k: v for k, v in state(folder).items()
            if k.split("/")[0] in {"notes.txt", "raw", "latest"}}


# A kill at every step of the commit -------------------------------------------------------

KILLED = 57
#: Audit events that change the filesystem (``open`` only when it opens for writing).
CHANGES = {"open", "os.rename", "os.link", "os.remove", "os.rmdir", "os.mkdir", "os.symlink",
           "os.chmod", "os.utime", "os.truncate", "shutil.rmtree", "ctypes.call_function"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _changes(event, args) -> bool:
    if event != "open":
        return event in CHANGES
    mode, flags = args[1], args[2]
    if isinstance(flags, int) and flags & WRITE_FLAGS:
        return True
    return isinstance(mode, str) and any(c in mode for c in "wax+")


def kill_driver(cases: str, old: str, new: str, exchange: str):
    """Run in a child process: for k = 1, 2, ..., copy the old result to ``cases/k/out``,
    stage the new one beside it, and commit in a forked process killed at its k-th change."""
    cases, old, new = Path(cases), Path(old), Path(new)
    if exchange == "no":  # a kernel or filesystem without renameat2(RENAME_EXCHANGE)
        import dask_assign.files

        dask_assign.files._exchange = lambda a, b: False
    manifest = json.loads((new / "manifest.json").read_text())
    del manifest["files"]
    for k in range(1, 1000):
        case = cases / f"{k:03d}"
        out = case / "out"
        shutil.copytree(old, out, symlinks=True)
        staging = fresh_own_folder(staging_path(out))
        for f in os.listdir(new):
            if (new / f).is_dir():
                shutil.copytree(new / f, staging / f)
            elif f not in ("manifest.json", "_SUCCESS"):
                shutil.copy2(new / f, staging / f)
        (case / "inode").write_text(str(os.stat(out / "notes.txt").st_ino))
        pid = os.fork()
        if pid == 0:
            count = 0

            def hook(event, args, k=k):
                nonlocal count
                if _changes(event, args):
                    count += 1
                    if count == k:
                        os._exit(KILLED)

            try:
                sys.addaudithook(hook)
                commit(staging, out, manifest)
            except BaseException:
                import traceback

                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == 0:
            (case / "completed").touch()
            return
        assert code == KILLED, code


@pytest.mark.parametrize("kinds,exchange", [(("parquet", "csv"), "yes"),
                                            (("parquet", "csv"), "no"),
                                            (("dataset", "csv"), "yes"),
                                            (("parquet", "dataset"), "no")],
                         ids=["file-to-csv", "file-to-csv-no-exchange", "folder-to-csv",
                              "file-to-folder-no-exchange"])
def test_a_kill_at_any_step_of_the_commit_leaves_the_old_or_the_new_result(results, dataset,
                                                                            tmp_path, kinds,
                                                                            exchange):
    # Table folders (``parquet-dataset``) replaced by files and files by table folders.
    made = {"parquet": results[0], "csv": results[1], "dataset": dataset}
    old, new = (made[k] for k in kinds)
    template = tmp_path / "template"
    shutil.copytree(old, template)
    add_user_files(template)
    from dask_assign.report import write_report

    write_report(template)  # a report of the old result: the package's file, replaced too
    cases = tmp_path / "cases"
    res = subprocess.run([sys.executable, "-c", "import sys; from tests.output.test_tables import "
                          "kill_driver; kill_driver(*sys.argv[1:])", str(cases), str(template),
                          str(new), exchange], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    old_state, new_state = state(template), {**state(new), **user_state(template)}
    assert "report.html" in old_state and "report.html" not in new_state
    seen = []
    for case in sorted(cases.iterdir()):
        out = case / "out"
        got = state(out)
        if got is None:  # killed between the two renames of the fallback: nothing at out...
            assert exchange == "no"
            assert state(replaced_path(out)) == old_state  # ...but the old one whole
        else:
            assert got in (old_state, new_state), case.name
        seen.append("old" if got == old_state else "new" if got == new_state else "moved")
        if (case / "completed").exists():
            assert got == new_state
        # The next command on out finishes the commit's leftovers and leaves the result.
        with claim(out, overwrite=True):
            pass
        after = state(out)
        assert after == (old_state if got is None else got)
        assert os.stat(out / "notes.txt").st_ino == int((case / "inode").read_text())
        assert not replaced_path(out).exists()
        assert not lock_path(out).exists()
        staging = staging_path(out)
        assert not staging.exists() or is_own_folder(staging)
        fresh_own_folder(staging)  # what the next run does with its own staging
        assert state(out) == after
    # Killed before the switch, after it, and (fallback) between its two renames.
    assert {"old", "new"} <= set(seen) and len(seen) > 15, seen
    assert ("moved" in seen) == (exchange == "no")
    assert (cases / f"{len(seen):03d}" / "completed").exists()


# Refusals: one line naming the path, nothing written ------------------------------------

def _foreign_folder(out):
    out.mkdir()
    (out / "thesis.docx").write_bytes(b"chapter 1")


def _a_file(out):
    out.write_text("not a folder")


def _earlier(results):
    def make(out):
        shutil.copytree(results[0], out)
        add_user_files(out)
    return make


def _clash(results):
    def make(out):
        _earlier(results)(out)
        (out / "assignments.csv").write_text("peak_id\nmine\n")  # the user's, named like ours
    return make


def _beside(suffix):
    def make(out):
        (out.parent / (out.name + suffix)).mkdir()
        (out.parent / (out.name + suffix) / "keep.txt").write_text("mine")
    return make


REFUSALS = [
    ("a folder of the user's", _foreign_folder, True, "is not empty and is not a dask-assign "
     "result", "out"),
    ("a file", _a_file, True, "is not a folder", "out"),
    ("an earlier result, no --overwrite", "earlier", False, "holds an earlier dask-assign "
     "result; give --overwrite", "out"),
    ("a file of the user's under a result's name", "clash", True, "needs its name",
     "out/assignments.csv"),
    ("OUT.partial of the user's", _beside(".partial"), True, "was not made by dask-assign",
     "out.partial"),
    ("OUT.input of the user's", _beside(".input"), True, "was not made by dask-assign",
     "out.input"),
    ("OUT.replaced of the user's", _beside(".replaced"), True, "was not made by dask-assign",
     "out.replaced"),
]


@pytest.mark.parametrize("case,make,overwrite,message,named", REFUSALS,
                         ids=[c[0] for c in REFUSALS])
def test_refusals_name_the_path_and_write_nothing(results, tmp_path, case, make, overwrite,
                                                  message, named):
    out = tmp_path / "out"
    make = {"earlier": _earlier(results), "clash": _clash(results)}.get(make, make)
    make(out)
    before = tree(tmp_path)
    with pytest.raises(InputError) as err, claim(out, overwrite=overwrite):
        pytest.fail("claimed")
    text = str(err.value)
    assert text.startswith(str(tmp_path / named) + ": ") and message in text, text
    assert "\n" not in text
    assert tree(tmp_path) == before


def test_an_earlier_result_may_be_claimed_with_overwrite(results, tmp_path):
    out = tmp_path / "out"
    _earlier(results)(out)
    before = tree(tmp_path)
    with claim(out, overwrite=True) as claimed:
        assert claimed == out and lock_path(out).exists()
    assert tree(tmp_path) == before and not lock_path(out).exists()


def test_the_manifest_lists_the_files_and_older_results_are_recognised(results, tmp_path):
    old, new = results
    for folder in (old, new):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["files"] == sorted(os.listdir(folder))
        assert result_files(folder) == set(os.listdir(folder))
    legacy = tmp_path / "legacy"  # a result written before the manifest listed its files
    shutil.copytree(old, legacy)
    manifest = json.loads((legacy / "manifest.json").read_text())
    del manifest["files"]
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    add_user_files(legacy)
    assert result_files(legacy) == set(os.listdir(old))
    # A manifest never names a file outside its folder.
    manifest["files"] = ["../old/notes.txt", "/etc/passwd", "assignments.parquet"]
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    assert result_files(legacy) == {"assignments.parquet", "manifest.json", "_SUCCESS"}
    assert result_files(tmp_path) is None


# Table folders (``--format parquet-dataset``) --------------------------------------------

def test_table_folders_hold_the_rows_of_the_combined_files(results, dataset):
    import dask.dataframe as dd
    import pandas as pd

    manifest = json.loads((dataset / "manifest.json").read_text())
    n = manifest["summary"]["partitions"]
    assert n == 3 and manifest["files"] == sorted(os.listdir(dataset))
    assert result_files(dataset) == set(os.listdir(dataset))
    for name in ("assignments", "candidates"):
        folder = dataset / f"{name}.parquet"
        assert sorted(os.listdir(folder)) == [f"part.{i:05d}.parquet" for i in range(n)]
        # The same rows, order and dtypes as the one file of a run in other partitions.
        combined = pd.read_parquet(results[0] / f"{name}.parquet")
        pd.testing.assert_frame_equal(pd.read_parquet(folder), combined)
        lazy = dd.read_parquet(folder)
        assert lazy.npartitions == n
        pd.testing.assert_frame_equal(lazy.compute().reset_index(drop=True), combined,
                                      check_dtype=False)


def test_a_file_of_the_users_in_a_table_folder_is_kept(dataset, local_client, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    (out / "assignments.parquet" / "mine.txt").write_text("mine")
    run(DEMO / "peaks.csv", DEMO / "library.csv", out, client=local_client, overwrite=True)
    assert (out / "assignments.parquet").is_file() and (out / "candidates.parquet").is_file()
    # The old result keeps the folder with the user's file (its part files gone), and says so.
    kept = staging_path(out)
    assert sorted(os.listdir(kept)) == ["assignments.parquet", "manifest.json"]
    assert os.listdir(kept / "assignments.parquet") == ["mine.txt"]
    assert (kept / "assignments.parquet" / "mine.txt").read_text() == "mine"
    assert f"{kept}: kept, it holds ['assignments.parquet']" in caplog.text


def test_a_table_folder_renamed_before_a_kill_is_not_renamed_again(dataset, tmp_path):
    from dask_assign.output.tables import combine_parts

    staging = tmp_path / "staging"  # all partitions written; killed after the first rename
    (staging / "parts").mkdir(parents=True)
    (staging / "fingerprint.json").write_text("{}")
    shutil.copytree(dataset / "assignments.parquet", staging / "assignments.parquet")
    shutil.copytree(dataset / "candidates.parquet", staging / "candidates")
    (staging / "candidates" / "part.00001.parquet.tmp").write_bytes(b"half a file")
    combine_parts(staging, "parquet-dataset")
    assert sorted(os.listdir(staging)) == ["assignments.parquet", "candidates.parquet"]
    for name in ("assignments.parquet", "candidates.parquet"):
        assert state(staging / name) == state(dataset / name)


# The lock -------------------------------------------------------------------------------

def test_the_lock_admits_one_command_and_is_removed_after(tmp_path):
    out = tmp_path / "out"
    refused = []
    with claim(out):
        with claim(out):  # the same thread again (the CLI, then its pipeline)
            pass
        assert lock_path(out).exists()

        def other():
            try:
                with claim(out):
                    pass
            except InputError as err:
                refused.append(str(err))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert refused == [f"{out}: {BUSY}"]
    assert os.listdir(tmp_path) == []


def test_a_stale_lock_is_reused_and_a_file_of_the_users_is_not(tmp_path):
    out = tmp_path / "out"
    lock_path(out).write_bytes(LOCK_TEXT)  # left by a killed command
    with claim(out):
        pass
    assert os.listdir(tmp_path) == []
    lock_path(out).write_text("my own file, oddly named")
    with pytest.raises(InputError, match="was not made by dask-assign"), claim(out):
        pass
    assert lock_path(out).read_text() == "my own file, oddly named"


# The package's working folders and single files -----------------------------------------

def test_read_peaks_empties_only_its_own_workdir(tmp_path):
    from dask_assign.io.peaks import read_peaks

    work = tmp_path / "work"
    work.mkdir()
    (work / "data.csv").write_text("mine")
    with pytest.raises(InputError, match="was not made by dask-assign"):
        read_peaks(DEMO / "peaks.csv", workdir=work)
    assert tree(tmp_path) == {"work": None, "work/data.csv": b"mine"}
    (work / "data.csv").unlink()
    assert len(read_peaks(DEMO / "peaks.csv", workdir=work, partition_size=400)) == 1119
    first = sorted(os.listdir(work))
    assert OWN_MARKER in first and "part.00002.parquet" in first
    read_peaks(DEMO / "peaks.csv", workdir=work)  # its own: emptied and written again
    assert sorted(os.listdir(work)) == [OWN_MARKER, "part.00000.parquet"]


def test_single_files_are_replaced_only_when_the_package_wrote_them(results, tmp_path):
    import matplotlib.pyplot as plt
    import pandas as pd

    from dask_assign.report import write_report
    from dask_assign.report.evaluate import reliability_png

    old, _ = results
    page = write_report(old, tmp_path / "r.html")
    assert is_marked(page)
    write_report(old, page)  # an earlier report: replaced
    a = pd.read_parquet(old / "assignments.parquet")
    truth = pd.read_csv(DEMO / "truth.csv", dtype=str)
    png = tmp_path / "r.png"
    reliability_png(a, truth, png)
    assert is_marked(png)
    reliability_png(a, truth, png)
    fig, ax = plt.subplots()
    fig.savefig(tmp_path / "mine.png")  # a plot of the user's: no mark
    plt.close(fig)
    (tmp_path / "mine.html").write_text("<html><head></head>my page</html>")
    (tmp_path / "folder").mkdir()
    before = tree(tmp_path)
    for write, target in ((lambda p: write_report(old, p), "mine.html"),
                          (lambda p: reliability_png(a, truth, p), "mine.png"),
                          (lambda p: write_report(old, p), "folder")):
        with pytest.raises(InputError) as err:
            write(tmp_path / target)
        assert str(err.value).startswith(f"{tmp_path / target}: ")
    assert tree(tmp_path) == before
