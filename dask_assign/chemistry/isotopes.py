"""Isotopologues of ions from every element: the fine-structure peaks of an ion's isotope
pattern, their relative abundances and labels (``13C1``, ``18O1``, ``13C1+37Cl1``).

An ion's isotopologues are its configurations of heavy (or light) isotopes. For one element
with ``n`` atoms the chance of ``k_i`` atoms of isotope ``i`` against all atoms in the
principal (most abundant) isotope is the multinomial ratio

    n! / ((n - K)! k_1! ... k_m!) * prod (p_i / p_0) ** k_i,       K = k_1 + ... + k_m,

and an ion's configuration is a product over its elements. Isotope masses and abundances are
molmass's (IUPAC), so no table is typed in here. Configurations are enumerated exactly, element
by element, keeping those above a relative abundance (pruned with an upper bound of what the
remaining elements can add, so nothing above the threshold is lost); the work is vectorised
over all ions of a library at once. :func:`merge_unresolved` then joins the isotopologues of one
ion that lie closer than the mass resolution (``13C1`` and ``17O1`` are 0.9 mDa apart).

Examples
--------
>>> table = isotopologues({"C": np.array([6]), "H": np.array([5]), "Cl": np.array([1])},
...                       min_abundance=0.01)
>>> [(table.labels[c], round(float(np.exp(a)), 4))
...  for c, a in zip(table.label, table.log_abundance)]
[(None, 1.0), ('13C1', 0.0649), ('37Cl1', 0.32), ('13C1+37Cl1', 0.0208)]
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache

import numba
import numpy as np
import pandas as pd
from molmass import ELEMENTS

from dask_assign.config import AssignConfig


@dataclass(frozen=True)
class ElementIsotopes:
    """The stable isotopes of one element, against its principal (most abundant) isotope.

    Attributes
    ----------
    symbol : str
    mass_numbers : tuple of int
        Of the other isotopes (nonzero natural abundance), in increasing order.
    neutrons : tuple of int
        Mass number of each other isotope minus the principal one's.
    delta_mass : tuple of float
        Mass of each other isotope minus the principal one's (u).
    log_ratio : tuple of float
        ``log(p_i / p_0)`` of each other isotope.
    """

    symbol: str
    mass_numbers: tuple
    neutrons: tuple
    delta_mass: tuple
    log_ratio: tuple

    def label(self, counts) -> str:
        """``"17O1+18O1"`` for the counts of the other isotopes (empty for none)."""
        return "+".join(f"{a}{self.symbol}{k}" for a, k in zip(self.mass_numbers, counts,
                                                             strict=True) if k)


@cache
def element_isotopes(symbol: str) -> ElementIsotopes:
    """Isotope data of an element (molmass); no other isotopes for a monoisotopic element."""
    stable = [(a, iso.mass, iso.abundance) for a, iso in ELEMENTS[symbol].isotopes.items()
              if iso.abundance > 0]
    principal = max(stable, key=lambda x: x[2])
    others = sorted(x for x in stable if x[0] != principal[0])
    return ElementIsotopes(symbol, tuple(a for a, _, _ in others),
                           tuple(a - principal[0] for a, _, _ in others),
                           tuple(m - principal[1] for _, m, _ in others),
                           tuple(math.log(p / principal[2]) for _, _, p in others))


def parse_label(text) -> dict:
    """The substitutions an isotopologue label names, ``{(mass number, element): count}``
    (empty for the monoisotopic ion: ``None``, ``""``, ``"M+0"``, ``"M0"``).

    >>> parse_label("13C1+18O1") == parse_label("18O1+13C1")
    True
    """
    import re

    if text is None or (isinstance(text, float) and math.isnan(text)):
        return {}
    text = str(text).strip()
    if text in ("", "M+0", "M0", "12C", "0"):
        return {}
    out = {}
    for part in text.split("+"):
        m = re.fullmatch(r"(\d+)([A-Z][a-z]?)(\d*)", part.strip())
        if not m:
            raise ValueError(f"not an isotopologue label: {text!r}")
        out[(int(m.group(1)), m.group(2))] = out.get((int(m.group(1)), m.group(2)), 0) \
            + int(m.group(3) or 1)
    return out


def label_shift(text) -> int:
    """Neutrons an isotopologue label adds (``13C1+18O1``: 3)."""
    total = 0
    for (mass_number, symbol), k in parse_label(text).items():
        total += k * (mass_number - _principal(symbol))
    return total


@cache
def _principal(symbol: str) -> int:
    return max((iso.abundance, a) for a, iso in ELEMENTS[symbol].isotopes.items())[1]


def hill_order(symbols) -> list[str]:
    """Elements in Hill order: C, H, then alphabetical (the order of labels)."""
    symbols = set(symbols)
    head = [s for s in ("C", "H") if s in symbols and "C" in symbols]
    return head + sorted(symbols - set(head))


def _log_multinomial(n: int, counts) -> float:
    k = sum(counts)
    return (math.lgamma(n + 1) - math.lgamma(n - k + 1)
            - sum(math.lgamma(c + 1) for c in counts))


def element_configs(element: ElementIsotopes, n: int, log_min: float) -> list[tuple]:
    """Configurations of ``n`` atoms of one element with log ratio to the all-principal one of
    at least ``log_min``: ``(counts, log_ratio, delta_mass)``, the all-principal one first.

    Each count is bounded first by its own binomial, an upper bound of the multinomial (the
    product of binomials is at least the multinomial), then the exact ratio decides.
    """
    r = element.log_ratio
    if n == 0 or not r:
        return [((0,) * len(r), 0.0, 0.0)]
    ks = np.arange(n + 1)
    lbin = [np.array([_log_multinomial(n, (k,)) for k in ks]) + ks * ri for ri in r]
    best = [float(b.max()) for b in lbin]
    allowed = [ks[b + (sum(best) - bi) >= log_min] for b, bi in zip(lbin, best, strict=True)]
    out = []
    for counts in itertools.product(*allowed):
        if sum(counts) > n:
            continue
        lr = _log_multinomial(n, counts) + sum(c * ri for c, ri in zip(counts, r, strict=True))
        if lr >= log_min:
            out.append((tuple(int(c) for c in counts), lr,
                        sum(c * d for c, d in zip(counts, element.delta_mass, strict=True))))
    out.sort(key=lambda x: (sum(x[0]) > 0, x[0]))
    return out


@dataclass(frozen=True)
class Isotopologues:
    """The isotopologues of a set of ions (long format).

    Attributes
    ----------
    ion : numpy.ndarray (int64)
        The ion (row of the input counts) of each isotopologue; rows grouped by ion, each
        ion's all-principal isotopologue (label 0) first.
    delta_mass : numpy.ndarray
        Mass above the ion's monoisotopic mass (u; negative for a lighter isotope).
    log_abundance : numpy.ndarray
        log of the abundance relative to the monoisotopic isotopologue.
    nominal : numpy.ndarray (int64)
        Neutrons added (the nominal mass shift, negative for a lighter isotope).
    label : numpy.ndarray (int64)
        Index into ``labels``; 0 is the monoisotopic one (``None``).
    labels : tuple
        ``None``, then texts such as ``"13C1"``, ``"13C1+18O1"``.
    """

    ion: np.ndarray
    delta_mass: np.ndarray
    log_abundance: np.ndarray
    nominal: np.ndarray
    label: np.ndarray
    labels: tuple

    def __len__(self) -> int:
        return int(self.ion.size)


#: Fixed cost of one element's pass over a group of ions, in rows' worth of work (Python and
#: numpy call overhead): ions are grouped by their elements only where that saves passes.
PASS_ROWS = 5000


def isotopologues(counts: dict, min_abundance: float = AssignConfig.isotope_min_abundance,
                  max_shift: int = 3) -> Isotopologues:
    """Every isotopologue of each ion above ``min_abundance`` of its monoisotopic one.

    Parameters
    ----------
    counts : dict of str to numpy.ndarray
        Atoms of each element in each ion (arrays of one length, non-negative integers).
    min_abundance : float
        Smallest abundance kept, relative to the monoisotopic isotopologue (in (0, 1]).
    max_shift : int
        Largest nominal mass shift kept (neutrons added or removed).

    Returns
    -------
    Isotopologues
    """
    if not 0 < min_abundance <= 1:
        raise ValueError("min_abundance must lie in (0, 1]")
    n_ions = len(next(iter(counts.values()))) if counts else 0
    order = [s for s in hill_order(counts) if element_isotopes(s).log_ratio]
    atoms = {}
    for s in order:
        atoms[s] = np.asarray(counts[s], dtype=np.int64)
        if (atoms[s] < 0).any():
            raise ValueError(f"negative count of {s}")
    log_min = math.log(min_abundance)
    if not order or n_ions < 2 * PASS_ROWS:  # two groups would cost more than one pass
        return _isotopologues_of(atoms, n_ions, log_min, max_shift, element_configs)
    # Ions grouped by the elements they hold: a library of many elements (HMDB: dozens)
    # holds most of them in a few ions, and each element's pass is over every row of its
    # group. Each ion's set as integers, 62 elements a word (far faster to sort than rows
    # of booleans), combined word by word into one group id.
    held = np.stack([atoms[s] > 0 for s in order], axis=1)
    group = np.zeros(n_ions, dtype=np.int64)
    for w in range(0, len(order), 62):
        bits = held[:, w:w + 62] @ (1 << np.arange(min(62, len(order) - w), dtype=np.int64))
        word = np.unique(bits, return_inverse=True)[1].ravel()
        group = np.unique(group * (int(word.max()) + 1) + word, return_inverse=True)[1].ravel()
    sets = held[np.unique(group, return_index=True)[1]]
    # Row passes either way, and each group's pass costs about PASS_ROWS rows more.
    sizes = np.bincount(group)
    grouped = float((sizes + PASS_ROWS) @ sets.sum(axis=1))
    if len(sets) == 1 or grouped >= n_ions * len(order):
        return _isotopologues_of(atoms, n_ions, log_min, max_shift, element_configs)
    # Each element's configurations by atom count, pruned at the threshold less what the
    # other elements of any ion could add: built once, then each group takes those above its
    # own (tighter) bound, which are what element_configs would give it.
    tables = [(element_isotopes(s), n) for s, n in atoms.items()]
    loosest = {el.symbol: log_min - _gain_bound(el, tables) for el, _ in tables}
    built: dict = {}

    def configs(el: ElementIsotopes, v: int, bound: float) -> list:
        if (el.symbol, v) not in built:
            built[el.symbol, v] = element_configs(el, v, loosest[el.symbol])
        return [c for c in built[el.symbol, v] if c[1] >= bound]

    parts = []
    by_group = np.argsort(group, kind="stable")  # each group's rows, ascending
    ends = np.cumsum(sizes)
    for g, has in enumerate(sets):
        rows = by_group[ends[g] - sizes[g]:ends[g]]
        sub = {s: atoms[s][rows] for s, h in zip(order, has, strict=True) if h}
        parts.append((rows, _isotopologues_of(sub, rows.size, log_min, max_shift, configs,
                                              ordered=False)))
    labels = sorted({t for _, part in parts for t in part.labels[1:]}, key=_label_key)
    index = {None: 0, **{t: i + 1 for i, t in enumerate(labels)}}
    ion = np.concatenate([rows[part.ion] for rows, part in parts])
    label = np.concatenate([np.array([index[t] for t in part.labels], dtype=np.int64)[part.label]
                            for _, part in parts])
    by_ion = np.argsort(ion * (len(labels) + 1) + label)

    def joined(name):
        return np.concatenate([getattr(part, name) for _, part in parts])[by_ion]

    return Isotopologues(ion[by_ion], joined("delta_mass"), joined("log_abundance"),
                         joined("nominal"), label[by_ion], (None, *labels))


def _isotopologues_of(atoms: dict, n_ions: int, log_min: float, max_shift: int,
                      configs, ordered: bool = True) -> Isotopologues:
    """:func:`isotopologues` of ions that hold the elements of ``atoms`` (counts, Hill
    order, isotopic elements only); ``configs(element, count, bound)``:
    :func:`element_configs`. ``ordered=False`` leaves the rows unsorted (the caller sorts
    the groups' rows together)."""
    tables = [(element_isotopes(s), n) for s, n in atoms.items()]
    # Each element's configurations by atom count, pruned at the threshold less what the
    # other elements could add; and, per ion, the most the elements after each one can add.
    built = []
    for el, n in tables:
        bound = log_min - _gain_bound(el, tables)
        built.append({int(v): configs(el, int(v), bound) for v in np.unique(n)})
    remaining = np.zeros((len(tables) + 1, n_ions))
    for e in range(len(tables) - 1, -1, -1):
        best = np.zeros(int(tables[e][1].max()) + 1)
        for v, cfgs in built[e].items():
            best[v] = max(c[1] for c in cfgs)
        remaining[e] = remaining[e + 1] + best[tables[e][1]]

    ion = np.arange(n_ions, dtype=np.int64)
    lr = np.zeros(n_ions)
    dm = np.zeros(n_ions)
    neutrons = np.zeros(n_ions, dtype=np.int64)
    # The row's label: a dense id into ``parts``, the label texts of its configurations so
    # far (renumbered after each element, so that many elements never overflow a code).
    code = np.zeros(n_ions, dtype=np.int64)
    parts = [()]
    for e, ((el, n), per) in enumerate(zip(tables, built, strict=True)):
        flat = [cfg for v in sorted(per) for cfg in per[v]]
        start = np.zeros(int(n.max()) + 2, dtype=np.int64)
        for v in per:
            start[v + 1] = len(per[v])
        start = np.cumsum(start)
        c_lr = np.array([c[1] for c in flat])
        c_dm = np.array([c[2] for c in flat])
        c_nt = np.array([sum(k * d for k, d in zip(c[0], el.neutrons, strict=True))
                         for c in flat], dtype=np.int64)
        # The same counts are one label whatever the atom count (0: all principal).
        kinds = sorted({c[0] for c in flat}, key=lambda k: (sum(k) > 0, k))
        local = {k: i for i, k in enumerate(kinds)}
        c_kind = np.array([local[c[0]] for c in flat], dtype=np.int64)
        # Every row times every configuration of this element for its ion's count. Rows
        # without the element keep their one (all-principal, label digit 0) configuration
        # and still pass the bound (``remaining`` gains nothing from a zero count).
        has = n[ion] > 0
        carry = np.flatnonzero(~has)
        grow = np.flatnonzero(has)
        lo, hi = start[n[ion[grow]]], start[n[ion[grow]] + 1]
        size = hi - lo
        rep = np.repeat(grow, size)
        pick = np.repeat(lo - (np.cumsum(size) - size), size) + np.arange(rep.size)
        new_lr = lr[rep] + c_lr[pick]
        new_nt = neutrons[rep] + c_nt[pick]
        keep = (new_lr + remaining[e + 1][ion[rep]] >= log_min) & (np.abs(new_nt) <= max_shift)
        rep, pick = rep[keep], pick[keep]
        ion = np.concatenate([ion[carry], ion[rep]])
        lr = np.concatenate([lr[carry], new_lr[keep]])
        dm = np.concatenate([dm[carry], dm[rep] + c_dm[pick]])
        neutrons = np.concatenate([neutrons[carry], new_nt[keep]])
        combined = np.concatenate([code[carry] * len(kinds),
                                   code[rep] * len(kinds) + c_kind[pick]])
        code, seen = pd.factorize(combined)
        texts = [el.label(k) for k in kinds]
        parts = [parts[u // len(kinds)] + (texts[u % len(kinds)],) for u in seen.tolist()]
    # One label text per distinct code.
    names = ["+".join(t for t in p if t) or None for p in parts]
    labels = sorted({t for t in names if t is not None}, key=_label_key)
    index = {None: 0, **{t: i + 1 for i, t in enumerate(labels)}}
    label = np.asarray([index[t] for t in names], dtype=np.int64)[code]
    # Each ion's rows together, the monoisotopic one first: (ion, label) is unique per row.
    rows = np.argsort(ion * (len(labels) + 1) + label) if ordered else slice(None)
    return Isotopologues(ion[rows], dm[rows], lr[rows], neutrons[rows], label[rows],
                         (None, *labels))


def _gain_bound(el: ElementIsotopes, tables) -> float:
    """An upper bound of how much the other elements of any ion can raise a configuration's
    log ratio: per element, the product of its isotopes' largest binomial ratios (which
    bounds the multinomial) at its largest count (the ratios grow with the count)."""
    total = 0.0
    for other, n in tables:
        if other.symbol != el.symbol and n.size:
            m = int(n.max())
            total += sum(max(_log_multinomial(m, (k,)) + k * r for k in range(m + 1))
                         for r in other.log_ratio)
    return total


def _label_key(text: str):
    """Labels sorted by their number of substitutions, then alphabetically."""
    return (text.count("+"), text)


def merge_unresolved(group: np.ndarray, mz: np.ndarray, log_abundance: np.ndarray,
                     label: np.ndarray, tol_ppm: float, rows: np.ndarray | None = None):
    """Merge the isotopologues of one ion whose m/z lie within ``tol_ppm`` of each other.

    An instrument sees such a group as one peak: at the abundance-weighted mean m/z, with the
    summed abundance, labelled as its most abundant member.

    Parameters
    ----------
    group : numpy.ndarray (int64)
        The ion of each isotopologue.
    mz, log_abundance, label : numpy.ndarray
    tol_ppm : float
        Largest gap (ppm) between neighbours in m/z that an instrument cannot resolve.
    rows : numpy.ndarray (int64), optional
        The rows grouped by ``group`` in increasing order (any order within a group), where
        the caller has them; else found by a stable sort of ``group``.

    Returns
    -------
    keep : numpy.ndarray (int64)
        Row (of the input) that stands for each merged isotopologue: its most abundant member
        (the lowest m/z among equals), in increasing order.
    mz, log_abundance : numpy.ndarray
        Of the merged isotopologues, in the order of ``keep``.

    Examples
    --------
    >>> keep, mz, la = merge_unresolved(np.array([0, 0, 0]), np.array([100.0, 101.0, 101.00001]),
    ...                                 np.log([1.0, 0.1, 0.01]), np.array([0, 1, 2]), 1.0)
    >>> keep.tolist(), mz.round(6).tolist(), np.exp(la).round(3).tolist()
    ([0, 1], [100.0, 101.000001], [1.0, 0.11])
    """
    group = np.asarray(group, dtype=np.int64)
    if group.size == 0:
        return np.empty(0, np.int64), np.empty(0), np.empty(0)
    if rows is None:
        rows = np.argsort(group, kind="stable")
    # Group boundaries along ``rows``.
    g = group[rows]
    start = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True]).astype(np.int64)
    keep, mean, total = _merge_groups(np.ascontiguousarray(rows, dtype=np.int64), start,
                                      np.ascontiguousarray(mz, dtype=np.float64),
                                      np.exp(np.asarray(log_abundance, dtype=np.float64)),
                                      float(tol_ppm))
    kept = np.flatnonzero(keep)
    return kept, mean[kept], np.log(total[kept])


@numba.njit(cache=True, nogil=True)
def _merge_groups(rows, start, mz, w, tol_ppm):
    """Per group (``rows[start[g]:start[g + 1]]``, a few isotopologues each): members in m/z
    order, clusters of neighbours no more than ``tol_ppm`` apart, each cluster's weighted mean
    m/z and total at its most abundant member. Sums run in m/z order."""
    n = mz.size
    keep = np.zeros(n, np.bool_)
    mean = np.zeros(n)
    total = np.zeros(n)
    widest = 0
    for k in range(start.size - 1):
        widest = max(widest, start[k + 1] - start[k])
    buf = np.empty(widest, np.int64)
    for k in range(start.size - 1):
        a, m = start[k], start[k + 1] - start[k]
        for i in range(m):  # insertion sort by (m/z, row)
            r = rows[a + i]
            j = i
            while j > 0 and (mz[buf[j - 1]] > mz[r] or (mz[buf[j - 1]] == mz[r]
                                                       and buf[j - 1] > r)):
                buf[j] = buf[j - 1]
                j -= 1
            buf[j] = r
        i = 0
        while i < m:
            j = i + 1
            while j < m and mz[buf[j]] - mz[buf[j - 1]] <= tol_ppm * 1e-6 * mz[buf[j]]:
                j += 1
            s, sm, best = 0.0, 0.0, buf[i]
            for q in range(i, j):
                r = buf[q]
                s += w[r]
                sm += w[r] * mz[r]
                if w[r] > w[best]:
                    best = r
            keep[best] = True
            mean[best] = sm / s
            total[best] = s
            i = j
    return keep, mean, total
