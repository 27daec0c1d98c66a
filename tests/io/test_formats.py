"""Peak tables as the field's tools write them (tests/data/formats/, made by
tests/make_format_fixtures.py from the demo peaks), read with no options: the tool's own ids,
units and intensities, and the same calls as the plain CSV through the real pipeline. Also the
real asari table of ../shared and gzip."""

import gzip
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from dask_assign.config import AssignConfig
from dask_assign.errors import InputError
from dask_assign.io.library import read_library
from dask_assign.io.peaks import find_header, load_peaks
from dask_assign.io.tables import head_lines
from tests import make_format_fixtures as fx
from tests.conftest import DEMO, SHARED

ASARI_REAL = SHARED / "formats" / "asari_HILICpos_preferred_Feature_table.tsv"
# How each tool rounds what it writes: m/z (absolute), RT (minutes, absolute).
ROUNDING = {
    "xcms_featureDefinitions.csv": (1e-9, 1e-9),
    "mzmine2_gnps_quant.csv": (0, 0),
    "mzmine3_feature_list.csv": (0, 1e-5),        # RT as a float32
    "msdial4_Area.txt": (5e-6, 5e-4),             # 5 and 3 decimals
    "msdial5_Height.txt": (5e-6, 5e-4),
    "asari_full_Feature_table.tsv": (5e-5, 0.005 / 60),  # 4 decimals; seconds to 2
    "peaks.csv.gz": (0, 0),
}
#: Intensity unit of each file relative to the demo's (areas written as 9 x height).
AREA = {"mzmine2_gnps_quant.csv": 9.0, "mzmine3_feature_list.csv": 9.0, "msdial4_Area.txt": 9.0,
        "asari_full_Feature_table.tsv": 9.0, "msdial5_Height.txt": 1.0}


@pytest.fixture(scope="module")
def demo():
    peaks = fx.demo_peaks()
    return peaks, fx.tool_ids(peaks), fx.sample_values(peaks)


def to_demo_ids(name, ids, tool_peak_ids):
    """The demo peak ids of a file's own ids (the generator's map, inverted)."""
    back = pd.Series(ids[name].index, index=ids[name].to_numpy())
    return back.loc[pd.Index(tool_peak_ids).astype(str)].to_numpy()


def _same_text(a: bytes, b: bytes) -> bool:
    """The same file, numbers allowed to differ in their last digits (numpy builds round
    the generator's floats differently)."""
    if a == b:
        return True
    la, lb = a.decode().splitlines(), b.decode().splitlines()
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        tx, ty = re.split(r"([,\t;])", x), re.split(r"([,\t;])", y)
        if len(tx) != len(ty):
            return False
        for u, v in zip(tx, ty, strict=True):
            if u == v:
                continue
            try:
                if not math.isclose(float(u), float(v), rel_tol=1e-12):
                    return False
            except ValueError:
                return False
    return True


def test_fixtures_are_what_the_generator_writes():
    for name, data in fx.render().items():
        on_disk = (fx.OUT / name).read_bytes()
        if name.endswith(".gz"):  # compressed bytes may differ between zlib builds
            data, on_disk = gzip.decompress(data), gzip.decompress(on_disk)
        assert _same_text(on_disk, data), f"{name}: run python tests/make_format_fixtures.py"


@pytest.mark.parametrize("name", fx.FILES)
def test_each_export_read_with_no_options(name, demo):
    peaks, ids, (values, detected) = demo
    got = load_peaks(fx.OUT / name)
    # The tool's own ids, every peak once, in the file's row order.
    assert got["peak_id"].tolist() == ids[name].tolist()
    want = peaks.set_index("peak_id").loc[to_demo_ids(name, ids, got["peak_id"])]
    mz_tol, rt_tol = ROUNDING[name]
    np.testing.assert_allclose(got["mz"], want["mz"], rtol=1e-12, atol=mz_tol)
    np.testing.assert_allclose(got["rt"], want["rt"], rtol=1e-12, atol=rt_tol + 1e-12)
    where = pd.Series(np.arange(len(peaks)), index=peaks["peak_id"]).loc[want.index].to_numpy()
    if name == "xcms_featureDefinitions.csv":
        # Its per-group columns count peaks: no intensity is read from them.
        assert got["intensity"].isna().all()
    elif name == "peaks.csv.gz":
        np.testing.assert_array_equal(got["intensity"], want["intensity"])
    else:
        # The median over the samples that detected the peak (MS-DIAL gap-fills: all do).
        seen = detected[where] | name.startswith("msdial")
        oracle = np.array([np.median(v[s]) for v, s in zip(values[where], seen, strict=True)])
        np.testing.assert_allclose(got["intensity"], oracle * AREA[name], rtol=1e-4)


def test_msdial_metadata_rows_are_skipped_and_kept():
    for name in ("msdial4_Area.txt", "msdial5_Height.txt"):
        path = fx.OUT / name
        header = find_header(path, head_lines(path))
        assert header.line == 4 and header.layout.tool.startswith("MS-DIAL")
        assert header.samples == list(fx.SAMPLES)
        assert header.sample_metadata["Class"] == dict(zip(fx.SAMPLES, fx.CLASSES, strict=True))
        assert header.sample_metadata["Injection order"] == {
            s: str(i + 1) for i, s in enumerate(fx.SAMPLES)}
        # The class averages and spreads, named by class twice in the header, are renamed.
        classes = sorted(set(fx.CLASSES))
        assert header.names[-2 * len(classes):] == (
            [f"Average {c}" for c in classes] + [f"Stdev {c}" for c in classes])


