"""Isotopologues from every element: against a peer library (IsoSpecPy), hand-computed
ratios, and a brute-force enumeration of every configuration."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from molmass import ELEMENTS, Formula

from dask_assign.chemistry.isotopes import (
    element_isotopes,
    isotopologues,
    label_shift,
    merge_unresolved,
    parse_label,
)
from tests.conftest import SHARED

IsoSpecPy = pytest.importorskip("IsoSpecPy")


def counts_of(formulas):
    comp = [{k: v.count for k, v in Formula(f).composition().items()} for f in formulas]
    elements = sorted({e for c in comp for e in c})
    return {e: np.array([c.get(e, 0) for c in comp], dtype=np.int64) for e in elements}


def peer(formula, threshold=1e-4):
    """(delta mass, abundance relative to the monoisotopic peak) of IsoSpecPy's fine
    structure."""
    peaks = list(IsoSpecPy.IsoThreshold(formula=formula, threshold=threshold, absolute=False))
    mono = Formula(formula).isotope.mass
    masses = np.array([m for m, _ in peaks])
    probs = np.array([p for _, p in peaks])
    p0 = probs[np.argmin(np.abs(masses - mono))]
    return masses - mono, probs / p0


def formulas_with_heteroatoms(n=400, seed=11):
    """Formulas of small molecules rich in S, Cl, Br, N and P (deterministic)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        parts = {"C": rng.integers(1, 40), "H": rng.integers(1, 60), "N": rng.integers(0, 6),
                 "O": rng.integers(0, 10), "S": rng.integers(0, 3), "P": rng.integers(0, 3),
                 "Cl": rng.integers(0, 4), "Br": rng.integers(0, 3)}
        if parts["S"] + parts["Cl"] + parts["Br"] + parts["N"] + parts["P"] == 0:
            continue
        out.append("".join(f"{e}{k}" for e, k in parts.items() if k))
    return out


def reported_formulas():
    """RepoRT's formulas with S, Cl, Br, N or P (where ../shared is present)."""
    found = sorted((SHARED / "RepoRT").glob("*/processed_data__*_rtdata_canonical_success.tsv"))
    if not found:
        return []
    table = pd.concat([pd.read_csv(f, sep="\t", usecols=["formula"]) for f in found])
    keep = table["formula"].dropna().astype(str)
    keep = keep[keep.str.contains("S|Cl|Br|N|P") & ~keep.str.contains(r"[+\-.]")]
    out = []
    for f in sorted(set(keep)):
        try:
            labelled = not all(k.isalpha() for k in Formula(f).composition())
        except Exception:  # RepoRT writes a few hydrates and mixtures ("2C11H15NO2")
            continue
        if not labelled:  # isotope-labelled standards ([2H]) have fixed heavy atoms
            out.append(f)
    return out[:600]


@pytest.mark.parametrize("source", ["generated", "RepoRT"])
def test_abundances_match_isospecpy(source):
    """Every isotopologue above 1% of the monoisotopic peak, within 2% (absolute, of M+0) of
    the peer's, on at least 300 formulas with heteroatoms."""
    formulas = formulas_with_heteroatoms() if source == "generated" else reported_formulas()
    if source == "RepoRT" and not formulas:
        pytest.skip("needs ../shared (the RepoRT tables)")
    assert len(formulas) >= 300
    table = isotopologues(counts_of(formulas), min_abundance=1e-3, max_shift=20)
    worst, compared = 0.0, 0
    for i, f in enumerate(formulas):
        rows = table.ion == i
        ours_dm, ours_a = table.delta_mass[rows], np.exp(table.log_abundance[rows])
        dm, rel = peer(f)
        for d, a in zip(dm, rel, strict=True):
            if a < 0.01:
                continue
            j = np.argmin(np.abs(ours_dm - d))
            assert abs(ours_dm[j] - d) < 1e-5, (f, d)  # the peer's isotopologue is ours too
            worst = max(worst, abs(ours_a[j] - a))
            compared += 1
    assert compared > len(formulas)
    assert worst < 0.02


def test_hand_computed_halogen_ratios():
    t = isotopologues({"C": np.array([6, 6]), "H": np.array([5, 5]), "Cl": np.array([1, 0]),
                       "Br": np.array([0, 1])}, min_abundance=0.01)
    label = {t.labels[c]: np.exp(a) for c, a, i in zip(t.label, t.log_abundance, t.ion,
                                                       strict=True) if i == 0}
    assert label["37Cl1"] == pytest.approx(0.2424 / 0.7576, abs=1e-4)  # 0.3199
    label = {t.labels[c]: np.exp(a) for c, a, i in zip(t.label, t.log_abundance, t.ion,
                                                       strict=True) if i == 1}
    assert label["81Br1"] == pytest.approx(0.4931 / 0.5069, abs=1e-4)  # 0.9728
    # 13C1 of six carbons: 6 p / (1 - p), p = 0.0107.
    assert label["13C1"] == pytest.approx(6 * 0.0107 / 0.9893, rel=1e-9)


