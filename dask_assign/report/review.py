"""The review queue: which calls a curator should look at, and what to look at beside them.

A call is doubtful when its probability lies between two thresholds (it is neither clearly
right nor clearly the peak's "not in library"), when library isomers share its probability
(the formula is clear but the compound is not), or when the peak had more candidates than the
run kept (``overflow``). All thresholds are here, as named defaults of :class:`ReviewRule`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Calls with a probability in ``[DOUBT_LOW, DOUBT_HIGH)`` are doubtful (the probability of the
#: call: of its compound, or of "not in library" for a null call).
DOUBT_LOW = 0.2
DOUBT_HIGH = 0.9
#: An isomer tie: the call's library isomers (same formula, adduct and isotopologue) hold at
#: least this share of the call's own probability (``p_formula - prob >= ISOMER_TIE * prob``).
ISOMER_TIE = 0.5
#: Co-eluting partners listed per peak at most (the nearest in RT).
MAX_PARTNERS = 12

#: Reasons a peak is in the queue, in the order the ``reason`` column names them.
REASONS = ("probability", "isomer tie", "overflow")


@dataclass(frozen=True)
class ReviewRule:
    """What makes a call doubtful.

    Attributes
    ----------
    low, high : float
        A call is doubtful when ``low <= prob < high``.
    isomer_tie : float
        A call is an isomer tie when ``p_formula - prob >= isomer_tie * prob``.

    Examples
    --------
    >>> ReviewRule(0.5, 0.4)
    Traceback (most recent call last):
    ...
    ValueError: review thresholds: need 0 <= low < high <= 1, not low=0.5, high=0.4
    """

    low: float = DOUBT_LOW
    high: float = DOUBT_HIGH
    isomer_tie: float = ISOMER_TIE

    def __post_init__(self):
        if not 0 <= self.low < self.high <= 1:
            raise ValueError(f"review thresholds: need 0 <= low < high <= 1, not "
                             f"low={self.low:g}, high={self.high:g}")
        if not self.isomer_tie > 0:
            raise ValueError(f"isomer tie share: must be positive, not {self.isomer_tie:g}")

    def describe(self) -> str:
        """The rule in words (for the page)."""
        return (f"probability of the call in [{self.low:g}, {self.high:g}); or library isomers "
                f"holding at least {self.isomer_tie:g} of the call's probability (isomer tie); "
                "or more candidates than the run kept (overflow)")


def doubt_reasons(assignments: pd.DataFrame, rule: ReviewRule = ReviewRule()) -> pd.Series:
    """Why each peak is doubtful: its reasons joined by ``", "``, ``""`` when it is not.

    Parameters
    ----------
    assignments : pandas.DataFrame
        ``prob``, ``p_formula``, ``compound_id``, ``overflow`` per peak.
    rule : ReviewRule

    Returns
    -------
    pandas.Series of str
        Aligned with ``assignments``.

    Examples
    --------
    >>> a = pd.DataFrame({"prob": [0.95, 0.6, 0.45, 0.99], "p_formula": [0.95, 0.6, 0.9, None],
    ...                   "compound_id": ["A", "B", "C", None],
    ...                   "overflow": [False, False, False, True]})
    >>> doubt_reasons(a).tolist()
    ['', 'probability', 'probability, isomer tie', 'overflow']
    """
    flags = doubt_flags(assignments, rule)
    out = np.full(len(assignments), "", dtype=object)
    for name in REASONS:
        hit = flags[name]
        out[hit] = np.where(out[hit] == "", name, out[hit] + ", " + name)
    return pd.Series(out, index=assignments.index, dtype=object)


def doubt_flags(assignments: pd.DataFrame, rule: ReviewRule = ReviewRule()) -> dict:
    """Each reason of :data:`REASONS` as a boolean array over ``assignments``."""
    prob = assignments["prob"].to_numpy(dtype=np.float64, na_value=np.nan)
    p_formula = assignments["p_formula"].to_numpy(dtype=np.float64, na_value=np.nan)
    called = assignments["compound_id"].notna().to_numpy()
    with np.errstate(invalid="ignore"):
        middle = (prob >= rule.low) & (prob < rule.high)
        tie = called & (p_formula - prob >= rule.isomer_tie * prob)
    overflow = assignments["overflow"].to_numpy(dtype=bool, na_value=False)
    return {"probability": middle, "isomer tie": tie, "overflow": overflow}


def review_queue(assignments: pd.DataFrame, rule: ReviewRule = ReviewRule()) -> pd.DataFrame:
    """The doubtful calls, the least certain first.

    Parameters
    ----------
    assignments : pandas.DataFrame
        The assignments table of a result (``assignments.parquet``).
    rule : ReviewRule
        The thresholds (:data:`DOUBT_LOW`, :data:`DOUBT_HIGH`, :data:`ISOMER_TIE` by default).

    Returns
    -------
    pandas.DataFrame
        The queue's rows of ``assignments`` (its index kept) with a ``reason`` column, ordered
        by the probability of the call (peaks without one, flagged overflow, first), then by
        their order in the table.
    """
    reason = doubt_reasons(assignments, rule).to_numpy()
    hit = reason != ""
    queue = assignments[hit].assign(reason=reason[hit])  # by position: any index will do
    key = queue["prob"].to_numpy(dtype=np.float64, na_value=np.nan)
    order = np.argsort(np.where(np.isnan(key), -1.0, key), kind="stable")
    return queue.iloc[order]


def molecule_of(assignments: pd.DataFrame, candidates: pd.DataFrame) -> np.ndarray:
    """The library compound each peak is about: its call, else its best candidate (a null call
    or a flagged peak), else ``None``."""
    molecule = assignments["compound_id"].astype(object).to_numpy(na_value=None).copy()
    best = candidates.loc[candidates["rank"] == 0, ["peak_id", "compound_id"]]
    pos = pd.Index(assignments["peak_id"]).get_indexer(best["peak_id"])
    ok = pos >= 0
    fill = np.full(len(assignments), None, dtype=object)
    fill[pos[ok]] = best["compound_id"].astype(object).to_numpy(na_value=None)[ok]
    none = pd.isna(molecule)
    molecule[none] = fill[none]
    return molecule


def coeluting_partners(assignments: pd.DataFrame, candidates: pd.DataFrame, rt_tol: float,
                       rows=None, limit: int = MAX_PARTNERS, molecule=None) -> pd.DataFrame:
    """The co-eluting partners of peaks: other peaks called as the same compound within the
    co-elution tolerance in RT (its other adducts and isotopologues).

    The context pass weighs such partners when it scores a peak; this finds them again from
    the tables alone: for each peak, the compound it is about (:func:`molecule_of`), and the
    peaks whose call is that compound with ``|RT difference| <= rt_tol``.

    Parameters
    ----------
    assignments, candidates : pandas.DataFrame
        The tables of a result.
    rt_tol : float
        The co-elution tolerance (minutes): the context pass's fitted one (``context.json``).
    rows : array of int, optional
        Positions in ``assignments`` of the peaks whose partners are wanted (all by default).
    limit : int
        Partners kept per peak, the nearest in RT.
    molecule : array of object, optional
        :func:`molecule_of` of the tables, when the caller has it already.

    Returns
    -------
    pandas.DataFrame
        ``peak`` and ``partner`` (positions in ``assignments``), ``drt`` (partner's RT minus
        the peak's), ordered by ``peak`` then ``|drt|``.
    """
    n = len(assignments)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    molecule = molecule_of(assignments, candidates) if molecule is None else molecule
    rt = assignments["rt"].to_numpy(dtype=np.float64)
    call = assignments["compound_id"].astype(object).to_numpy(na_value=None)
    codes, uniques = pd.factorize(pd.Series(np.concatenate([call, molecule]), dtype=object))
    call_code, mol_code = codes[:n], codes[n:]
    called = np.flatnonzero(call_code >= 0)
    # One sorted key, compound then RT: a window in RT of one compound is one slice of it.
    width = float(np.nanmax(rt) - np.nanmin(rt)) + 4 * rt_tol + 1.0 if n else 1.0
    key = call_code[called] * width + rt[called]
    order = np.argsort(key, kind="stable")
    key, called = key[order], called[order]
    targets = rows[mol_code[rows] >= 0]
    centre = mol_code[targets] * width + rt[targets]
    lo = np.searchsorted(key, centre - rt_tol, side="left")
    hi = np.searchsorted(key, centre + rt_tol, side="right")
    count = hi - lo
    peak = np.repeat(targets, count)
    start = np.repeat(lo - np.cumsum(count) + count, count)
    partner = called[np.arange(peak.size) + start]
    drt = rt[partner] - rt[peak]
    keep = partner != peak
    peak, partner, drt = peak[keep], partner[keep], drt[keep]
    order = np.lexsort((partner, np.abs(drt), peak))
    peak, partner, drt = peak[order], partner[order], drt[order]
    first = np.r_[0, np.flatnonzero(np.diff(peak)) + 1] if peak.size else np.zeros(0, int)
    rank = np.arange(peak.size) - np.repeat(first, np.diff(np.r_[first, peak.size]))
    keep = rank < limit
    return pd.DataFrame({"peak": peak[keep], "partner": partner[keep], "drt": drt[keep]})