def test_errors_count_the_lines_above_the_header(tmp_path):
    lines = (fx.OUT / "msdial5_Height.txt").read_text().splitlines()
    cells = lines[7].split("\t")  # the third data row: line 8 of the file
    cells[2] = "abc"
    lines[7] = "\t".join(cells)
    bad = tmp_path / "Height_bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"column 'Average Mz': not a number \(lines 8: 'abc'\)"):
        load_peaks(bad)
    lines = (fx.OUT / "msdial5_Height.txt").read_text().splitlines()
    lines[9] = lines[5]  # the first data row (line 6) again, on line 10
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"duplicate peak id \(lines 6: '0', 10: '0'\)"):
        load_peaks(bad)


def test_an_explicit_mapping_overrides_the_layout():
    got = load_peaks(fx.OUT / "mzmine3_feature_list.csv", columns={"intensity": "height"})
    table = pd.read_csv(fx.OUT / "mzmine3_feature_list.csv", dtype={"id": str})
    np.testing.assert_array_equal(got["intensity"], table["height"])


@pytest.fixture(scope="module")
def plain_calls(local_client, tmp_path_factory):
    from dask_assign.graph.run import run

    out = tmp_path_factory.mktemp("plain") / "out"
    run(DEMO / "peaks.csv", DEMO / "library.csv", out, AssignConfig(), client=local_client)
    return calls(out)


def calls(out) -> pd.Series:
    a = pd.read_parquet(out / "assignments.parquet")
    return a.set_index("peak_id")[["compound_id", "adduct", "isotope"]].astype(object).fillna(
        "-").agg("|".join, axis=1)


@pytest.mark.parametrize("name", fx.FILES)
def test_each_export_gives_the_calls_of_the_plain_table(name, demo, plain_calls, local_client,
                                                        tmp_path):
    """Must show: >= 98% the same calls (compound, adduct, isotope; or none) as the plain CSV,
    joined by the tool's own ids; no column mapping, no --rt-unit."""
    from dask_assign.graph.run import run

    _, ids, _ = demo
    run(fx.OUT / name, DEMO / "library.csv", tmp_path / "out", AssignConfig(),
        client=local_client)
    got = calls(tmp_path / "out")
    got.index = to_demo_ids(name, ids, got.index)
    assert sorted(got.index) == sorted(plain_calls.index)
    same = float((got.reindex(plain_calls.index) == plain_calls).mean())
    assert same >= 0.98, f"{name}: {same:.4f} of the calls agree"


@pytest.mark.skipif(not ASARI_REAL.exists(), reason="../shared/data/formats is absent")
def test_real_asari_table(tmp_path):
    raw = pd.read_csv(ASARI_REAL, sep="\t", dtype={"id_number": str})
    got = load_peaks(ASARI_REAL)
    assert len(got) == len(raw) == 1118
    assert got["peak_id"].tolist() == raw["id_number"].tolist()
    np.testing.assert_array_equal(got["mz"], raw["mz"])
    np.testing.assert_allclose(got["rt"], raw["rtime"] / 60.0, rtol=1e-15)  # seconds
    samples = raw.columns[list(raw.columns).index("detection_counts") + 1:]
    assert len(samples) == 4
    values = raw[samples].to_numpy(dtype=float)
    oracle = [np.median(v[v > 0]) if (v > 0).any() else np.nan for v in values]
    np.testing.assert_allclose(got["intensity"], oracle)
    # The detection count asari writes agrees with the samples read as detected.
    assert ((values > 0).sum(axis=1) == raw["detection_counts"]).all()
    # Gzipped, the same table.
    gz = tmp_path / "asari.tsv.gz"
    with open(ASARI_REAL, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    pd.testing.assert_frame_equal(load_peaks(gz), got)


def test_gzipped_library_reads_like_the_plain_one(tmp_path):
    gz = tmp_path / "library.csv.gz"
    gz.write_bytes(gzip.compress((DEMO / "library.csv").read_bytes()))
    pd.testing.assert_frame_equal(read_library(gz), read_library(DEMO / "library.csv"))
    tsv = tmp_path / "library.tsv.gz"
    tsv.write_bytes(gzip.compress(pd.read_csv(DEMO / "library.csv").to_csv(
        sep="\t", index=False).encode()))
    pd.testing.assert_frame_equal(read_library(tsv), read_library(DEMO / "library.csv"))


def _damaged(tmp_path, name, how):
    data = gzip.compress((DEMO / "peaks.csv").read_bytes() * 30)
    path = tmp_path / name
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupt":
        path.write_bytes(data[:200] + b"\x00" * 500 + data[700:])
    else:
        path.write_bytes(b"peak_id,mz,rt\na,100,1\n")  # plain text named .gz
    return path


@pytest.mark.parametrize("how", ["truncated", "corrupt", "not gzip"])
def test_damaged_gzip_is_refused_naming_the_file(tmp_path, how):
    path = _damaged(tmp_path, "peaks.csv.gz", how)
    with pytest.raises(InputError, match="cannot read the compressed file") as err:
        load_peaks(path)
    assert str(err.value).startswith(str(path))
    lib = _damaged(tmp_path, "library.csv.gz", how)
    with pytest.raises(InputError, match="cannot read the compressed file") as err:
        read_library(lib)
    assert str(err.value).startswith(str(lib))


def test_truncated_gzip_through_the_cli_writes_nothing(tmp_path):
    """A gzip stream that breaks off: exit 2 with one line, no output or input folder left."""
    from tests.test_cli import cli

    path = _damaged(tmp_path, "peaks.csv.gz", "truncated")
    res = cli("run", path, DEMO / "library.csv", "--out", tmp_path / "out")
    assert res.returncode == 2 and "cannot read the compressed file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