def brute_force(counts: dict, min_abundance: float, max_shift: int):
    """Every configuration of every element (no pruning), as (delta mass, abundance)."""
    per_element = []
    for el, n in counts.items():
        iso = element_isotopes(el)
        options = []
        for ks in itertools.product(*(range(n + 1) for _ in iso.log_ratio)):
            if sum(ks) > n:
                continue
            logr = (math.lgamma(n + 1) - math.lgamma(n - sum(ks) + 1)
                    - sum(math.lgamma(k + 1) for k in ks)
                    + sum(k * r for k, r in zip(ks, iso.log_ratio, strict=True)))
            options.append((sum(k * d for k, d in zip(ks, iso.delta_mass, strict=True)), logr,
                            sum(k * d for k, d in zip(ks, iso.neutrons, strict=True))))
        per_element.append(options)
    out = []
    for combo in itertools.product(*per_element):
        dm, lr, nt = (sum(x[i] for x in combo) for i in range(3))
        if lr >= math.log(min_abundance) and abs(nt) <= max_shift:
            out.append((round(dm, 9), math.exp(lr)))
    return sorted(out)


@pytest.mark.parametrize("formula", ["C6H4Br2", "C5H11NO2S", "C2H2Cl4", "C10H12N5O7P",
                                     "C3H6Cl2S2", "C4H8Si", "B2H6"])
def test_pruning_loses_nothing_above_the_threshold(formula):
    """The pruned enumeration equals a brute force over all configurations (every element,
    ratios above 1 included: two bromines make 79Br81Br nearly twice the monoisotopic peak)."""
    counts = {k: v.count for k, v in Formula(formula).composition().items()}
    t = isotopologues({k: np.array([v]) for k, v in counts.items()}, 1e-4, max_shift=6)
    ours = sorted(zip(np.round(t.delta_mass, 9), np.exp(t.log_abundance), strict=True))
    expected = brute_force(counts, 1e-4, 6)
    assert [d for d, _ in ours] == [d for d, _ in expected]
    np.testing.assert_allclose([a for _, a in ours], [a for _, a in expected], rtol=1e-9)


def test_labels_name_the_substitutions():
    t = isotopologues(counts_of(["C5H11NO2S"]), 1e-3, max_shift=3)
    labels = {t.labels[c] for c in t.label}
    assert {None, "13C1", "15N1", "18O1", "34S1", "13C1+34S1"} <= labels
    for c in t.label:
        assert label_shift(t.labels[c]) == t.nominal[list(t.label).index(c)]
    assert parse_label("13C1+18O1") == parse_label("18O1+13C1")
    assert label_shift("13C1+18O1") == 3 and label_shift("10B1") == -1
    assert label_shift(None) == label_shift("M+0") == 0
    with pytest.raises(ValueError):
        parse_label("C13")


def test_lighter_isotopes_are_isotopologues_too():
    """Boron's principal isotope is 11B: 10B is an isotopologue one neutron lighter."""
    t = isotopologues({"B": np.array([1])}, 1e-3)
    assert t.labels[t.label[1]] == "10B1" and t.nominal[1] == -1
    assert np.exp(t.log_abundance[1]) == pytest.approx(
        ELEMENTS["B"].isotopes[10].abundance / ELEMENTS["B"].isotopes[11].abundance)


def test_merge_joins_what_an_instrument_cannot_resolve():
    group = np.array([0, 0, 0, 1])
    mz = np.array([200.0, 201.003355, 201.0040, 201.0040])  # 13C1 and 17O1: 3 ppm apart
    la = np.log([1.0, 0.1, 0.004, 1.0])
    keep, mz2, la2 = merge_unresolved(group, mz, la, np.array([0, 1, 2, 0]), 5.0)
    assert keep.tolist() == [0, 1, 3]  # the 13C1 stands for both; another ion is untouched
    assert np.exp(la2).tolist() == pytest.approx([1.0, 0.104, 1.0])
    assert mz2[1] == pytest.approx((0.1 * 201.003355 + 0.004 * 201.004) / 0.104)
    keep, _, _ = merge_unresolved(group, mz, la, np.array([0, 1, 2, 0]), 1.0)
    assert keep.tolist() == [0, 1, 2, 3]


