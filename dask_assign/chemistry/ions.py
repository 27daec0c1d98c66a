"""Library -> ion table: every compound x adduct x isotopologue that can be observed, by m/z.

An ion is the compound taken ``mult`` times, plus the adduct's atoms, minus those it removes;
its isotope pattern is computed from all of its elements
(:mod:`dask_assign.chemistry.isotopes`), so a
chlorinated compound's 37Cl peak, a thiol's 34S peak and an acetate adduct's extra carbons are
all where they really are. Isotopologues an instrument cannot tell apart (closer than
``merge_ppm``) are merged into one ion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd

from dask_assign.chemistry.adducts import Adduct
from dask_assign.chemistry.formulas import ELECTRON_MASS
from dask_assign.chemistry.isotopes import isotopologues, merge_unresolved
from dask_assign.config import AssignConfig

#: Columns of the ion table, in order.
ION_COLUMNS = ("mz", "compound", "adduct", "isotope", "rt", "log_adduct_prior",
               "log_abundance", "group")


@dataclass(frozen=True)
class IonTable:
    """The searchable ions of a library, sorted by m/z, with lookups for the output.

    Only numbers travel in ``ions``; names stay in ``compounds``, ``adduct_names`` and
    ``isotope_labels`` and are joined back when results are written, so the hot path holds no
    object columns.

    Attributes
    ----------
    ions : pandas.DataFrame
        One row per ion, sorted by ``mz``: ``mz``, ``compound`` (row of ``compounds``),
        ``adduct`` (index into ``adduct_names``), ``isotope`` (index into
        ``isotope_labels``; 0 is the monoisotopic ion), ``rt`` (library RT in minutes, NaN
        where unknown), ``log_adduct_prior``, ``log_abundance`` (the isotopologue against the
        monoisotopic one) and ``group`` (one number per compound x adduct, shared by its
        isotopologues).
    compounds : pandas.DataFrame
        ``compound_id``, ``name``, ``formula`` of the library, in library order.
    adduct_names : tuple of str
    isotope_labels : tuple
        ``None`` (monoisotopic), then labels such as ``"13C1"``, ``"37Cl1"``, ``"13C1+18O1"``.
    adduct_ions : numpy.ndarray
        ``(mult, |charge|, delta)`` of each adduct, so that ``mz = (mult * M + delta) / |charge|``.
    n_carbon : numpy.ndarray
        Carbon atoms of each compound (NaN where the library has no formula).
    carbon_per_mass : float
        Carbon atoms per dalton over the library: the typical carbon count of an unknown
        molecule of a given mass.
    """

    ions: pd.DataFrame
    compounds: pd.DataFrame
    adduct_names: tuple
    isotope_labels: tuple = (None,)
    adduct_ions: np.ndarray | None = None
    n_carbon: np.ndarray | None = None
    carbon_per_mass: float = 0.05

    def __len__(self) -> int:
        return len(self.ions)


def ion_order(mz: np.ndarray, compound: np.ndarray, adduct: np.ndarray,
              isotope: np.ndarray) -> np.ndarray:
    """The order of the ion table: by m/z, ties (isomers share every m/z) by compound, adduct
    and isotopologue; equal to ``np.lexsort((isotope, adduct, compound, mz))``.

    A stable sort by m/z, then each run of equal m/z put in key order where it is not
    already: an ion table whose m/z moved a little (merged isotopologues) is nearly in this
    order, and timsort takes a nearly sorted array in one pass, so the table resolved at a
    run's mass spread is re-sorted in a fraction of a full sort."""
    compound, adduct, isotope = (np.asarray(v, dtype=np.int64) for v in (compound, adduct,
                                                                         isotope))
    if mz.size == 0:
        return np.empty(0, np.int64)
    n_adduct, n_isotope = int(adduct.max()) + 1, int(isotope.max()) + 1
    key = (compound * n_adduct + adduct) * n_isotope + isotope
    order = np.argsort(mz, kind="stable")
    _order_ties(order, np.ascontiguousarray(mz, dtype=np.float64), key)
    return order


