"""A ceiling computed on a labelled run: how far any caller that sees the candidates
dask-assign found, and these candidates' features, could get, by a classifier fitted on the
run's own truth (an oracle: it is never shipped, and nothing learns from it).

    .venv/bin/pip install -e ".[bench]"      # scikit-learn
    .venv/bin/dask-assign run PEAKS LIBRARY [--mode negative] --out RESULT
    .venv/bin/python benchmarks/ceiling.py RESULT TRUTH.csv LIBRARY.csv [--known 0.92]
        [--unknown 0.99]

Each candidate row of ``candidates.parquet`` is labelled right or wrong by the truth (at
formula level where the truth has formulas: the library formula in Hill notation, as
``../shared/tools/score.py`` compares them). A gradient-boosted classifier scores each
candidate from its features; a peak's call is its best-scored candidate where that score
passes a threshold, else "not in library". Sweeping the threshold traces the frontier of
known_top1 against unknown_null, printed at the two targets:

- ``dask-assign``: the run's own probabilities (no classifier);
- ``oracle (m/z)``: mass error, m/z, adduct, isotopologue, intensity;
- ``oracle (m/z, RT)``: those and the RT residual and RT;
- ``oracle (all)``: those, dask-assign's probability, rank, candidate count and co-eluting
  partner count.

The oracles are fitted 5-fold by peak (a peak's candidates are scored by a model that never
saw that peak), on the same run: an optimistic bound for a caller trained on other runs.
Known peaks without a right candidate cap every row: they are counted too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from molmass import Formula


def hill(formula) -> str | None:
    try:
        return Formula(str(formula)).formula
    except Exception:  # noqa: BLE001 - a formula molmass cannot read matches nothing
        return None


def labelled_candidates(result: Path, truth: pd.DataFrame, library: pd.DataFrame):
    """Candidate rows of the scored peaks with their features and a right/wrong label."""
    a = pd.read_parquet(result / "assignments.parquet").set_index("peak_id")
    c = pd.read_parquet(result / "candidates.parquet")
    t = truth.set_index("peak_id")
    c = c[c["peak_id"].isin(t.index)].copy()
    if "formula" in t.columns and "compound_id" not in t.columns:
        of = dict(zip(library["compound_id"].astype(str), library["formula"].map(hill),
                      strict=True))
        want = t["formula"].where(t["in_library"].astype(bool), "").fillna("")
        got = c["compound_id"].astype(str).map(of)
    else:
        want = t["compound_id"].fillna("").astype(str)
        got = c["compound_id"].astype(str)
    known = want != ""
    c["y"] = (got == c["peak_id"].map(want)).astype(int)
    for col in ("intensity", "n_partners", "n_candidates", "mz", "rt"):
        c[col] = c["peak_id"].map(a[col]).astype(float)
    c["log_intensity"] = np.log(c["intensity"].where(c["intensity"] > 0))  # NaN: unknown
    c["abs_rt_error"] = c["rt_error"].abs()
    c["adduct_code"] = c["adduct"].astype("category").cat.codes
    c["isotope_code"] = c["isotope"].fillna("M0").astype("category").cat.codes
    return c, known


FEATURES = {
    "oracle (m/z)": ["ppm_error", "mz", "adduct_code", "isotope_code", "log_intensity"],
    "oracle (m/z, RT)": ["ppm_error", "mz", "adduct_code", "isotope_code", "log_intensity",
                         "rt_error", "abs_rt_error", "rt"],
    "oracle (all)": ["ppm_error", "mz", "adduct_code", "isotope_code", "log_intensity",
                     "rt_error", "abs_rt_error", "rt", "prob", "rank", "n_candidates",
                     "n_partners"],
}


def cross_validated(c: pd.DataFrame, columns: list, folds: int = 5) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GroupKFold

    x = c[columns].to_numpy(dtype=float)
    y = c["y"].to_numpy()
    out = np.zeros(len(c))
    for train, test in GroupKFold(folds).split(x, y, c["peak_id"].to_numpy()):
        model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05,
                                               random_state=0)
        out[test] = model.fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return out


def frontier(c: pd.DataFrame, score: np.ndarray, known: pd.Series) -> pd.DataFrame:
    """known_top1 and unknown_null for thresholds on each peak's best candidate score."""
    best = (c.assign(s=score).sort_values("s", ascending=False)
            .drop_duplicates("peak_id").set_index("peak_id"))
    k_ids, u_ids = known.index[known], known.index[~known]
    right = (best["y"] == 1).reindex(k_ids, fill_value=False).to_numpy()
    s_known = best["s"].reindex(k_ids, fill_value=-1.0).to_numpy()
    s_unknown = best["s"].reindex(u_ids, fill_value=-1.0).to_numpy()
    rows = []
    for thr in np.r_[np.linspace(0.0, 1.0, 401), 1.01]:
        rows.append((thr, float((right & (s_known > thr)).mean()),
                     float((s_unknown <= thr).mean())))
    return pd.DataFrame(rows, columns=["threshold", "known_top1", "unknown_null"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", type=Path)
    p.add_argument("truth", type=Path)
    p.add_argument("library", type=Path)
    p.add_argument("--known", type=float, default=0.92)
    p.add_argument("--unknown", type=float, default=0.99)
    args = p.parse_args(argv)
    truth = pd.read_csv(args.truth, dtype={"peak_id": str})
    library = pd.read_csv(args.library, dtype={"compound_id": str})
    c, known = labelled_candidates(args.result, truth, library)
    reach = c.loc[c["y"] == 1, "peak_id"].nunique()
    print(f"{args.result}: {int(known.sum())} known peaks, {reach} with a right candidate "
          f"({reach / max(known.sum(), 1):.3f}); {int((~known).sum())} unknown, "
          f"{c.loc[c['peak_id'].map(~known), 'peak_id'].nunique()} of them with a candidate")
    print(f"| caller | known_top1 at unknown_null >= {args.unknown} | unknown_null at "
          f"known_top1 >= {args.known} |\n|---|---|---|")
    scores = {"dask-assign (its probabilities)": c["prob"].fillna(0.0).to_numpy()}
    scores.update({name: cross_validated(c, cols) for name, cols in FEATURES.items()})
    for name, score in scores.items():
        f = frontier(c, score, known)
        a = f.loc[f["unknown_null"] >= args.unknown, "known_top1"].max()
        b = f.loc[f["known_top1"] >= args.known, "unknown_null"].max()
        print(f"| {name} | {a:.3f} | {'unreachable' if np.isnan(b) else f'{b:.3f}'} |")


if __name__ == "__main__":
    main()
