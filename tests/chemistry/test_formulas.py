import numpy as np
import pytest

from dask_assign.chemistry.adducts import builtin_adducts
from dask_assign.chemistry.formulas import C13_SPACING, c13_abundances, contains, parse_formula

# Hand-computed from IUPAC monoisotopic masses: C 12, H 1.00782503207, O 15.99491461956,
# Na 22.9897692809, electron 0.00054857990946.
H, OX, NA, E = 1.00782503207, 15.99491461956, 22.9897692809, 0.00054857990946
GLUCOSE = 6 * 12 + 12 * H + 6 * OX


def test_glucose_mass_and_counts():
    f = parse_formula("C6H12O6")
    assert f.mass == pytest.approx(GLUCOSE, abs=1e-6)
    assert (f.count("C"), f.count("H"), f.count("O"), f.count("N")) == (6, 12, 6, 0)


@pytest.mark.parametrize("name,mz", [
    ("[M+Na]+", GLUCOSE + NA - E),                  # 203.0526
    ("[M+H]+", GLUCOSE + H - E),                    # 181.0707
    ("[M+2H]2+", (GLUCOSE + 2 * H - 2 * E) / 2),
    ("[2M+H]+", 2 * GLUCOSE + H - E),
    ("[M-H2O+H]+", GLUCOSE - 2 * H - OX + H - E),
])
def test_positive_ion_mz_hand_computed(name, mz):
    assert builtin_adducts("positive")[name].mz(GLUCOSE) == pytest.approx(mz, abs=1e-6)


def test_glucose_sodium_adduct_value():
    assert round(builtin_adducts("positive")["[M+Na]+"].mz(parse_formula("C6H12O6").mass),
                 4) == 203.0526


@pytest.mark.parametrize("name,mz", [
    ("[M-H]-", GLUCOSE - H + E),
    ("[M+Cl]-", GLUCOSE + 34.968852682 + E),
    ("[M+FA-H]-", GLUCOSE + 12 + H + 2 * OX + E),    # + HCOO-
])
def test_negative_ion_mz_hand_computed(name, mz):
    assert builtin_adducts("negative")[name].mz(GLUCOSE) == pytest.approx(mz, abs=1e-6)


@pytest.mark.parametrize("text", ["xyz", "C6H12O6)", "", "Qq2"])
def test_unparsable_formula(text):
    with pytest.raises(ValueError, match="cannot parse formula"):
        parse_formula(text)


def test_charged_formula_keeps_neutral_atom_mass():
    f = parse_formula("C5H14NO+")  # choline
    assert f.charge == 1
    assert f.mass == pytest.approx(5 * 12 + 14 * H + 14.0030740048 + OX, abs=1e-6)


def test_contains_for_adduct_feasibility():
    assert contains(parse_formula("C6H12O6"), parse_formula("H2O"))
    assert not contains(parse_formula("C6H6"), parse_formula("H2O"))
    assert contains(parse_formula("CH4O"), parse_formula("H4O2"), times=2)


def test_c13_abundance_is_binomial():
    n = np.array([1, 10, 40])
    got = c13_abundances(n, 2)
    p = 0.0107
    for i, c in enumerate(n):
        from math import comb
        mono = (1 - p) ** c
        assert got[i, 1] == pytest.approx(comb(c, 1) * p * (1 - p) ** (c - 1) / mono)
        assert got[i, 2] == pytest.approx(comb(c, 2) * p**2 * (1 - p) ** (c - 2) / mono)
    assert C13_SPACING == pytest.approx(13.0033548378 - 12, abs=1e-9)
