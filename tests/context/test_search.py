"""Partner searches: each candidate's isotopologue partners."""

import numpy as np

from dask_assign import DEMO_DATA
from dask_assign.chemistry.adducts import select_adducts
from dask_assign.chemistry.ions import build_ions
from dask_assign.config import AssignConfig
from dask_assign.context.search import sibling_targets
from dask_assign.filtering.space import SearchSpace
from dask_assign.io.library import read_library


def test_sibling_targets_of_many_candidates_are_each_ones_own():
    """A block names the same ion many times: the partners of each candidate are those of
    its ion searched alone, in the same order."""
    config = AssignConfig()
    table = build_ions(read_library(DEMO_DATA / "library.csv"),
                       select_adducts("positive", config.adducts), config.max_isotope,
                       config.isotope_min_abundance, config.isotope_merge_ppm)
    space = SearchSpace.build(table, config.ppm * config.refine_widen)
    rng = np.random.default_rng(0)
    ions = rng.choice(rng.choice(len(space.mz), 60, replace=False), 300)  # repeats
    owner, cluster, log_cluster, own, member, row = sibling_targets(space, ions, 5.0)
    assert np.all(np.diff(owner) >= 0) and owner.size > ions.size
    for c in range(0, ions.size, 7):
        o1, c1, l1, w1, m1, r1 = sibling_targets(space, ions[c:c + 1], 5.0)
        mine = np.flatnonzero(owner == c)
        np.testing.assert_array_equal(cluster[mine], c1)
        np.testing.assert_array_equal(log_cluster[mine], l1)
        np.testing.assert_array_equal(own[mine], w1)
        # Members, partner by partner.
        for k, p in enumerate(mine):
            np.testing.assert_array_equal(row[member == p], r1[m1 == k])


def test_compiled_sibling_targets_equal_the_vectorised_ones():
    """The compiled per-group builder gives the same partner clusters, members and
    abundances as the vectorised one, whatever the partner window merges (fine structure of
    S, Cl and Br compounds: clusters, chains of close isotopologues), and where a group's
    monoisotopic ion is missing from the table."""
    import dataclasses

    import pandas as pd

    from dask_assign.context.search import _distinct_sibling_targets, distinct_sibling_targets
    from tests.conftest import library_frame
    from tests.simulate import random_formulas

    rng = np.random.default_rng(4)
    formulas = random_formulas(rng, 150)
    lib = library_frame([(f"c{i}", f, 5.0) for i, f in enumerate(formulas)])
    config = AssignConfig()
    table = build_ions(lib, select_adducts("positive", config.adducts), config.max_isotope,
                       config.isotope_min_abundance, config.isotope_merge_ppm)
    space = SearchSpace.build(table, config.ppm * config.refine_widen)
    ions = np.unique(rng.choice(len(space.mz), 2000))
    assert pd.Series(space.group[ions]).duplicated().any()  # ions sharing a group
    no_mono = dataclasses.replace(space, group_mono=np.where(
        rng.random(space.group_mono.size) < 0.2, -1, space.group_mono))
    for sp, ppm in [(space, 0.5), (space, 5.0), (space, 50.0), (space, 500.0), (no_mono, 5.0)]:
        fast = distinct_sibling_targets(sp, ions, ppm)
        slow = _distinct_sibling_targets(sp, ions, ppm)
        assert fast[0].size > ions.size
        for name, a, b in zip(("owner", "cluster", "log_cluster", "own_cluster", "member",
                               "member_row"), fast, slow, strict=True):
            if a.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13, err_msg=name)
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{name} at {ppm} ppm")