@numba.njit(cache=True, nogil=True)
def _order_ties(order, mz, key):
    """Each run of ``order`` with one m/z sorted by ``key``, stably, in place."""
    n = order.size
    i = 0
    while i < n:
        j = i + 1
        while j < n and mz[order[j]] == mz[order[i]]:
            j += 1
        for t in range(i + 1, j):
            if key[order[t]] < key[order[t - 1]]:
                run = order[i:j].copy()
                order[i:j] = run[np.argsort(key[run], kind="mergesort")]
                break
        i = j


def element_counts(library: pd.DataFrame) -> dict:
    """The ``n_<element>`` columns of a library frame, by element symbol."""
    return {c[2:]: library[c].to_numpy(dtype=np.int64) for c in library.columns
            if c.startswith("n_")}


def _feasible(counts: dict, has_formula: np.ndarray, adduct: Adduct) -> np.ndarray:
    """Compounds whose ``mult`` molecules hold every atom the adduct removes (any element;
    compounds known only by mass are assumed able to)."""
    n = has_formula.size
    enough = np.ones(n, dtype=bool)
    for el, k in adduct.elements.items():
        if k < 0:
            enough &= adduct.mult * counts.get(el, np.zeros(n, dtype=np.int64)) >= -k
    return enough | ~has_formula


