"""The search space's orderings and its resolution at a mass spread."""

import numpy as np
import pandas as pd
import pytest

from dask_assign.chemistry.ions import ion_order
from dask_assign.config import AssignConfig
from dask_assign.filtering.space import prepare_library, rows_by_group


@pytest.mark.parametrize("seed", range(3))
def test_ion_order_is_the_lexicographic_order(seed):
    """By m/z, then compound, adduct, isotopologue: isomers tie on every m/z."""
    rng = np.random.default_rng(seed)
    n = 5000
    mz = rng.choice(np.round(rng.uniform(100, 900, 300), 6), n)
    compound, adduct, isotope = (rng.integers(0, k, n) for k in (2000, 8, 12))
    want = np.lexsort((isotope, adduct, compound, mz))
    got = ion_order(mz, compound, adduct, isotope)
    key = np.stack([mz, compound, adduct, isotope], axis=1)
    np.testing.assert_array_equal(key[got], key[want])


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
