"""Relation search among co-eluting peaks, against hand-computed masses and brute force."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_assign.chemistry.adducts import builtin_adducts
from dask_assign.chemistry.formulas import C13_SPACING
from dask_assign.context.relations import ADDUCT, DECOY, ISOTOPE, RelationMaps, find_relations

GLUCOSE = 180.06338810418  # C6H12O6, monoisotopic


def adduct_maps(names, max_isotope=2, **kw):
    table = builtin_adducts("positive")
    ads = [table[n] for n in names]
    return ads, RelationMaps.build([a.mult for a in ads], [a.charge for a in ads],
                                   [a.delta_mass for a in ads], max_isotope, **kw)


def test_adduct_maps_take_one_ion_to_another_of_the_same_molecule():
    names = ["[M+H]+", "[M+Na]+", "[M+2H]2+", "[2M+H]+", "[M-H2O+H]+"]
    ads, maps = adduct_maps(names)
    mz = {a.name: a.mz(GLUCOSE) for a in ads}
    # Hand-computed: [M+H]+ 181.07066, [M+Na]+ 203.05261, [M+2H]2+ 91.03897, [2M+H]+ 361.13405
    assert round(mz["[M+Na]+"] - mz["[M+H]+"], 5) == 21.98194
    assert round(mz["[M+2H]2+"], 5) == 91.03897 and round(mz["[2M+H]+"], 5) == 361.13405
    for k in np.flatnonzero(maps.kind == ADDUCT):
        src, dst = names[maps.src[k]], names[maps.dst[k]]
        assert abs(maps.scale[k] * mz[src] + maps.shift[k] - mz[dst]) < 1e-9, (src, dst)
    assert (maps.kind == ADDUCT).sum() == 5 * 4


def test_isotope_maps_follow_the_charge():
    _, maps = adduct_maps(["[M+H]+", "[M+Na]+", "[M+2H]2+"], adducts=False)
    iso = maps.kind == ISOTOPE
    shifts = sorted(np.round(maps.shift[iso], 6).tolist())
    one, half = C13_SPACING, C13_SPACING / 2
    expected = sorted(round(x, 6) for x in (one, -one, 2 * one, -2 * one,
                                            half, -half, one, -one))
    assert shifts == expected  # one set per charge, not per adduct
    assert not (maps.kind == DECOY).any()


def brute_force(mz, rt, maps, ppm, rt_tol, anchor):
    out = set()
    rt_tol = np.broadcast_to(rt_tol, (len(maps),))
    for i in np.flatnonzero(anchor):
        for m in range(len(maps)):
            target = maps.scale[m] * mz[i] + maps.shift[m]
            for j in range(mz.size):
                if (j != i and abs(mz[j] - target) / target <= ppm * 1e-6
                        and abs(rt[j] - rt[i]) <= rt_tol[m]):
                    out.add((i, j, m))
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 60), per_map=st.booleans())
def test_sweep_finds_exactly_what_brute_force_finds(seed, n, per_map):
    rng = np.random.default_rng(seed)
    _, maps = adduct_maps(["[M+H]+", "[M+Na]+", "[M+NH4]+"], decoys=True)
    # Molecules with several ions each, plus noise, in a narrow RT range: many true partners.
    masses = rng.uniform(100, 400, size=max(n // 4, 1))
    ions = np.concatenate([masses + 1.007276, masses + 22.989218, masses + 1.007276 + C13_SPACING])
    mz = np.concatenate([ions, rng.uniform(100, 450, size=n)])[: max(n, 1)]
    mz = mz * (1 + rng.normal(0, 3e-6, size=mz.size))
    rt = rng.uniform(1.0, 1.3, size=mz.size).round(3)
    anchor = rng.random(mz.size) < 0.7
    # One tolerance, or one per kind of map (adducts wider than isotopes).
    tol = np.where(maps.kind == ADDUCT, 0.08, np.where(maps.kind == ISOTOPE, 0.02, 0.05)) \
        if per_map else 0.05
    i, j, m = find_relations(mz, rt, maps, ppm=10, rt_tol=tol, anchor=anchor)
    assert set(zip(i.tolist(), j.tolist(), m.tolist(), strict=True)) == brute_force(
        mz, rt, maps, 10, tol, anchor)
    key = i * 10_000 + m * 100 + j
    assert (np.diff(key) > 0).all()  # sorted by (i, m, j), no duplicates


def test_empty_and_lonely_peaks():
    _, maps = adduct_maps(["[M+H]+"])
    i, j, m = find_relations(np.empty(0), np.empty(0), maps, 10, 0.05)
    assert i.size == j.size == m.size == 0
    i, _, _ = find_relations(np.array([181.07066]), np.array([3.0]), maps, 10, 0.05)
    assert i.size == 0
