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


def correctness(assignments: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per truth peak: whether its compound is in the library, whether the call is right.

    Parameters
    ----------
    assignments : pandas.DataFrame
        ``peak_id``, ``compound_id`` (null = not in library), ``prob``.
    truth : pandas.DataFrame
        ``peak_id``, ``compound_id`` (empty = the peak's compound is not in the library).

    Returns
    -------
    pandas.DataFrame
        ``peak_id``, ``known``, ``correct``, ``prob`` (0 where the peak has no call), in truth
        order.
    """
    a = assignments[["peak_id", "compound_id", "prob"]].copy()
    t = truth[["peak_id", "compound_id"]].copy()
    a["peak_id"] = a["peak_id"].astype("string")
    t["peak_id"] = t["peak_id"].astype("string")
    a["compound_id"], t["compound_id"] = _null(a["compound_id"]), _null(t["compound_id"])
    m = t.merge(a, on="peak_id", how="left", suffixes=("_true", ""))
    known = m["compound_id_true"].notna().to_numpy()
    same = (m["compound_id_true"] == m["compound_id"]).fillna(False).to_numpy(dtype=bool)
    correct = np.where(known, same, m["compound_id"].isna().to_numpy())
    return pd.DataFrame({"peak_id": m["peak_id"], "known": known, "correct": correct,
                         "prob": m["prob"].fillna(0).clip(0, 1).to_numpy(dtype=np.float64)})


def evaluate(assignments: pd.DataFrame, truth: pd.DataFrame, n_bins: int = 10) -> dict:
    """Score assignments against compound-level truth.

    Parameters
    ----------
    assignments, truth : pandas.DataFrame
        As for :func:`correctness`.
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
    c = correctness(assignments, truth)
    known, correct = c["known"].to_numpy(), c["correct"].to_numpy()

    def mean(x):
        return round(float(x.mean()), 4) if x.size else float("nan")

    out = {"n": int(len(c)), "n_known": int(known.sum()), "known_top1": mean(correct[known]),
           "unknown_null": mean(correct[~known]), "overall": mean(correct)}
    out["balanced"] = round((out["known_top1"] + out["unknown_null"]) / 2, 4)
    p, hit = c["prob"].to_numpy(), correct.astype(np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = sum((bins == b).mean() * abs(hit[bins == b].mean() - p[bins == b].mean())
              for b in range(n_bins) if (bins == b).any())
    out["ece"] = round(float(ece), 4)
    out["brier"] = round(float(np.mean((p - hit) ** 2)), 4)
    return out
