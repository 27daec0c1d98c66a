"""The search space's orderings and its resolution at a mass spread."""

import numpy as np
import pandas as pd
import pytest
import torch

from dask_assign.chemistry.ions import ion_order
from dask_assign.config import AssignConfig
from dask_assign.filtering.join import range_join
from dask_assign.filtering.space import prepare_library, rows_by_group


@pytest.mark.parametrize("seed", range(3))
def test_ion_order_is_the_lexicographic_order(seed):
    """By m/z, then compound, adduct, isotopologue: isomers tie on every m/z."""
    rng = np.random.default_rng(seed)
    n = 5000
    mz = rng.choice(np.round(rng.uniform(100, 900, 300), 6), n)
    compound, adduct, isotope = (rng.integers(0, k, n) for k in (2000, 8, 12))
    want = np.lexsort((isotope, adduct, compound, mz))
    np.testing.assert_array_equal(ion_order(mz, compound, adduct, isotope), want)
    # Nearly in order already, as a table whose merged isotopologues moved a little:
    # equal m/z runs mostly in key order, a few not, a few values shifted past neighbours.
    mz, compound, adduct, isotope = (v[want] for v in (mz, compound, adduct, isotope))
    swap = rng.choice(n - 1, 40, replace=False)
    compound[swap], compound[swap + 1] = compound[swap + 1].copy(), compound[swap].copy()
    moved = rng.choice(n, 40, replace=False)
    mz = mz.copy()
    mz[moved] *= 1 + rng.normal(0, 3e-6, moved.size)
    want = np.lexsort((isotope, adduct, compound, mz))
    np.testing.assert_array_equal(ion_order(mz, compound, adduct, isotope), want)


@pytest.mark.parametrize("seed", range(3))
def test_rows_by_group_is_a_stable_sort(seed):
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 300, 4000)
    la = np.log(rng.choice([1.0, 0.3, 0.3, 0.01], group.size))  # ties keep row order
    start = np.zeros(301, dtype=np.int64)
    np.cumsum(np.bincount(group, minlength=300), out=start[1:])
    np.testing.assert_array_equal(rows_by_group(group, start, la), np.lexsort((-la, group)))


def _library():
    return pd.DataFrame({"compound_id": ["a", "b", "c"], "name": ["a", "b", "c"],
                         "formula": ["C6H12O6", "C10H16N5O13P3", "C3H7NO2S"],
                         "rt": [1.0, np.nan, 2.0]})


def test_resolving_at_the_merge_tolerance_changes_nothing(tmp_path):
    """The table was merged at ``isotope_merge_ppm`` already: the same space comes back; a
    wider spread merges more."""
    path = tmp_path / "library.csv"
    _library().to_csv(path, index=False)
    space = prepare_library(path, AssignConfig(isotope_merge_ppm=3.0))
    assert space.merged_ppm == 3.0
    assert space.resolved(3.0) is space and space.resolved(1.0) is space
    wide = space.resolved(30.0)
    assert wide.merged_ppm == 30.0 and len(wide.mz) < len(space.mz)
    assert np.all(np.diff(wide.mz) >= 0)


def test_calibrated_ions_are_kept_for_their_space_and_calibration_only(tmp_path):
    """The per-worker copy is the one its space and calibration give: computed afresh for
    another calibration (curves or priors) or another space, never a stale one."""
    import torch

    from dask_assign.config import Calibration
    from dask_assign.filtering import space as space_module
    from dask_assign.filtering.space import calibrated_ions, main_adduct

    path = tmp_path / "library.csv"
    _library().to_csv(path, index=False)
    space = prepare_library(path, AssignConfig())
    other = space.resolved(30.0)
    base = Calibration()
    changes = [base, base.replace(rt_values=(0.5, 1.2)), base.replace(mass_offsets=(-3.0, 2.0)),
               base.replace(log_adduct_priors=tuple(np.linspace(-2, 0,
                                                                len(space.adduct_names))))]
    for s in (space, other, space):
        for cal in (*changes, changes[0]):
            got = calibrated_ions(s, cal, "cpu")
            want = space_module._calibrated_ions(s, cal, "cpu")
            assert got.keys() == want.keys()
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=0, atol=0,
                                           equal_nan=True, msg=key)
            assert calibrated_ions(s, cal, "cpu")["mz"] is got["mz"]  # kept, not rebuilt
        prior = np.full(len(s.adduct_names), -np.inf)
        np.maximum.at(prior, s.adduct, s.log_adduct_prior)
        assert main_adduct(s) == int(np.argmax(prior))
    # Dropped with its space: nothing of a finished run stays on the worker.
    import gc

    del space, other, s
    gc.collect()
    assert space_module._CALIBRATED._entry is None and space_module._MAIN_ADDUCT._entry is None


def test_take_gathers_an_ion_column_at_candidate_rows(tmp_path):
    """``take`` is the column indexed at the rows, with the column's dtype, on the rows'
    device (a CUDA partition does not copy the whole table)."""
    import torch

    path = tmp_path / "library.csv"
    _library().to_csv(path, index=False)
    space = prepare_library(path, AssignConfig())
    rows = torch.as_tensor(np.random.default_rng(0).integers(0, len(space.mz), 50))
    for column in ("compound", "adduct", "mz"):
        got = space.take(column, rows)
        want = torch.as_tensor(getattr(space, column))[rows]
        assert got.dtype == want.dtype and got.device == rows.device
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_reindexed_space_serves_wider_windows_with_the_same_ions(tmp_path, rng):
    """Built for 20 ppm (10 ppm x refine_widen 2), re-indexed for 35: the same ion arrays,
    and a 35 ppm join over the new bins finds every ion a brute-force scan finds."""
    path = tmp_path / "library.csv"
    _library().to_csv(path, index=False)
    space = prepare_library(path, AssignConfig())
    assert space.bins_ppm == pytest.approx(20.0) and space.indexed(15.0) is space
    wide = space.indexed(35.0)
    assert wide.bins_ppm >= 35.0 and wide.mz is space.mz and wide.compound is space.compound
    peak_mz = space.mz[rng.integers(0, len(space.mz), 200)] * (1 + rng.uniform(-4e-5, 4e-5, 200))
    t = torch.from_numpy
    pi, ii = range_join(t(peak_mz), t(np.zeros(200)), t(space.mz.copy()),
                        t(np.full(len(space.mz), np.nan)), wide.bins, 35.0, float("inf"))
    got = set(zip(pi.tolist(), ii.tolist(), strict=True))
    close = np.abs(peak_mz[:, None] - space.mz[None, :]) <= 35e-6 * space.mz[None, :]
    assert got == set(zip(*np.nonzero(close), strict=True))
