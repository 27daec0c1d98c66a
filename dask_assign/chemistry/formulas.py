"""Formulas, monoisotopic masses, element counts and 13C isotope abundances.

Formulas are parsed with :mod:`molmass` (a formula library made for mass spectrometry), so
Hill notation, groups (``CH3COOH``), isotope labels (``[13C]C5H12O6``) and charges (``C5H14NO+``)
are all understood the way the field writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from molmass import ELECTRON, Formula, FormulaError

#: Mass of an electron (u); adduct m/z values add or remove electrons explicitly.
ELECTRON_MASS = float(ELECTRON.mass)


#: Mass difference between 13C and 12C (u): the spacing of carbon isotope peaks at charge 1.
C13_SPACING = 1.0033548378


#: Natural abundance of 13C among carbon atoms.
C13_ABUNDANCE = 0.0107


@dataclass(frozen=True)
class ParsedFormula:
    """A parsed molecular formula.

    Attributes
    ----------
    formula : str
        The formula in Hill notation (as molmass writes it, charge included).
    mass : float
        Monoisotopic mass in u of the neutral formula (electrons of a charge not included).
    charge : int
        Net charge written in the formula (0 for neutral compounds).
    elements : dict
        Element symbol (or isotope label such as ``13C``) to atom count.
    """

    formula: str
    mass: float
    charge: int
    elements: dict

    def count(self, element: str) -> int:
        """Number of atoms of ``element`` (0 when absent)."""
        return int(self.elements.get(element, 0))


@lru_cache(maxsize=65536)
def parse_formula(text: str) -> ParsedFormula:
    """Parse a molecular formula.

    Parameters
    ----------
    text : str
        A formula such as ``"C6H12O6"``, ``"CH3COOH"`` or ``"C5H14NO+"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    ValueError
        If the text is not a formula.

    Examples
    --------
    >>> f = parse_formula("C6H12O6")
    >>> round(f.mass, 5), f.count("C"), f.count("N")
    (180.06339, 6, 0)
    """
    try:
        f = Formula(str(text).strip())
        comp = {sym: int(item.count) for sym, item in f.composition().items() if sym != "e-"}
        charge = int(f.charge)
        # molmass removes electrons for a charge; we keep the neutral-atom mass and add them back
        # per ion, so one convention (adducts.py) applies to every ion.
        mass = float(f.monoisotopic_mass) + charge * ELECTRON_MASS
    except (FormulaError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"cannot parse formula {text!r}: {err}".splitlines()[0]) from None
    if not comp or mass <= 0:
        raise ValueError(f"cannot parse formula {text!r}: no atoms")
    return ParsedFormula(formula=f.formula, mass=mass, charge=charge, elements=comp)


def contains(formula: ParsedFormula, part: ParsedFormula, times: int = 1) -> bool:
    """Whether ``formula`` (taken ``times`` times) holds every atom of ``part``.

    Used for adduct feasibility: no water loss from a compound without oxygen.

    >>> contains(parse_formula("C6H12O6"), parse_formula("H2O"))
    True
    >>> contains(parse_formula("C6H6"), parse_formula("H2O"))
    False
    """
    return all(times * formula.count(el) >= n for el, n in part.elements.items())


def c13_abundances(n_carbon: np.ndarray, max_isotope: int = 2) -> np.ndarray:
    """Relative abundance of the 13C isotope peaks against the monoisotopic peak.

    The count of 13C atoms in a molecule with ``n`` carbons is binomial(n, p), so the ratio of
    the ``k``-th isotope peak to the monoisotopic one is ``C(n, k) p^k / (1 - p)^k``.

    Parameters
    ----------
    n_carbon : array of int
        Carbon atoms per molecule (of the ion: a dimer counts twice).
    max_isotope : int
        Highest 13C count to return.

    Returns
    -------
    numpy.ndarray
        Shape ``(len(n_carbon), max_isotope + 1)``; column 0 is 1.

    Examples
    --------
    >>> c13_abundances(np.array([6]), 2).round(4).tolist()
    [[1.0, 0.0649, 0.0018]]
    """
    n = np.asarray(n_carbon, dtype=np.float64)
    ratio = C13_ABUNDANCE / (1.0 - C13_ABUNDANCE)
    out = np.ones((n.size, max_isotope + 1))
    for k in range(1, max_isotope + 1):
        # C(n, k) via the running product keeps it vectorised and exact for small k.
        out[:, k] = out[:, k - 1] * np.clip(n - (k - 1), 0, None) / k * ratio
    return out
