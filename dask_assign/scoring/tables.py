"""The assignments and candidates tables of a scored partition, and the probability of
each call's formula."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dask_assign.backends import to_pandas
from dask_assign.filtering.space import SearchSpace

if TYPE_CHECKING:
    from dask_assign.scoring.passes import PartitionResult

#: Columns and dtypes of the assignments table (one row per peak).
ASSIGNMENT_DTYPES = {
    "peak_id": "string", "compound_id": "string", "name": "string", "formula": "string",
    "adduct": "string", "isotope": "string", "prob": "float64", "p_ion": "float64",
    "p_formula": "float64", "p_null": "float64",
    "ppm_error": "float64", "rt_error": "float64", "n_candidates": "int64", "overflow": "bool",
    "refined": "bool", "n_partners": "int64", "context_changed": "bool", "mz": "float64",
    "rt": "float64", "intensity": "float64",
}


#: Columns and dtypes of the candidates table (one row per kept candidate).
CANDIDATE_DTYPES = {
    "peak_id": "string", "rank": "int64", "compound_id": "string", "adduct": "string",
    "isotope": "string", "ppm_error": "float64", "rt_error": "float64", "prob": "float64",
}


def _labels(space: SearchSpace, ion: np.ndarray,
            compound_columns=("compound_id", "name", "formula")) -> dict:
    """Compound columns, adduct and isotope of ions ``ion`` (``-1``: none, NA) as string
    arrays, taken from the library's own columns: no Python objects per row."""
    none = ion < 0
    safe = np.where(none, 0, ion)
    cidx = np.where(none, -1, space.compound[safe])
    out = {c: space.compounds[c].astype("string").array.take(cidx, allow_fill=True)
           for c in compound_columns}
    for col, names, codes in (("adduct", space.adduct_names, space.adduct),
                              ("isotope", space.isotope_labels, space.isotope)):
        out[col] = pd.array(list(names), dtype="string").take(
            np.where(none, -1, codes[safe]), allow_fill=True)
    return out


def formula_probability(space: SearchSpace, peak: np.ndarray, ion: np.ndarray,
                        prob: np.ndarray, called: np.ndarray) -> np.ndarray:
    """Probability of each peak's call at formula level: the summed probability of its
    candidates whose compound has the call's formula, the call and its library isomers, any
    ion of them (NaN where the call is the null).

    Examples
    --------
    Two isomers share a peak's probability; the formula takes both, and the second
    isotopologue of the first:

    >>> import types
    >>> space = types.SimpleNamespace(
    ...     compounds=pd.DataFrame({"formula": ["C6H12O6", "C6H12O6", "C5H10O5"]}),
    ...     compound=np.array([0, 1, 2, 0]))
    >>> formula_probability(space, np.array([0, 0, 0, 0]), np.array([0, 1, 2, 3]),
    ...                     np.array([0.5, 0.25, 0.125, 0.125]), np.array([0])).tolist()
    [0.875]
    """
    formula = space.compounds["formula"].astype("string")
    code = pd.factorize(formula.fillna(""), use_na_sentinel=False)[0].astype(np.int64)
    # A compound known only by mass is a formula of its own.
    code = np.where(formula.isna().to_numpy(), -1 - np.arange(code.size), code)
    out = np.full(called.size, np.nan)
    has = np.flatnonzero(called >= 0)
    if has.size == 0 or peak.size == 0:
        return out
    mine = code[space.compound[ion]]
    want = code[space.compound[called[has]]]
    at = np.searchsorted(has, peak)
    at = np.minimum(at, has.size - 1)
    same = (has[at] == peak) & (mine == want[at])
    out[has] = np.bincount(at[same], weights=prob[same], minlength=has.size)
    return out


def to_tables(result: PartitionResult, space: SearchSpace):
    """The assignments and candidates tables of a scored partition (pandas)."""
    part, scored, pair, prob, refined = (result.part, result.scored, result.pair, result.prob,
                                         result.refined)
    n = result.peaks["mz"].shape[0]
    f = scored.features
    peak_ids = to_pandas(part["peak_id"]).astype("string").array
    ion = f.ion.cpu().numpy()
    ppm = f.ppm_error.cpu().numpy()
    rt_err = (f.peak_rt - f.ion_rt).cpu().numpy()
    pair = pair.cpu().numpy()
    pair_prob = scored.prob.cpu().numpy()
    called = pair >= 0
    sel = pair[called]

    def on_calls(values):
        out = np.full(n, np.nan)
        out[called] = values[sel]
        return out

    ion_called = np.full(n, -1, dtype=np.int64)
    ion_called[called] = ion[sel]
    calls = _labels(space, ion_called)
    assignments = pd.DataFrame({
        "peak_id": peak_ids, **calls,
        "prob": prob.cpu().numpy(),
        "p_ion": on_calls(pair_prob),
        "p_formula": formula_probability(space, f.peak.cpu().numpy(), ion, pair_prob,
                                         ion_called),
        "p_null": scored.p_null.cpu().numpy(),
        "ppm_error": on_calls(ppm), "rt_error": on_calls(rt_err),
        "n_candidates": scored.n_candidates.cpu().numpy().astype(np.int64),
        "overflow": scored.overflow.cpu().numpy(),
        "refined": refined.cpu().numpy(),
        "n_partners": (np.zeros(n, dtype=np.int64) if result.n_partners is None
                       else result.n_partners.cpu().numpy().astype(np.int64)),
        "context_changed": (np.zeros(n, dtype=bool) if result.changed is None
                            else result.changed.cpu().numpy()),
        "mz": result.peaks["mz"].cpu().numpy(), "rt": result.peaks["rt"].cpu().numpy(),
        # As read (NaN where the table has none): the report sizes peaks by it.
        "intensity": result.peaks["intensity"].cpu().numpy(),
    })
    labels = _labels(space, ion, ("compound_id",))
    candidates = pd.DataFrame({
        "peak_id": peak_ids.take(f.peak.cpu().numpy()),
        "rank": scored.rank.cpu().numpy().astype(np.int64),
        "compound_id": labels["compound_id"], "adduct": labels["adduct"],
        "isotope": labels["isotope"], "ppm_error": ppm, "rt_error": rt_err,
        "prob": pair_prob,
    }).astype(CANDIDATE_DTYPES)
    # Sums of probabilities can pass 1 by a rounding error; a probability never does.
    for table, cols in ((assignments, ("prob", "p_ion", "p_formula", "p_null")),
                        (candidates, ("prob",))):
        for col in cols:
            table[col] = table[col].clip(0.0, 1.0)
    return assignments.astype(ASSIGNMENT_DTYPES), candidates
