"""The ion cache: a cached space is the space built, under a key that follows every input."""

import dataclasses
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from dask_assign.config import AssignConfig
from dask_assign.filtering import ion_cache, space
from dask_assign.filtering.space import TABLE_SETTINGS, prepare_library
from tests.conftest import DEMO


@pytest.fixture
def library(tmp_path):
    path = tmp_path / "library.csv"
    shutil.copy(DEMO / "library.csv", path)
    return path


def assert_same_space(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        elif isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y)
        elif f.name == "bins":
            for g in dataclasses.fields(x):
                np.testing.assert_array_equal(getattr(x, g.name), getattr(y, g.name))
        else:
            assert x == y, f.name


def never_built(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the ion table was built again")

    monkeypatch.setattr(space, "build_ions", fail)


def test_a_cached_space_is_the_space_built(library, tmp_path, monkeypatch):
    config = AssignConfig()
    built = prepare_library(library, config)
    first = prepare_library(library, config, cache=tmp_path / "cache")
    assert len(ion_cache.entries(tmp_path / "cache")) == 1
    never_built(monkeypatch)
    again = prepare_library(library, config, cache=tmp_path / "cache")
    assert_same_space(built, first)
    assert_same_space(built, again)
    assert prepare_library(again, config, cache=tmp_path / "cache") is again  # as it is


#: A value other than the default for each table setting.
CHANGED = {"library_rt_unit": "s", "mode": "negative", "adducts": ("[M+H]+", "[M+Na]+"),
           "adduct_table": "ADDUCT_TABLE", "max_isotope": 2, "isotope_min_abundance": 1e-3,
           "isotope_merge_ppm": 2.0, "ppm": 5.0, "refine_widen": 3.0}


def test_the_key_follows_the_library_bytes_and_every_table_setting(library, tmp_path,
                                                                   monkeypatch):
    assert set(CHANGED) == set(TABLE_SETTINGS)
    cache = tmp_path / "cache"
    adducts = tmp_path / "adducts.tsv"
    shutil.copy(space.__file__.replace("filtering/space.py", "data/adducts.tsv"), adducts)
    prepare_library(library, AssignConfig(), cache=cache)
    for n, (name, value) in enumerate(CHANGED.items(), start=2):
        value = str(adducts) if value == "ADDUCT_TABLE" else value
        prepare_library(library, AssignConfig(**{name: value}), cache=cache)
        assert len(ion_cache.entries(cache)) == n, name
    # The adduct table's bytes, not its path: an edited table is a new table.
    with open(adducts, "a") as fh:
        fh.write("[M+Q]+\tpositive\t1\tK\tH\t1\t0.01\t1\n")
    prepare_library(library, AssignConfig(adduct_table=str(adducts)), cache=cache)
    assert len(ion_cache.entries(cache)) == len(CHANGED) + 2
    # The library's bytes: one more compound is a new library.
    frame = pd.read_csv(library)
    row = frame.iloc[[0]].assign(compound_id="EXTRA", name="extra")
    pd.concat([frame, row]).to_csv(library, index=False)
    grown = prepare_library(library, AssignConfig(), cache=cache)
    assert len(ion_cache.entries(cache)) == len(CHANGED) + 3
    assert "EXTRA" in set(grown.compounds["compound_id"])
    # Settings that do not shape the table find the same entry.
    never_built(monkeypatch)
    prepare_library(library, AssignConfig(k_max=70, rt_window=0.2, context=False), cache=cache)
    assert len(ion_cache.entries(cache)) == len(CHANGED) + 3


def test_the_key_follows_the_code(library, tmp_path, monkeypatch):
    """A release, or an edit of the package, never reads an entry another code wrote."""
    cache = tmp_path / "cache"
    prepare_library(library, AssignConfig(), cache=cache)
    monkeypatch.setattr(ion_cache, "code_digest", lambda: "another release")
    prepare_library(library, AssignConfig(), cache=cache)
    assert len(ion_cache.entries(cache)) == 2


def test_a_broken_entry_is_rebuilt_with_a_warning(library, tmp_path):
    cache = tmp_path / "cache"
    built = prepare_library(library, AssignConfig(), cache=cache)
    (entry,) = ion_cache.entries(cache)
    entry.write_bytes(entry.read_bytes()[:1000])  # a write cut short by a full disk
    with pytest.warns(RuntimeWarning, match="could not be read"):
        again = prepare_library(library, AssignConfig(), cache=cache)
    assert_same_space(built, again)
    assert ion_cache.load(cache, entry.name.removesuffix(ion_cache.SUFFIX)) is not None


def test_an_unwritable_cache_warns_and_the_run_goes_on(library, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="cannot write"):
        got = prepare_library(library, AssignConfig(), cache=blocked / "cache")
    assert_same_space(prepare_library(library, AssignConfig()), got)


def test_a_missing_library_is_named(tmp_path):
    from dask_assign.errors import InputError

    with pytest.raises(InputError, match="nope.csv"):
        prepare_library(tmp_path / "nope.csv", AssignConfig(), cache=tmp_path / "cache")


def test_the_least_recently_used_entries_go_beyond_the_limit(tmp_path):
    payload = np.zeros(10_000)  # about 80 kB pickled
    keys = [ion_cache.entry_key({"n": i}) for i in range(5)]
    paths = [ion_cache.store(tmp_path, k, payload) for k in keys[:3]]
    for age, p in zip((300, 200, 100), paths, strict=True):
        t = p.stat().st_mtime - age
        os.utime(p, (t, t))
    theirs = tmp_path / f"mine{ion_cache.SUFFIX}"  # not an entry's name: never evicted
    theirs.write_bytes(b"x" * 10**6)
    assert ion_cache.load(tmp_path, keys[0]) is not None  # read now: the most recent
    size = paths[0].stat().st_size
    ion_cache.store(tmp_path, keys[3], payload, limit=int(2.5 * size))
    assert ion_cache.entries(tmp_path) == [paths[0], tmp_path / f"{keys[3]}{ion_cache.SUFFIX}"]
    kept = ion_cache.entries(tmp_path)
    assert kept == [paths[0], tmp_path / f"{keys[3]}{ion_cache.SUFFIX}"] and theirs.exists()
    # An entry larger than the whole cache is not kept, and evicts nothing: found so once
    # written, or estimated so before.
    assert ion_cache.store(tmp_path, keys[4], payload, limit=size // 2) is None
    assert ion_cache.store(tmp_path, keys[4], payload, nbytes=size, limit=size // 2) is None
    assert ion_cache.entries(tmp_path) == kept
    assert not list(tmp_path.glob(f"{ion_cache.TMP_PREFIX}*"))


def test_a_killed_writes_temporary_file_is_removed_once_stale(tmp_path):
    stale = tmp_path / f"{ion_cache.TMP_PREFIX}a{ion_cache.SUFFIX}"
    fresh = tmp_path / f"{ion_cache.TMP_PREFIX}b{ion_cache.SUFFIX}"
    for p in (stale, fresh):
        p.write_bytes(b"half an entry")
    t = stale.stat().st_mtime - ion_cache.STALE_TMP_S - 10
    os.utime(stale, (t, t))
    ion_cache.store(tmp_path, ion_cache.entry_key({"n": 0}), np.zeros(3))
    assert not stale.exists() and fresh.exists()  # another process may be writing that one


def test_a_folder_others_may_write_is_not_used(library, tmp_path):
    """An entry is a pickle, which runs code when read: one planted by another user must
    never be read."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.warns(RuntimeWarning, match="others may write"):
        got = prepare_library(library, AssignConfig(), cache=shared)
    assert ion_cache.entries(shared) == []
    assert_same_space(prepare_library(library, AssignConfig()), got)
    made = tmp_path / "new" / "cache"
    prepare_library(library, AssignConfig(), cache=made)
    assert made.stat().st_mode & 0o777 == 0o700


def test_the_default_folder_notes_its_faults_in_the_log_only(library, tmp_path, monkeypatch,
                                                             caplog):
    """A user who never chose a cache (a read-only home on a cluster) is not warned on every
    run; the log says why the table was built."""
    (tmp_path / "xdg").write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(ion_cache.CACHE_ENV)
    with caplog.at_level("INFO", logger="dask_assign.filtering.ion_cache"):
        prepare_library(library, AssignConfig(), cache=ion_cache.cache_dir())
    assert "cannot write" in caplog.text


def test_a_library_changed_while_its_table_is_built_is_not_kept(library, tmp_path,
                                                               monkeypatch):
    build = space._build_space

    def build_then_edit(*args):
        out = build(*args)
        with open(library, "a") as fh:
            fh.write("\n")
        return out

    monkeypatch.setattr(space, "_build_space", build_then_edit)
    prepare_library(library, AssignConfig(), cache=tmp_path / "cache")
    assert ion_cache.entries(tmp_path / "cache") == []


@pytest.mark.parametrize("value, expect", [
    ("off", None), ("", None), ("/some/where", "/some/where"), (None, "ENV")])
def test_the_cache_folder_comes_from_the_option_then_the_environment(value, expect,
                                                                      monkeypatch, tmp_path):
    monkeypatch.setenv(ion_cache.CACHE_ENV, str(tmp_path))
    got = ion_cache.cache_dir(value)
    assert got == (tmp_path if expect == "ENV" else expect and type(tmp_path)(expect))
    monkeypatch.setenv(ion_cache.CACHE_ENV, "off")
    assert ion_cache.cache_dir() is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(ion_cache.CACHE_ENV, "")  # set but empty: as if unset
    assert ion_cache.cache_dir() == tmp_path / "xdg" / "dask-assign"
    monkeypatch.delenv(ion_cache.CACHE_ENV)
    assert ion_cache.cache_dir() == tmp_path / "xdg" / "dask-assign"


def test_a_folder_given_as_the_library_is_refused_as_without_a_cache(tmp_path):
    from dask_assign.errors import InputError

    (tmp_path / "library.parquet").mkdir()
    with pytest.raises(InputError, match="is a folder; expected a library file"):
        prepare_library(tmp_path / "library.parquet", AssignConfig(), cache=tmp_path / "c")
