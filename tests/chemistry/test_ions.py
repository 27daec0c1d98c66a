"""The ion table: every element's isotopologues of the whole ion, adduct atoms included, and
adduct feasibility from every element, against hand-computed masses."""

import numpy as np
import pandas as pd
import pytest

from dask_assign.chemistry.adducts import read_adducts, select_adducts
from dask_assign.chemistry.ions import build_ions
from dask_assign.config import AssignConfig
from dask_assign.filtering.space import SearchSpace, prepare_library
from tests.conftest import library_frame

H, CL35, CL37, E = 1.00782503207, 34.968852682, 36.965902602, 0.00054857990946
C6H5CL = 6 * 12 + 5 * H + CL35


def labels(table, compound=0, adduct=0):
    ions = table.ions[(table.ions["compound"] == compound) & (table.ions["adduct"] == adduct)]
    return {table.isotope_labels[i]: (mz, np.exp(la)) for i, mz, la in
            zip(ions["isotope"], ions["mz"], ions["log_abundance"], strict=True)}


def test_chlorine_m2_where_it_is():
    """Chlorobenzene [M+H]+: the 37Cl1 peak 1.99705 above the monoisotopic one, at 0.3199 of
    it (the old 13C-only table put 0.0018 at 13C2's place)."""
    lib = library_frame([("cb", "C6H5Cl", np.nan)])
    t = build_ions(lib, select_adducts("positive", ["[M+H]+"]), min_abundance=1e-3)
    got = labels(t)
    assert got[None][0] == pytest.approx(C6H5CL + H - E, abs=1e-6)
    assert got["37Cl1"][0] == pytest.approx(C6H5CL + H - E + CL37 - CL35, abs=1e-6)
    assert got["37Cl1"][1] == pytest.approx(0.2424 / 0.7576, abs=1e-4)


def test_the_adducts_atoms_are_in_the_pattern():
    """[M+Cl]- of glucose carries chlorine's 37Cl peak; the acetate adduct's two carbons add
    to 13C1 (8 carbons, not 6)."""
    lib = library_frame([("glc", "C6H12O6", np.nan)])
    t = build_ions(lib, select_adducts("negative", ["[M+Cl]-", "[M+Hac-H]-"]),
                   min_abundance=1e-3)
    assert labels(t, adduct=0)["37Cl1"][1] == pytest.approx(0.2424 / 0.7576, rel=1e-3)
    ratio = 0.0107 / 0.9893
    assert labels(t, adduct=1)["13C1"][1] == pytest.approx(8 * ratio, rel=0.02)
    assert labels(t, adduct=0)["13C1"][1] == pytest.approx(6 * ratio, rel=0.02)


def test_a_halogen_loss_adduct_is_searched_where_the_compound_has_the_halogen(tmp_path):
    """A user table's [M-Cl]+ and [M+H-HF]+: searched for the compounds holding Cl (or F),
    and only for them."""
    table = tmp_path / "adducts.tsv"
    table.write_text("name\tmode\tmult\tadd\tsub\tcharge\tprior\n"
                     "[M+H]+\tpositive\t1\tH\t-\t1\t1.0\n"
                     "[M-Cl]+\tpositive\t1\t-\tCl\t1\t0.2\n"
                     "[M+H-HF]+\tpositive\t1\tH\tHF\t1\t0.1\n")
    lib = library_frame([("chloro", "C6H5Cl", np.nan), ("fluoro", "C6H5F", np.nan),
                         ("plain", "C6H6O", np.nan)])
    adducts = list(read_adducts(table, "positive").values())
    t = build_ions(lib, adducts, max_isotope=0)
    shown = {(lib["compound_id"][c], t.adduct_names[a]) for c, a in
             zip(t.ions["compound"], t.ions["adduct"], strict=True)}
    assert ("chloro", "[M-Cl]+") in shown and ("fluoro", "[M+H-HF]+") in shown
    assert ("plain", "[M-Cl]+") not in shown and ("chloro", "[M+H-HF]+") not in shown
    mz = t.ions[(t.ions["compound"] == 0) & (t.ions["adduct"] == 1)]["mz"].iloc[0]
    assert mz == pytest.approx(6 * 12 + 5 * H - E, abs=1e-6)  # C6H5+


def test_space_lookups_and_resolution():
    """The space's group lookups find each ion's isotopologues, most abundant first, and its
    monoisotopic ion; resolving at a mass spread merges only what lies closer."""
    lib = library_frame([("cb", "C6H5Cl", 5.0), ("glc", "C6H12O6", 3.0)])
    t = build_ions(lib, select_adducts("positive", ["[M+H]+", "[M+Na]+"]),
                   min_abundance=1e-4)
    space = SearchSpace.build(t, 20.0)
    for g in np.unique(space.group):
        rows = space.group_rows[space.group_start[g]:space.group_start[g + 1]]
        assert (space.group[rows] == g).all()
        assert np.all(np.diff(space.log_abundance[rows]) <= 0)
        assert space.group_mono[g] in rows and space.isotope[space.group_mono[g]] == 0
    assert np.all(np.diff(space.mz) >= 0)
    coarse = space.resolved(30.0)
    assert len(coarse.mz) < len(space.mz)
    # Nothing is lost: each ion's summed abundance is the same.
    for sp in (space, coarse):
        total = pd.Series(np.exp(sp.log_abundance)).groupby(sp.group).sum()
        np.testing.assert_allclose(total.sort_index(), pd.Series(np.exp(
            space.log_abundance)).groupby(space.group).sum().sort_index(), rtol=1e-12)


def test_an_intense_small_acids_13c2_ion_is_searched_by_default():
    """Fumaric acid's [M+H]+ 13C2 ion is 7.0e-4 of its M+0 (binomial over 4 carbons, by
    hand): below the old 1e-3 threshold, yet a peak of 10M counts shows it at 7,000. The
    default table has it, 2 x (13C - 12C) above M+0, and its 18O1 ion 20 ppm below it."""
    lib = library_frame([("fum", "C4H4O4", np.nan)])
    space = prepare_library(lib, AssignConfig(adducts=("[M+H]+",)))
    got = {space.isotope_labels[i]: (mz, np.exp(la)) for i, mz, la in
           zip(space.isotope, space.mz, space.log_abundance, strict=True)}
    r = 0.0107 / 0.9893
    assert got["13C2"][1] == pytest.approx(6 * r * r, rel=0.03)
    mono = 4 * 12 + 5 * H + 4 * 15.99491461957 - E
    assert space.mz[space.isotope == 0][0] == pytest.approx(mono, abs=1e-6)
    assert got["13C2"][0] == pytest.approx(mono + 2 * 1.0033548378, abs=1e-6)
    assert (got["13C2"][0] - got["18O1"][0]) / got["13C2"][0] * 1e6 == pytest.approx(20.7, abs=0.2)
