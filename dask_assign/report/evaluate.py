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


def _hill(text):
    from dask_assign.chemistry.formulas import parse_formula

    if text is None or (isinstance(text, float) and np.isnan(text)) or text is pd.NA:
        return None
    try:
        return parse_formula(str(text)).formula
    except ValueError:
        return None


def correctness(assignments: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per truth peak: whether its compound is in the library, whether the call is right.

    Parameters
    ----------
    assignments : pandas.DataFrame
        ``peak_id``, ``compound_id`` (null = not in library), ``prob``.
    truth : pandas.DataFrame
        Compound level: ``peak_id``, ``compound_id`` (empty = the peak's compound is not in the
        library). Formula level: ``peak_id``, ``formula``, ``in_library`` (a call is right when
        its compound has that formula; ``assignments`` then needs ``formula``).

    Returns
    -------
    pandas.DataFrame
        ``peak_id``, ``known``, ``correct``, ``prob`` (0 where the peak has no call), in truth
        order.
    """
    formula_level = "compound_id" not in truth.columns and {"formula", "in_library"} <= set(
        truth.columns)
    cols = ["peak_id", "compound_id", "prob"] + (["formula"] if formula_level else [])
    a = assignments[cols].copy()
    a["peak_id"] = a["peak_id"].astype("string")
    a["compound_id"] = _null(a["compound_id"])
    if formula_level:
        # Right when the called compound has the true formula (any isomer counts).
        t = truth[["peak_id", "formula", "in_library"]].copy()
        t["peak_id"] = t["peak_id"].astype("string")
        m = t.merge(a, on="peak_id", how="left", suffixes=("_true", ""))
        known = m["in_library"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
        same = np.array([_hill(x) is not None and _hill(x) == _hill(y) for x, y in
                         zip(m["formula_true"], m["formula"], strict=True)], dtype=bool)
        same &= m["compound_id"].notna().to_numpy()
    else:
        t = truth[["peak_id", "compound_id"]].copy()
        t["peak_id"] = t["peak_id"].astype("string")
        t["compound_id"] = _null(t["compound_id"])
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
    # From the unrounded shares, as the reference scorer does.
    out["balanced"] = round(float((correct[known].mean() + correct[~known].mean()) / 2), 4) \
        if known.any() and (~known).any() else float("nan")
    p, hit = c["prob"].to_numpy(), correct.astype(np.float64)
    bins = reliability_table(c, n_bins)
    ece = float((bins["n"] / len(c) * (bins["accuracy"] - bins["mean_prob"]).abs()).sum())
    out["ece"] = round(ece, 4)
    out["brier"] = round(float(np.mean((p - hit) ** 2)), 4)
    return out


def reliability_table(graded: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """The reliability diagram's bins: equal-width bins of ``prob``, the last one closed.

    Parameters
    ----------
    graded : pandas.DataFrame
        ``prob`` and ``correct`` per truth peak (:func:`correctness`).
    n_bins : int

    Returns
    -------
    pandas.DataFrame
        One row per bin holding peaks: ``bin``, ``lo``, ``hi``, ``n``, ``mean_prob``,
        ``accuracy``.

    Examples
    --------
    >>> g = pd.DataFrame({"prob": [0.05, 0.95, 1.0, 0.9], "correct": [False, True, True, False]})
    >>> reliability_table(g, 2)[["bin", "n", "accuracy"]].to_dict("list")
    {'bin': [0, 1], 'n': [1, 3], 'accuracy': [0.0, 0.6666666666666666]}
    """
    p = graded["prob"].to_numpy(dtype=np.float64)
    hit = graded["correct"].to_numpy(dtype=np.float64)
    b = np.minimum((p * n_bins).astype(int), n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    has = np.flatnonzero(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, p, minlength=n_bins) / n
        acc = np.bincount(b, hit, minlength=n_bins) / n
    return pd.DataFrame({"bin": has, "lo": has / n_bins, "hi": (has + 1) / n_bins, "n": n[has],
                         "mean_prob": mean_p[has], "accuracy": acc[has]})


#: Upper edges of the m/z ranges of the breakdown.
MZ_EDGES = (200, 400, 600, 800, np.inf)


def breakdown(assignments: pd.DataFrame, truth: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Accuracy and mean probability by true adduct, true isotope and m/z range.

    Parameters
    ----------
    assignments : pandas.DataFrame
        As for :func:`correctness`, with ``mz`` for the m/z ranges.
    truth : pandas.DataFrame
        As for :func:`correctness`; ``adduct`` and ``isotope`` columns give those breakdowns.

    Returns
    -------
    dict of pandas.DataFrame
        ``by_adduct``, ``by_isotope``, ``by_mz``: ``n``, ``accuracy``, ``mean_prob`` per group.
    """
    c = correctness(assignments, truth).set_index("peak_id")
    t = truth.assign(peak_id=truth["peak_id"].astype("string")).set_index("peak_id")
    groups = {}
    if "adduct" in t:
        groups["by_adduct"] = t["adduct"].reindex(c.index).fillna("?")
    if "isotope" in t:
        groups["by_isotope"] = t["isotope"].reindex(c.index).fillna("M+0").replace("", "M+0")
    if "mz" in assignments:
        mz = assignments.assign(peak_id=assignments["peak_id"].astype("string")).set_index(
            "peak_id")["mz"].reindex(c.index)
        lows = (0, *MZ_EDGES[:-1])
        labels = [f"{lo:g}-{hi:g}" if np.isfinite(hi) else f"{lo:g}+"
                  for lo, hi in zip(lows, MZ_EDGES, strict=True)]
        idx = np.searchsorted(np.asarray(MZ_EDGES), mz.to_numpy(), side="right")
        groups["by_mz"] = pd.Series(np.asarray(labels, dtype=object)[np.minimum(idx, 4)],
                                    index=c.index)
    out = {}
    for name, key in groups.items():
        g = c.assign(group=key.to_numpy()).groupby("group", sort=True)
        out[name] = pd.DataFrame({"n": g.size(), "accuracy": g["correct"].mean().round(4),
                                  "mean_prob": g["prob"].mean().round(4)})
    return out


def reliability_png(assignments: pd.DataFrame, truth: pd.DataFrame, path, n_bins: int = 10):
    """Write the reliability diagram (accuracy against predicted probability) as a PNG.

    An existing file at ``path`` is replaced only if it is an earlier diagram (it carries the
    package's mark, see :func:`dask_assign.files.replace_own_file`).
    """
    import matplotlib

    from dask_assign.files import GENERATOR, check_own_file, replace_own_file

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_own_file(path)  # before any work
    rows = reliability_table(correctness(assignments, truth), n_bins)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    ax.plot(rows["mean_prob"], rows["accuracy"], marker="o")
    ax.set(xlabel="predicted probability", ylabel="observed accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability (ECE {evaluate(assignments, truth, n_bins)['ece']})")
    try:
        replace_own_file(path, lambda p: fig.savefig(p, format="png", dpi=100,
                                                     bbox_inches="tight",
                                                     metadata={"Software": GENERATOR}))
    finally:
        plt.close(fig)