def _merge_by_hand(group, mz, la, tol):
    """Oracle: each group's members sorted by m/z, cut where neighbours lie farther apart
    than ``tol`` ppm (of the heavier one); each cluster at its first most abundant member."""
    keep, mean, total = [], {}, {}
    for g in np.unique(group):
        members = sorted(np.flatnonzero(group == g), key=lambda r: (mz[r], r))
        cluster = [members[0]]
        for r in [*members[1:], None]:
            if r is not None and mz[r] - mz[cluster[-1]] <= tol * 1e-6 * mz[r]:
                cluster.append(r)
                continue
            w = np.exp(la[cluster])
            best = cluster[int(np.argmax(w))]
            keep.append(best)
            mean[best] = float((w * mz[cluster]).sum() / w.sum())
            total[best] = float(np.log(w.sum()))
            cluster = [r]
    keep = sorted(keep)
    return keep, [mean[k] for k in keep], [total[k] for k in keep]


@pytest.mark.parametrize("seed", range(5))
def test_merge_equals_a_merge_by_hand(seed):
    """Groups in any row order, ties in m/z and abundance, the given grouping or none."""
    rng = np.random.default_rng(seed)
    n = 400
    group = rng.integers(0, 60, n)
    mz = np.round(300 + rng.integers(0, 3, n) + rng.normal(0, 4e-4, n), 4)  # ties on purpose
    la = np.log(rng.choice([1.0, 0.5, 0.1, 0.1, 0.01], n))
    want = _merge_by_hand(group, mz, la, 3.0)
    for rows in (None, np.lexsort((rng.random(n), group))):
        keep, mz2, la2 = merge_unresolved(group, mz, la, np.zeros(n, int), 3.0, rows=rows)
        assert keep.tolist() == want[0]
        np.testing.assert_allclose(mz2, want[1], rtol=1e-15)
        np.testing.assert_allclose(la2, want[2], rtol=1e-12, atol=1e-15)


def test_threshold_and_shift_bounds():
    t = isotopologues(counts_of(["C20H30N5O6PS"]), 1e-2, max_shift=1)
    assert (np.exp(t.log_abundance) >= 1e-2 - 1e-12).all()
    assert (np.abs(t.nominal) <= 1).all()
    with pytest.raises(ValueError):
        isotopologues({"C": np.array([1])}, 0.0)


def test_a_library_of_many_elements_is_labelled():
    """A library that spans many elements (HMDB's does: metals, halogens, Se, Si, ...) has
    more combined isotope configurations than one integer code can count: each ion's
    isotopologues and labels are still those of the ion computed alone."""
    elements = ["C", "H", "N", "O", "S", "Cl", "Br", "Si", "Se", "K", "Fe", "Zn", "Cu", "Mg",
                "Ca", "B", "Sn", "Hg", "Pb", "Ni", "Cr", "Ti", "Mo", "Ge", "Te", "Cd", "Ru",
                "Pd", "W", "Ba"]
    rng = np.random.default_rng(0)
    n = 60
    counts = {el: np.zeros(n, dtype=np.int64) for el in elements}
    counts["C"][:] = rng.integers(1, 30, n)
    counts["H"][:] = rng.integers(1, 40, n)
    for i in range(n):
        for el in rng.choice(elements[3:], 2, replace=False):
            counts[el][i] = rng.integers(1, 3)
    together = isotopologues(counts)
    for i in range(0, n, 6):
        alone = isotopologues({el: c[i:i + 1] for el, c in counts.items() if c[i]})
        mine = together.ion == i
        got = dict(zip(np.asarray(together.labels, dtype=object)[together.label[mine]],
                       together.log_abundance[mine], strict=True))
        want = dict(zip(np.asarray(alone.labels, dtype=object)[alone.label],
                        alone.log_abundance, strict=True))
        assert got.keys() == want.keys() and len(got) > 1
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-12)


def test_ions_grouped_by_their_elements_give_the_table_of_one_pass(monkeypatch):
    """Grouping ions by the elements they hold (how a library of many elements is done fast)
    changes no row: the same table, bit for bit, as one pass over every ion."""
    import dask_assign.chemistry.isotopes as iso

    elements = ["C", "H", "N", "O", "S", "Cl", "Br", "Se", "K", "Fe", "Si", "B"]
    rng = np.random.default_rng(1)
    n = 3000
    counts = {el: np.zeros(n, dtype=np.int64) for el in elements}
    counts["C"][:] = rng.integers(1, 120, n)  # large ones: 13C1 beats the all-12C one
    counts["H"][:] = rng.integers(0, 200, n)
    for i in range(n):
        for el in rng.choice(elements[2:], rng.integers(0, 4), replace=False):
            counts[el][i] = rng.integers(1, 6)
    monkeypatch.setattr(iso, "PASS_ROWS", 0)
    grouped = iso.isotopologues(counts, 1e-3, max_shift=4)
    monkeypatch.setattr(iso, "PASS_ROWS", 10**9)
    single = iso.isotopologues(counts, 1e-3, max_shift=4)
    assert grouped.labels == single.labels and len(grouped) > 5 * n
    for field in ("ion", "delta_mass", "log_abundance", "nominal", "label"):
        np.testing.assert_array_equal(getattr(grouped, field), getattr(single, field))
