import re

import numpy as np
import pandas as pd
import pytest

from dask_assign.errors import InputError
from dask_assign.io.library import read_library
from dask_assign.io.peaks import load_peaks, read_peaks


@pytest.mark.parametrize("header,unit,rt_scale", [
    ("peak_id,mz,rt,intensity", "min", 1.0),
    ("name,mzmed,rtmed,into", "s", 60.0),                                   # XCMS
    ("row ID,row m/z,row retention time,row height", "min", 1.0),          # MZmine
    ("Alignment ID,Average Mz,Average Rt(min),Height", "min", 1.0),        # MS-DIAL
    ("id_number,mz,rtime,peak_area", "s", 60.0),                           # asari
])
def test_tool_exports_are_recognised(tmp_path, header, unit, rt_scale):
    path = tmp_path / "peaks.csv"
    path.write_text(f"{header}\nA,100.5,{2 * rt_scale},1000\nB,200.25,{3 * rt_scale},50\n")
    peaks = load_peaks(path)
    assert list(peaks.columns) == ["peak_id", "mz", "rt", "intensity"]
    assert peaks["peak_id"].tolist() == ["A", "B"]
    np.testing.assert_allclose(peaks["rt"], [2.0, 3.0])
    np.testing.assert_allclose(peaks["mz"], [100.5, 200.25])


def test_explicit_mapping_tsv_and_parquet(tmp_path):
    frame = pd.DataFrame({"ID": ["x", "y"], "MZ": [150.0, 250.0], "T": [1.0, 2.0]})
    frame.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    frame.to_parquet(tmp_path / "p.parquet")
    cols = {"peak_id": "ID", "mz": "MZ", "rt": "T"}
    for name in ("p.tsv", "p.parquet"):
        peaks = load_peaks(tmp_path / name, columns=cols, rt_unit="min")
        assert peaks["mz"].tolist() == [150.0, 250.0]
        assert peaks["intensity"].isna().all()


def test_parquet_saved_with_a_pandas_index(tmp_path):
    # A shuffled frame saved as it is keeps its index in the file (``__index_level_0__``).
    frame = pd.DataFrame({"peak_id": ["a", "b", "c"], "mz": [100.0, 200.0, 300.0],
                          "rt": [1.0, 2.0, 3.0], "intensity": [1e4, 2e4, 3e4]})
    frame.sample(frac=1.0, random_state=1).to_parquet(tmp_path / "p.parquet")
    peaks = load_peaks(tmp_path / "p.parquet", rt_unit="min")
    assert sorted(peaks["peak_id"]) == ["a", "b", "c"] and len(peaks.columns) == 4
    assert dict(zip(peaks["peak_id"], peaks["mz"], strict=True)) == {
        "a": 100.0, "b": 200.0, "c": 300.0}


def test_rt_unit_inferred_from_values(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,mz,rt\na,100,30\nb,110,900\n")
    assert load_peaks(path)["rt"].tolist() == [0.5, 15.0]
    assert load_peaks(path, rt_unit="min")["rt"].tolist() == [30.0, 900.0]


def test_read_peaks_partitions(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"peak_id": [f"p{i}" for i in range(10)], "mz": np.arange(10) + 100.0,
                  "rt": 1.0, "intensity": 1.0}).to_csv(path, index=False)
    ddf = read_peaks(path, partition_size=3)
    assert ddf.npartitions == 4
    assert ddf.compute()["peak_id"].tolist() == [f"p{i}" for i in range(10)]


BAD_PEAKS = [
    ("peak_id,mass,rt\na,100,1\n", None, r"missing column\(s\) \['mz'\]"),
    ("peak_id,mz,rt\na,100,1\nb,abc,2\n", "'mz'", r"not a number \(lines 3: 'abc'\)"),
    ("peak_id,mz,rt\na,100,1\nb,,2\n", "'mz'", r"missing value \(lines 3\)"),
    ("peak_id,mz,rt\na,100,1\nb,-5,2\n", "'mz'", r"m/z must be positive \(lines 3: -5.0\)"),
    ("peak_id,mz,rt\na,100,1\na,200,2\n", "'peak_id'", r"duplicate peak id \(lines 2: 'a', 3"),
    ("peak_id,mz,rt\n", None, "header but no rows"),
    ("", None, "is empty"),
    ("peak_id,mz,rt\na,100,-1\n", "'rt'", r"must not be negative \(lines 2"),
    ("peak_id,mz,rt,intensity\na,100,1,x\n", "'intensity'", "not a number"),
]


def assert_input_error(reader, path, text, column, message):
    """``reader(path)`` fails with an error naming the file, the column and the rows."""
    path.write_text(text)
    with pytest.raises(InputError) as err:
        reader(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and re.search(message, msg), msg
    if column:
        assert f"column {column}" in msg


@pytest.mark.parametrize("text,column,message", BAD_PEAKS)
def test_bad_peak_tables_name_file_column_rows(tmp_path, text, column, message):
    assert_input_error(load_peaks, tmp_path / "bad_peaks.csv", text, column, message)


def test_library_reading_and_masses(tmp_path):
    path = tmp_path / "lib.csv"
    path.write_text("compound_id,name,formula,monoisotopic_mass,rt\n"
                    "c1,glucose,C6H12O6,,1.5\nc2,unknown mass,,250.1,\nc3,choline,C5H14NO+,,2\n")
    lib = read_library(path)
    # Masses of the atoms: the choline cation itself is one electron lighter.
    assert lib["monoisotopic_mass"].round(5).tolist() == [180.06339, 250.1, 104.10754]
    assert lib["rt"].isna().tolist() == [False, True, False]
    assert lib["n_C"].tolist() == [6, 0, 5]
    assert lib["charge"].tolist() == [0, 0, 1]
    assert lib["formula"].isna().tolist() == [False, True, False]


BAD_LIBRARIES = [
    ("compound_id,name,formula\nc1,a,C6H12O6\nc2,b,C6H1X2\n", "'formula'",
     r"unparsable formula .*\(lines 3: 'C6H1X2'\)"),
    ("compound_id,name,formula\nc1,a,C6H12O6\nc1,b,C2H6O\n", "'compound_id'", "duplicate"),
    ("compound_id,name\nc1,a\n", None, "need a 'formula' or a 'monoisotopic_mass'"),
    ("compound_id,name,formula,monoisotopic_mass\nc1,a,,\n", None, "neither a formula nor"),
    ("compound_id,formula,rt\nc1,C6H12O6,fast\n", "'rt'", "not a number"),
]


@pytest.mark.parametrize("text,column,message", BAD_LIBRARIES)
def test_bad_libraries(tmp_path, text, column, message):
    assert_input_error(read_library, tmp_path / "bad_lib.csv", text, column, message)
