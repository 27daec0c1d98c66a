"""Bad input, tried systematically over every reader: peaks, library, adduct table, job spec.

Each case is either handled as documented (the `handled` cases, checked by what they yield) or
refused with an InputError naming the file, the column and the first bad lines. A sample of
the refusals also goes through the CLI: exit code 2, one line, nothing written.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dask_assign.chemistry.adducts import select_adducts
from dask_assign.config import AssignConfig, ScorerParams
from dask_assign.errors import InputError
from dask_assign.graph.jobs import load_job
from dask_assign.io.library import read_library
from dask_assign.io.peaks import load_peaks, read_peaks
from tests.conftest import DEMO

HEAD = "peak_id,mz,rt,intensity\n"

# (case, file name, content, expected: ("error", column, pattern) or ("ok", check))
PEAK_CASES = [
    ("wrong delimiter (semicolon) is sniffed", "p.csv",
     "peak_id;mz;rt\na;100.5;1.5\n", ("ok", lambda f: f["mz"].tolist() == [100.5])),
    ("tab in a .csv is sniffed", "p.csv", "peak_id\tmz\trt\na\t100.5\t1.5\n",
     ("ok", lambda f: f["mz"].tolist() == [100.5])),
    ("pipe delimiter is refused", "p.csv", "peak_id|mz|rt\na|100|1\n",
     ("error", None, r"missing column\(s\) \['mz', 'rt'\]")),
    ("UTF-8 byte-order mark", "p.csv", "\ufeffpeak_id,mz,rt\na,100.5,1.5\n",
     ("ok", lambda f: f["peak_id"].tolist() == ["a"])),
    ("decimal commas are refused with the line", "p.csv", "peak_id;mz;rt\na;100,5;1,5\n",
     ("error", "'mz'", r"not a number \(lines 2: '100,5'\)")),
    ("quoted numbers", "p.csv", 'peak_id,mz,rt\n"a","100.5","1.5"\n',
     ("ok", lambda f: f["mz"].tolist() == [100.5])),
    ("missing column", "p.csv", "peak_id,rt\na,1\n", ("error", None, r"\['mz'\]")),
    ("duplicated column", "p.csv", "peak_id,mz,mz,rt\na,1,2,3\n",
     ("error", None, r"duplicated column names \['mz'\]")),
    ("NaN m/z", "p.csv", HEAD + "a,100,1,5\nb,NaN,1,5\n", ("error", "'mz'", r"missing value \(lines 3\)")),
    ("inf m/z", "p.csv", HEAD + "a,inf,1,5\n", ("error", "'mz'", r"infinite value \(lines 2\)")),
    ("negative m/z", "p.csv", HEAD + "a,-100,1,5\n", ("error", "'mz'", r"must be positive \(lines 2: -100")),
    ("zero m/z", "p.csv", HEAD + "a,0,1,5\n", ("error", "'mz'", r"must be positive \(lines 2: 0")),
    ("m/z beyond 5000 is kept (warned)", "p.csv", HEAD + "a,6000,1,5\n",
     ("ok", lambda f: f["mz"].tolist() == [6000.0])),
    ("negative RT", "p.csv", HEAD + "a,100,-1,5\n", ("error", "'rt'", "must not be negative")),
    ("negative intensity", "p.csv", HEAD + "a,100,1,-5\n", ("error", "'intensity'", "negative")),
    ("RT in seconds is inferred", "p.csv", HEAD + "a,100,90,5\nb,101,600,5\n",
     ("ok", lambda f: f["rt"].tolist() == [1.5, 10.0])),
    ("duplicate ids", "p.csv", HEAD + "a,100,1,5\nb,101,1,5\na,102,1,5\n",
     ("error", "'peak_id'", r"duplicate peak id \(lines 2: 'a', 4: 'a'\)")),
    ("missing id", "p.csv", HEAD + "a,100,1,5\n,101,1,5\n", ("error", "'peak_id'", "missing peak id")),
    ("empty file", "p.csv", "", ("error", None, "is empty")),
    ("header only", "p.csv", HEAD, ("error", None, "header but no rows")),
    ("blank intensity is allowed", "p.csv", HEAD + "a,100,1,\n",
     ("ok", lambda f: np.isnan(f["intensity"].iloc[0]))),
    ("no id column: numbered", "p.csv", "mz,rt\n100,1\n101,2\n",
     ("ok", lambda f: f["peak_id"].tolist() == ["1", "2"])),
    ("damaged parquet", "p.parquet", "not parquet", ("error", None, "cannot read Parquet")),
    ("missing file", None, None, ("error", None, "not found")),
]


def _write(tmp_path, name, content):
    path = tmp_path / (name or "absent.csv")
    if content is not None:
        path.write_bytes(content.encode("utf-8"))
    return path


def _expect(call, path, expected):
    if expected[0] == "ok":
        assert expected[1](call(path))
        return
    _, column, pattern = expected
    with pytest.raises(InputError) as err:
        call(path)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert re.search(pattern, msg), msg
    if column:
        assert f"column {column}" in msg, msg


@pytest.mark.parametrize("case,name,content,expected", PEAK_CASES, ids=[c[0] for c in PEAK_CASES])
def test_peak_reader(tmp_path, case, name, content, expected):
    _expect(load_peaks, _write(tmp_path, name, content), expected)


def test_duplicate_ids_across_chunks_are_found(tmp_path):
    """Streaming keeps id hashes across chunks: a repeat far apart is still found."""
    n = 1_200_000  # more than one read chunk
    ids = np.arange(n).astype(str).astype(object)
    ids[-1] = "7"
    frame = pd.DataFrame({"peak_id": ids, "mz": 100.0 + np.arange(n) * 1e-4, "rt": 1.0})
    path = tmp_path / "big.parquet"
    frame.to_parquet(path)
    with pytest.raises(InputError, match=r"duplicate peak id \(rows 8: '7', 1200000: '7'\)"):
        read_peaks(path, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()  # nothing half-written


LIB_HEAD = "compound_id,name,formula,monoisotopic_mass,rt\n"
LIB_CASES = [
    ("unparsable formula", LIB_HEAD + "c1,a,C6H12O6,,1\nc2,b,C6H12Q,,1\n",
     ("error", "'formula'", r"unparsable formula.*\(lines 3: 'C6H12Q'\)")),
    ("charged formula is a permanent ion", LIB_HEAD + "c1,choline,C5H14NO+,,1\n",
     ("ok", lambda lib: lib["charge"].tolist() == [1])),
    ("isotope-labelled formula", LIB_HEAD + "c1,glc13,[13C]6H12O6,,1\n",
     ("ok", lambda lib: abs(lib["monoisotopic_mass"].iloc[0] - 186.0835) < 1e-3
      and lib["n_C"].iloc[0] == 0)),
    ("library without RT", "compound_id,formula\nc1,C6H12O6\n",
     ("ok", lambda lib: lib["rt"].isna().all())),
    ("mass only", "compound_id,monoisotopic_mass\nc1,180.0634\n",
     ("ok", lambda lib: lib["formula"].isna().all())),
    ("neither formula nor mass", LIB_HEAD + "c1,a,,,1\n", ("error", None, "neither a formula")),
    ("negative mass", "compound_id,monoisotopic_mass\nc1,-3\n",
     ("error", "'monoisotopic_mass'", "must be positive")),
    ("duplicate compound ids", LIB_HEAD + "c1,a,C6H12O6,,1\nc1,b,C2H6O,,2\n",
     ("error", "'compound_id'", "duplicate compound id")),
    ("non-numeric RT", LIB_HEAD + "c1,a,C6H12O6,,late\n", ("error", "'rt'", "not a number")),
    ("missing id column", "name,formula\na,C6H12O6\n", ("error", None, r"\['compound_id'\]")),
    ("empty library", "", ("error", None, "is empty")),
    ("header-only library", LIB_HEAD, ("error", None, "header but no rows")),
    ("semicolon library", "compound_id;formula\nc1;C6H12O6\n",
     ("ok", lambda lib: lib["compound_id"].tolist() == ["c1"])),
]


@pytest.mark.parametrize("case,content,expected", LIB_CASES, ids=[c[0] for c in LIB_CASES])
def test_library_reader(tmp_path, case, content, expected):
    _expect(read_library, _write(tmp_path, "lib.csv", content), expected)


ADDUCT_HEAD = "name\tmode\tmult\tadd\tsub\tcharge\tprior\n"
ADDUCT_CASES = [
    ("bad formula", ADDUCT_HEAD + "[M+Q]+\tpositive\t1\tQq\t-\t1\t1\n",
     ("error", "'add'", r"lines? ?1|rows 1")),
    ("missing columns", "name\tcharge\n[M+H]+\t1\n", ("error", None, "missing columns")),
    ("duplicate names", ADDUCT_HEAD + "[M+H]+\tpositive\t1\tH\t-\t1\t1\n"
     "[M+H]+\tpositive\t1\tH\t-\t1\t1\n", ("error", "'name'", "duplicate adduct")),
    ("zero charge", ADDUCT_HEAD + "[M]\tpositive\t1\t-\t-\t0\t1\n", ("error", None, "charge != 0")),
    ("non-numeric prior", ADDUCT_HEAD + "[M+H]+\tpositive\t1\tH\t-\t1\thigh\n",
     ("error", None, "must be numbers")),
    ("empty table", "", ("error", None, "is empty")),
    ("no rows for the mode", ADDUCT_HEAD + "[M-H]-\tnegative\t1\t-\tH\t-1\t1\n",
     ("error", None, "no adducts for mode 'positive'")),
]


@pytest.mark.parametrize("case,content,expected", ADDUCT_CASES, ids=[c[0] for c in ADDUCT_CASES])
def test_adduct_table_reader(tmp_path, case, content, expected):
    _expect(lambda p: select_adducts("positive", None, str(p)),
            _write(tmp_path, "adducts.tsv", content), expected)


def test_unknown_adduct_name():
    with pytest.raises(InputError, match=r"unknown adduct\(s\) \['\[M\+Qq\]\+'\]"):
        select_adducts("positive", ["[M+Qq]+"])


def _job(tmp_path, text):
    (tmp_path / "data").mkdir(exist_ok=True)
    for name in ("peaks.csv", "library.csv"):
        (tmp_path / "data" / name).write_bytes((DEMO / name).read_bytes())
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


GOOD = "peaks: data/peaks.csv\nlibrary: data/library.csv\nout: results\n"
JOB_CASES = [
    ("valid", GOOD, ("ok", lambda job: job.out.name == "results")),
    ("input outside the folder", "peaks: ../peaks.csv\nlibrary: data/library.csv\nout: r\n",
     ("error", None, "'peaks' points outside the allowed folders")),
    ("absolute input path", "peaks: /etc/passwd\nlibrary: data/library.csv\nout: r\n",
     ("error", None, "'peaks' points outside")),
    ("output outside the folder", "peaks: data/peaks.csv\nlibrary: data/library.csv\n"
     "out: ../../elsewhere\n", ("error", None, "'out' points outside")),
    ("unknown key", GOOD + "command: rm -rf /\n", ("error", None, r"unknown key\(s\) \['command'\]")),
    ("unknown setting", GOOD + "settings:\n  eval: 1\n", ("error", None, r"unknown setting")),
    ("wrong setting type", GOOD + "settings:\n  ppm: ten\n", ("error", None, "'ppm' must be float")),
    ("bad setting value", GOOD + "settings:\n  mode: neutral\n",
     ("error", None, "setting 'mode': must be 'positive' or 'negative', not 'neutral'")),
    ("setting out of range, named by its key", GOOD + "settings:\n  k_max: 0\n",
     ("error", None, "setting 'k_max': must be at least 1, not 0$")),
    ("python object tag", GOOD + "name: !!python/object/apply:os.system ['true']\n",
     ("error", None, "not valid YAML")),
    ("not a mapping", "- a\n- b\n", ("error", None, "a mapping")),
    ("missing input file", "peaks: data/none.csv\nlibrary: data/library.csv\nout: r\n",
     ("error", None, "'peaks' file not found")),
    ("bad format", GOOD + "format: xlsx\n", ("error", None, "'format' must be")),
    ("untrained scorer", GOOD + "settings:\n  model: none\n",
     ("ok", lambda job: job.config.scorer == ScorerParams())),
    ("default model", GOOD + "settings:\n  model: default\n",
     ("ok", lambda job: job.config.scorer == AssignConfig().scorer == ScorerParams())),
    ("model outside the folder", GOOD + "settings:\n  model: /tmp\n",
     ("error", None, "'model' points outside")),
    ("model that is not one", GOOD + "settings:\n  model: data\n",
     ("error", None, "not a model folder")),
]


@pytest.mark.parametrize("case,text,expected", JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_job_spec_reader(tmp_path, case, text, expected):
    _expect(load_job, _job(tmp_path, text), expected)


def test_job_spec_symlink_cannot_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("peak_id,mz,rt\na,100,1\n")
    inner = tmp_path / "job"
    inner.mkdir()
    (inner / "link.csv").symlink_to(outside / "secret.csv")
    path = _job(inner, "peaks: link.csv\nlibrary: data/library.csv\nout: r\n")
    with pytest.raises(InputError, match="'peaks' points outside"):
        load_job(path)
    assert load_job(path, allow=[outside]).peaks == (outside / "secret.csv").resolve()


CLI_CASES = [c for c in PEAK_CASES if c[3][0] == "error" and c[1] == "p.csv"][:6]


@pytest.mark.parametrize("case,name,content,expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_peaks_without_output(tmp_path, case, name, content, expected):
    path = _write(tmp_path, name, content)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "dask_assign.cli", "run", str(path),
                          str(DEMO / "library.csv"), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and re.search(expected[2], res.stderr)
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_rt_unit_mismatch_is_refused(tmp_path, local_client):
    from dask_assign.graph.run import run

    peaks = pd.read_csv(DEMO / "peaks.csv")
    peaks["rt"] *= 60  # seconds, but declared minutes
    path = tmp_path / "p.csv"
    peaks.to_csv(path, index=False)
    from dask_assign.config import AssignConfig

    with pytest.raises(InputError, match="the units differ"):
        run(path, DEMO / "library.csv", tmp_path / "out", AssignConfig(rt_unit="min"),
            client=local_client)
    assert not (tmp_path / "out").exists()


ids_st = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(ids_st, st.floats(50, 4000), st.floats(0, 59), st.floats(0, 1e9)),
                min_size=1, max_size=30, unique_by=lambda t: t[0]),
       st.sampled_from(["csv", "tsv", "parquet"]))
def test_reader_round_trip_property(tmp_path, rows, fmt):
    frame = pd.DataFrame(rows, columns=["peak_id", "mz", "rt", "intensity"])
    path = tmp_path / f"p.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if fmt == "tsv" else ",", index=False, float_format="%.17g")
    got = load_peaks(path, rt_unit="min")
    assert got["peak_id"].tolist() == frame["peak_id"].tolist()
    np.testing.assert_array_equal(got["mz"].to_numpy(), frame["mz"].to_numpy())
    np.testing.assert_array_equal(got["rt"].to_numpy(), frame["rt"].to_numpy())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 25), st.integers(0, 24), st.sampled_from(["x", "-1", "", "1,5", "inf"]))
def test_one_bad_cell_is_named_property(tmp_path, n, bad_row, cell):
    bad_row = bad_row % n
    lines = [f"p{i},{100 + i},{1 + i % 5},10" for i in range(n)]
    parts = lines[bad_row].split(",")
    parts[1] = f'"{cell}"' if "," in cell else cell
    lines[bad_row] = ",".join(parts)
    path = tmp_path / "p.csv"
    path.write_text(HEAD + "\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        load_peaks(path)
    assert "column 'mz'" in str(err.value) and f"lines {bad_row + 2}" in str(err.value)


def test_null_spellings_are_ids_in_id_columns_and_missing_in_numbers(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("peak_id,mz,rt,intensity\nNA,100,1,NA\nnull,101,1,nan\n")
    peaks = load_peaks(path)
    assert peaks["peak_id"].tolist() == ["NA", "null"]
    assert peaks["intensity"].isna().all()
    lib = tmp_path / "lib.csv"
    lib.write_text("compound_id,formula,rt\nNA,C6H12O6,NA\n")
    assert read_library(lib)["compound_id"].tolist() == ["NA"]


def _damaged_gz(tmp_path, name, source, how):
    import gzip

    data = gzip.compress(source.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 3]
    else:  # bytes in the middle of the stream overwritten
        mid = len(data) // 2
        data = data[:mid] + bytes(range(256)) * 2 + data[mid + 512:]
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
@pytest.mark.parametrize("reader", ["load_peaks", "read_peaks", "read_library"])
def test_a_damaged_compressed_file_is_named(tmp_path, reader, how):
    source = DEMO / ("library.csv" if reader == "read_library" else "peaks.csv")
    path = _damaged_gz(tmp_path, source.name + ".gz", source, how)
    call = {"load_peaks": load_peaks, "read_library": read_library,
            "read_peaks": lambda p: read_peaks(p, workdir=tmp_path / "w")}[reader]
    with pytest.raises(InputError) as err:
        call(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    assert not (tmp_path / "w").exists()


def test_errors_of_the_os_and_of_decompressors_name_the_file():
    import gzip
    import lzma
    import zlib

    from dask_assign.errors import reading

    cases = [(EOFError("Compressed file ended before the end-of-stream marker was reached"),
              "the compressed file is truncated or damaged"),
             (gzip.BadGzipFile("Not a gzipped file (b'pe')"), "truncated or damaged"),
             (zlib.error("Error -3 while decompressing data"), "truncated or damaged"),
             (lzma.LZMAError("Corrupt input data"), "truncated or damaged"),
             (OSError("zlib inflate failed: incorrect header check"), "cannot read (zlib"),
             (OSError(5, "Input/output error"), "cannot read: Input/output error"),
             (PermissionError(13, "Permission denied"), "permission denied"),
             (IsADirectoryError(21, "Is a directory"), "is a folder; expected a file")]
    for raised, expect in cases:
        with pytest.raises(InputError) as err, reading("peaks.csv.gz"):
            raise raised
        assert str(err.value).startswith("peaks.csv.gz: ") and expect in str(err.value)


def test_a_folder_where_a_file_is_expected(tmp_path):
    from dask_assign.training.fit import read_truth

    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "library.csv").write_bytes((DEMO / "library.csv").read_bytes())
    for call, expect in ((read_library, "is a folder; expected a library file"),
                         (lambda p: select_adducts("positive", None, str(p)), "is a folder"),
                         (read_truth, "is a folder; expected a truth file")):
        with pytest.raises(InputError) as err:
            call(folder)
        assert str(err.value).startswith(f"{folder}: ") and expect in str(err.value)


@pytest.mark.parametrize("command", ["evaluate", "report", "run-adducts", "run-library"])
def test_cli_names_a_folder_given_for_a_file(tmp_path, cli_main, command):
    folder = tmp_path / "truth"
    folder.mkdir()
    result = tmp_path / "result"  # evaluate and report refuse before they read the result
    argv = {"evaluate": ["evaluate", result, "--truth", folder],
            "report": ["report", result, "--truth", folder],
            "run-adducts": ["run", DEMO / "peaks.csv", DEMO / "library.csv", "--out",
                            tmp_path / "out", "--adduct-table", folder],
            "run-library": ["run", DEMO / "peaks.csv", folder, "--out", tmp_path / "out"]}
    code, err = cli_main(argv[command])
    assert code == 2 and err.startswith(f"dask-assign: error: {folder}: is a folder"), err
    assert err.count("\n") == 1 and sorted(os.listdir(tmp_path)) == ["truth"]
