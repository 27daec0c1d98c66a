"""Library -> ion table: every compound x adduct x 13C isotope that can be observed, by m/z."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .adducts import Adduct
from .chem import C13_SPACING, ELECTRON_MASS, c13_abundances, parse_formula

#: Isotope labels of the output, by 13C count.
ISOTOPE_LABELS = (None, "13C1", "13C2")


@dataclass(frozen=True)
class IonTable:
    """The searchable ions of a library, sorted by m/z, with lookups for the output.

    Only numbers travel in ``ions``; names stay in ``compounds`` and ``adduct_names`` and are
    joined back when results are written, so the hot path holds no object columns.

    Attributes
    ----------
    ions : pandas.DataFrame
        One row per ion, sorted by ``mz``: ``mz``, ``compound`` (row of ``compounds``),
        ``adduct`` (index into ``adduct_names``), ``isotope`` (13C count), ``rt`` (library RT in
        minutes, NaN where unknown), ``log_adduct_prior``, ``log_abundance`` (isotope peak
        against the monoisotopic one).
    compounds : pandas.DataFrame
        ``compound_id``, ``name``, ``formula`` of the library, in library order.
    adduct_names : tuple of str
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
    adduct_ions: np.ndarray | None = None
    n_carbon: np.ndarray | None = None
    carbon_per_mass: float = 0.05

    def __len__(self) -> int:
        return len(self.ions)


def _feasible(library: pd.DataFrame, adduct: Adduct) -> np.ndarray:
    """Compounds able to form ``adduct``: neutral, and holding the atoms the adduct removes."""
    ok = library["charge"].to_numpy() == 0
    if adduct.sub:
        has_formula = library["formula"].notna().to_numpy()
        need = parse_formula(adduct.sub).elements
        enough = np.ones(len(library), dtype=bool)
        for el, n in need.items():
            col = f"n_{el}"
            have = library[col].to_numpy() if col in library else np.zeros(len(library))
            enough &= adduct.mult * have >= n
        ok &= enough | ~has_formula
    return ok


def build_ions(library: pd.DataFrame, adducts, max_isotope: int = 2) -> IonTable:
    """Expand a library into its ions.

    Parameters
    ----------
    library : pandas.DataFrame
        As returned by :func:`dask_assign.io.read_library`.
    adducts : sequence of Adduct
        The adducts searched.
    max_isotope : int
        Highest 13C count (0, 1 or 2). Isotope ions need a formula (carbon count); compounds
        known only by mass get the monoisotopic ion alone.

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
    >>> from dask_assign.adducts import builtin_adducts
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
    n_carbon = library["n_C"].to_numpy()
    has_formula = library["formula"].notna().to_numpy()
    prior_total = sum(a.prior for a in adducts)
    parts = []
    for k, adduct in enumerate(adducts):
        ok = _feasible(library, adduct)
        if ok.any():
            parts.append((np.flatnonzero(ok), k, adduct.mz(mass[ok]), abs(adduct.charge),
                          adduct.mult, math.log(adduct.prior / prior_total)))
    charge = library["charge"].to_numpy()
    permanent = (charge > 0) if positive else (charge < 0)
    if permanent.any():
        # A permanent ion is observed as itself; its m/z loses (or gains) the charge's electrons.
        intrinsic = "[M]+" if positive else "[M]-"
        if intrinsic not in names:
            names.append(intrinsic)
            # Relations treat it as singly charged; multiply charged ones are rare.
            adduct_ions.append((1, 1, -ELECTRON_MASS if positive else ELECTRON_MASS))
        z = np.abs(charge[permanent])
        mz = (mass[permanent] - charge[permanent] * ELECTRON_MASS) / z
        idx = np.flatnonzero(permanent)
        parts.append((idx, names.index(intrinsic), mz, z, 1, math.log(1.0 / len(names))))
    rows = []
    for idx, k, mz, z, mult, log_prior in parts:
        abund = c13_abundances(mult * n_carbon[idx], max_isotope)
        for iso in range(max_isotope + 1):
            keep = has_formula[idx] | (iso == 0)
            keep &= abund[:, iso] > 0
            rows.append(pd.DataFrame({
                "mz": (mz + iso * C13_SPACING / z)[keep],
                "compound": idx[keep].astype(np.int32),
                "adduct": np.int16(k),
                "isotope": np.int8(iso),
                "rt": library["rt"].to_numpy(dtype=np.float64)[idx][keep],
                "log_adduct_prior": np.float64(log_prior),
                "log_abundance": np.log(abund[keep, iso]),
            }))
    ions = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["mz", "compound", "adduct", "isotope", "rt", "log_adduct_prior",
                 "log_abundance"])
    # Sorting by m/z (ties by compound, adduct, isotope) fixes one order for every partition.
    ions = ions.sort_values(["mz", "compound", "adduct", "isotope"], kind="stable",
                            ignore_index=True)
    compounds = library[["compound_id", "name", "formula"]].reset_index(drop=True)
    carbon = np.where(has_formula, n_carbon, np.nan).astype(np.float64)
    known = has_formula & np.isfinite(mass) & (mass > 0)
    per_mass = float(carbon[known].sum() / mass[known].sum()) if known.any() else 0.05
    return IonTable(ions=ions, compounds=compounds, adduct_names=tuple(names),
                    adduct_ions=np.asarray(adduct_ions, dtype=np.float64).reshape(-1, 3),
                    n_carbon=carbon, carbon_per_mass=per_mass)
