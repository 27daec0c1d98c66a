"""Accuracy and calibration of assignments against a truth table.

The metrics are those of the project's reference scorer: ``known_top1`` (peaks whose compound
is in the library, called right), ``unknown_null`` (peaks of unlisted compounds, called "not in
library"), ``overall``, ``balanced``, ``ece`` (10 equal-width bins of ``prob``) and ``brier``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _null(series: pd.Series) -> pd.Series:
    s = series.astype("string")
    return s.where(s.notna() & (s != ""), None)


def evaluate(assignments: pd.DataFrame, truth: pd.DataFrame, n_bins: int = 10) -> dict:
    """Score assignments against compound-level truth.

    Parameters
    ----------
    assignments : pandas.DataFrame
        ``peak_id``, ``compound_id`` (null = not in library), ``prob``.
    truth : pandas.DataFrame
        ``peak_id``, ``compound_id`` (empty = the peak's compound is not in the library).
    n_bins : int
        Bins of the expected calibration error.

    Returns
    -------
    dict

    Examples
    --------
    >>> a = pd.DataFrame({"peak_id": ["1", "2"], "compound_id": ["A", None], "prob": [0.9, 0.8]})
    >>> t = pd.DataFrame({"peak_id": ["1", "2"], "compound_id": ["A", "B"]})
    >>> evaluate(a, t)["known_top1"], evaluate(a, t)["unknown_null"]
    (0.5, nan)
    """
    a = assignments[["peak_id", "compound_id", "prob"]].copy()
    t = truth[["peak_id", "compound_id"]].copy()
    a["peak_id"] = a["peak_id"].astype("string")
    t["peak_id"] = t["peak_id"].astype("string")
    a["compound_id"], t["compound_id"] = _null(a["compound_id"]), _null(t["compound_id"])
    m = t.merge(a, on="peak_id", how="left", suffixes=("_true", ""))
    known = m["compound_id_true"].notna().to_numpy()
    pred = m["compound_id"]
    same = (m["compound_id_true"] == pred).fillna(False).to_numpy(dtype=bool)
    correct = np.where(known, same, pred.isna().to_numpy())

    def mean(x):
        return round(float(x.mean()), 4) if x.size else float("nan")

    out = {"n": int(len(m)), "n_known": int(known.sum()), "known_top1": mean(correct[known]),
           "unknown_null": mean(correct[~known]), "overall": mean(correct)}
    out["balanced"] = round((out["known_top1"] + out["unknown_null"]) / 2, 4)
    p = m["prob"].fillna(0).clip(0, 1).to_numpy(dtype=np.float64)
    c = correct.astype(np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = sum((bins == b).mean() * abs(c[bins == b].mean() - p[bins == b].mean())
              for b in range(n_bins) if (bins == b).any())
    out["ece"] = round(float(ece), 4)
    out["brier"] = round(float(np.mean((p - c) ** 2)), 4)
    return out
