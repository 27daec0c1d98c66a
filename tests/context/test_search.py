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