def build_ions(library: pd.DataFrame, adducts, max_isotope: int = 3,
               min_abundance: float = AssignConfig.isotope_min_abundance,
               merge_ppm: float = 0.0) -> IonTable:
    """Expand a library into its ions.

    Parameters
    ----------
    library : pandas.DataFrame
        As returned by :func:`dask_assign.io.library.read_library`.
    adducts : sequence of Adduct
        The adducts searched.
    max_isotope : int
        Largest nominal mass shift of the isotopologues searched (neutrons added or removed:
        2 for ``13C2``, ``18O1`` or ``37Cl1``); 0 searches the monoisotopic ions only.
        Isotopologues need a formula; compounds known only by mass get the monoisotopic ion.
    min_abundance : float
        Smallest isotopologue kept, relative to the monoisotopic ion's abundance.
    merge_ppm : float
        Isotopologues of one ion closer than this (ppm) are merged (:func:`merge_unresolved`).

    Returns
    -------
    IonTable

    Notes
    -----
    A compound whose formula carries a charge (a permanent ion such as a quaternary amine) is
    searched as itself only, under the adduct ``[M]+`` or ``[M]-``, when its charge has the
    polarity of the adducts.

    Examples
    --------
    >>> from dask_assign.chemistry.adducts import builtin_adducts
    >>> lib = pd.DataFrame({"compound_id": ["glc"], "name": ["glucose"], "formula": ["C6H12O6"],
    ...     "monoisotopic_mass": [180.06338810418], "rt": [np.nan], "charge": [0], "n_C": [6],
    ...     "n_H": [12], "n_N": [0], "n_O": [6], "n_S": [0], "n_P": [0]})
    >>> t = build_ions(lib, [builtin_adducts("positive")["[M+Na]+"]], max_isotope=0)
    >>> round(float(t.ions["mz"].iloc[0]), 4)
    203.0526
    """
    adducts = list(adducts)
    names = [a.name for a in adducts]
    adduct_ions = [(a.mult, abs(a.charge), a.delta_mass) for a in adducts]
    positive = adducts[0].charge > 0
    mass = library["monoisotopic_mass"].to_numpy(dtype=np.float64)
    counts = element_counts(library)
    has_formula = library["formula"].notna().to_numpy()
    charge = library["charge"].to_numpy()
    prior_total = sum(a.prior for a in adducts)
    # Parent ions (compound x adduct): compound, adduct, monoisotopic m/z, |z|, log prior,
    # and the atoms of the whole ion.
    compound, adduct, mz0, z, log_prior, atoms = [], [], [], [], [], []
    neutral = charge == 0
    for k, a in enumerate(adducts):
        ok = neutral & _feasible(counts, has_formula, a)
        idx = np.flatnonzero(ok)
        compound.append(idx)
        adduct.append(np.full(idx.size, k))
        mz0.append(a.mz(mass[idx]))
        z.append(np.full(idx.size, abs(a.charge)))
        log_prior.append(np.full(idx.size, math.log(a.prior / prior_total)))
        delta = a.elements
        atoms.append({el: a.mult * counts.get(el, np.zeros(len(library), np.int64))[idx]
                      + delta.get(el, 0) for el in set(counts) | set(delta)})
    permanent = (charge > 0) if positive else (charge < 0)
    if permanent.any():
        # A permanent ion is observed as itself; its m/z loses (or gains) the charge's electrons.
        intrinsic = "[M]+" if positive else "[M]-"
        if intrinsic not in names:
            names.append(intrinsic)
            # Relations treat it as singly charged; multiply charged ones are rare.
            adduct_ions.append((1, 1, -ELECTRON_MASS if positive else ELECTRON_MASS))
        idx = np.flatnonzero(permanent)
        compound.append(idx)
        adduct.append(np.full(idx.size, names.index(intrinsic)))
        zz = np.abs(charge[idx])
        mz0.append((mass[idx] - charge[idx] * ELECTRON_MASS) / zz)
        z.append(zz)
        log_prior.append(np.full(idx.size, math.log(1.0 / len(names))))
        atoms.append({el: v[idx] for el, v in counts.items()})
    sizes = [len(c) for c in compound]
    compound, adduct = np.concatenate(compound), np.concatenate(adduct)
    mz0, z, log_prior = np.concatenate(mz0), np.concatenate(z), np.concatenate(log_prior)
    ion_atoms = {el: np.concatenate([part.get(el, np.zeros(size, np.int64))
                                     for part, size in zip(atoms, sizes, strict=True)])
                 for el in sorted({el for part in atoms for el in part})}
    # Compounds known only by mass have no isotope pattern: no atoms, only the monoisotopic.
    known = has_formula[compound]
    iso = isotopologues({el: np.where(known, v, 0) for el, v in ion_atoms.items()},
                        min_abundance, max_isotope)
    parent = iso.ion
    mz = mz0[parent] + iso.delta_mass / z[parent]
    keep = np.arange(parent.size)
    log_abundance = iso.log_abundance
    if merge_ppm > 0 and parent.size:
        keep, mz, log_abundance = merge_unresolved(parent, mz, log_abundance, iso.label,
                                                   merge_ppm)
        parent = parent[keep]
    ions = pd.DataFrame({
        "mz": mz,
        "compound": compound[parent].astype(np.int32),
        "adduct": adduct[parent].astype(np.int16),
        "isotope": iso.label[keep].astype(np.int16),
        "rt": library["rt"].to_numpy(dtype=np.float64)[compound[parent]],
        "log_adduct_prior": log_prior[parent],
        "log_abundance": log_abundance,
        "group": parent.astype(np.int32),
    })
    # Sorting by m/z (ties by compound, adduct, isotope) fixes one order for every partition.
    order = ion_order(*(ions[c].to_numpy() for c in ("mz", "compound", "adduct", "isotope")))
    ions = ions.take(order).reset_index(drop=True)
    compounds = library[["compound_id", "name", "formula"]].reset_index(drop=True)
    n_carbon = counts.get("C", np.zeros(len(library), np.int64))
    carbon = np.where(has_formula, n_carbon, np.nan).astype(np.float64)
    usable = has_formula & np.isfinite(mass) & (mass > 0)
    per_mass = float(carbon[usable].sum() / mass[usable].sum()) if usable.any() else 0.05
    return IonTable(ions=ions, compounds=compounds, adduct_names=tuple(names),
                    isotope_labels=iso.labels,
                    adduct_ions=np.asarray(adduct_ions, dtype=np.float64).reshape(-1, 3),
                    n_carbon=carbon, carbon_per_mass=per_mass)
