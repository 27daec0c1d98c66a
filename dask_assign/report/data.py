"""What the report shows, from a result folder or from frames: the tables, the per-peak columns
the views need, the review queue, and which peaks the page draws.

**Which peaks the page draws.** A browser draws some tens of thousands of points in a
scatter view with hover and selection at ease; a run may have millions of peaks. Up to
``max_points`` peaks (:data:`MAX_POINTS`) every peak is drawn and listed. Beyond that, the
peaks of the review queue come first (the least certain first, up to half of ``max_points``:
:data:`QUEUE_SHARE`), then the page fills up with a random sample of all the other peaks
(``numpy.random.default_rng(SAMPLE_SEED)``: the same page every time), so the views still show
the run as a whole; under each scatter view a grey 2-D histogram of *all* peaks shows where
the peaks not drawn lie. Histograms, bar charts, the summary and the scores always count
every peak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dask_assign.config import AssignConfig, Calibration
from dask_assign.report.review import ReviewRule, coeluting_partners, doubt_reasons, review_queue

#: Peaks drawn and listed on the page at most (see the module's docstring).
MAX_POINTS = 20_000
#: Seed of the sample of the peaks drawn beyond the review queue, when not all fit.
SAMPLE_SEED = 0
#: Share of ``max_points`` the review queue may take when not all peaks fit (the rest: the
#: sample, so that the views show the whole run and not only its doubtful calls).
QUEUE_SHARE = 0.5
#: Kinds of call, in legend order, and their colours (Okabe-Ito: told apart with colour
#: vision deficiency, and dark enough on white).
CATEGORIES = ("library compound", "isotope of", "not in library", "overflow")
COLOURS = ("#0072B2", "#E69F00", "#8C8C8C", "#D55E00")
#: Marker sizes (screen pixels) for the weakest and strongest peaks (1st and 99th percentile
#: of log intensity); peaks without an intensity get the middle size.
SIZE_RANGE = (3.0, 13.0)


def read_table(folder, name: str) -> pd.DataFrame:
    """A table of a result folder, Parquet or CSV.

    Parameters
    ----------
    folder : str or Path
        A result folder.
    name : str
        ``assignments`` or ``candidates``.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    FileNotFoundError
        When the folder holds neither ``NAME.parquet`` nor ``NAME.csv``.
    """
    folder = Path(folder)
    parquet, csv = folder / f"{name}.parquet", folder / f"{name}.csv"
    if parquet.exists():
        return pd.read_parquet(parquet)
    if csv.exists():
        return pd.read_csv(csv, dtype={"peak_id": str, "compound_id": str})
    raise FileNotFoundError(f"{folder}: no {name}.parquet or {name}.csv (not a result folder)")


@dataclass
class ReportData:
    """A result as the report sees it.

    Build it with :func:`load_result` (a result folder) or :func:`prepare` (frames). The
    figure functions of :mod:`dask_assign.report.figures` take it.

    Attributes
    ----------
    peaks : pandas.DataFrame
        Every peak of the run: the assignments table with the columns the views add
        (``category``, ``lib_rt``, ``rt_fit``, ``size``, ``reason``, ``in_queue``, and with a
        truth table ``truth``, ``correct``).
    shown : numpy.ndarray
        Positions in ``peaks`` of the peaks the page draws and lists, in page order
        (:func:`shown_rows`).
    drawn : pandas.DataFrame
        Those peaks (``peaks.iloc[shown]``) with their labels: ``call`` (the call in words)
        and ``runner_up``, ``runner_prob``.
    candidates : pandas.DataFrame
        The candidates of the shown peaks, rows as in ``candidates.parquet``, grouped by peak
        in the order of ``shown``; ``row`` is the position in ``shown`` of its peak.
    partners : pandas.DataFrame
        Co-eluting partners of the shown peaks (:func:`~.review.coeluting_partners`):
        ``row`` (position in ``shown``), ``partner`` (position in ``peaks``), ``drt``; grouped
        by ``row``, the nearest in RT first.
    queue : pandas.DataFrame
        The review queue over every peak (:func:`~.review.review_queue`).
    calibration : Calibration
    rt_tol : float
        Co-elution tolerance (minutes) behind ``partners``.
    rt_tol_source : str
        Where it came from, in words.
    rule : ReviewRule
    manifest : dict
        The result's manifest (empty for frames).
    graded : pandas.DataFrame or None
        Per truth peak: ``known``, ``correct``, ``prob``
        (:func:`~dask_assign.report.evaluate.correctness`).
    scores : dict or None
        :func:`~dask_assign.report.evaluate.evaluate` against the truth.
    title : str
    max_points : int
    """

    peaks: pd.DataFrame
    shown: np.ndarray
    drawn: pd.DataFrame
    candidates: pd.DataFrame
    partners: pd.DataFrame
    queue: pd.DataFrame
    calibration: Calibration
    rt_tol: float
    rt_tol_source: str
    rule: ReviewRule
    manifest: dict = field(default_factory=dict)
    graded: pd.DataFrame | None = None
    scores: dict | None = None
    title: str = ""
    max_points: int = MAX_POINTS

    @property
    def sampled(self) -> bool:
        """Whether the page draws fewer peaks than the run has."""
        return len(self.shown) < len(self.peaks)

    def sampling_note(self) -> str:
        """How the drawn peaks were chosen, in words (for the page)."""
        n, k = len(self.peaks), len(self.shown)
        if not self.sampled:
            return f"All {n:,} peaks are drawn and listed."
        queued = int(self.drawn["in_queue"].sum())
        first = min(len(self.queue), int(self.max_points * QUEUE_SHARE))
        return (f"{k:,} of {n:,} peaks are drawn and listed (at most {self.max_points:,}): the "
                f"first {first:,} of the {len(self.queue):,} peaks of the review queue (the "
                f"least certain), then a random sample (seed {SAMPLE_SEED}) of all the others "
                f"({queued - first:,} more of them in the queue). The grey shading under each "
                "scatter view counts all peaks; histograms, bar charts and scores count all "
                "peaks.")

    def sources(self):
        """Fresh bokeh data sources of this result, for figures that select together.

        Returns
        -------
        Sources
            Pass it to every figure function whose views should be linked.
        """
        from dask_assign.report.figures import Sources

        return Sources.of(self)


def shown_rows(n: int, queue_rows: np.ndarray, max_points: int,
               seed: int = SAMPLE_SEED) -> np.ndarray:
    """Which peaks the page draws, in page order: all up to ``max_points``; beyond, the review
    queue's first (up to ``QUEUE_SHARE`` of ``max_points``), then a seeded random sample of
    all the others.

    In page order the drawn queue peaks come first, in queue order, then the others in table
    order (the page's queue table then opens least certain first).

    Parameters
    ----------
    n : int
        Peaks in the run.
    queue_rows : array of int
        Positions of the review queue's peaks, in queue order.
    max_points : int
    seed : int

    Returns
    -------
    numpy.ndarray
        Positions in the table.

    Examples
    --------
    >>> shown_rows(5, np.array([3, 1]), 10).tolist()
    [3, 1, 0, 2, 4]
    >>> rows = shown_rows(1000, np.arange(900, 0, -1), 10)
    >>> rows[:5].tolist(), len(rows), len(set(rows.tolist()))
    ([900, 899, 898, 897, 896], 10, 10)
    """
    queue_rows = np.asarray(queue_rows, dtype=np.int64)
    first = queue_rows if n <= max_points else queue_rows[:int(max_points * QUEUE_SHARE)]
    others = np.ones(n, dtype=bool)
    others[first] = False
    rest = np.flatnonzero(others)
    if n > max_points:
        rest = np.sort(np.random.default_rng(seed).choice(rest, size=max_points - first.size,
                                                          replace=False))
    rank = np.full(n, queue_rows.size, dtype=np.int64)  # queue order, then table order
    rank[queue_rows] = np.arange(queue_rows.size)
    rest = rest[np.argsort(rank[rest], kind="stable")]
    return np.concatenate([first, rest])


def load_result(folder, truth=None, rule: ReviewRule | None = None,
                max_points: int = MAX_POINTS) -> ReportData:
    """Read a result folder for the report.

    Parameters
    ----------
    folder : str or Path
        Written by ``dask-assign run`` (assignments, candidates, calibration, manifest).
    truth : str, Path or pandas.DataFrame, optional
        A truth table (``peak_id``, ``compound_id``) for the scores and reliability diagram.
    rule : ReviewRule, optional
        The review queue's thresholds (:mod:`.review`'s defaults when omitted).
    max_points : int
        Peaks drawn at most (see the module's docstring).

    Returns
    -------
    ReportData
    """
    folder = Path(folder)
    assignments = read_table(folder, "assignments")
    candidates = read_table(folder, "candidates")
    manifest = _json(folder / "manifest.json")
    cal = _json(folder / "calibration.json") or manifest.get("calibration") or {}
    context = _json(folder / "context.json") or manifest.get("context") or {}
    if truth is not None and not isinstance(truth, pd.DataFrame):
        truth = pd.read_csv(truth, dtype=str)
    tol, source = _coelution(context, manifest.get("config"))
    return prepare(assignments, candidates, Calibration.from_dict(cal) if cal else Calibration(),
                   rt_tol=tol, truth=truth, rule=rule, max_points=max_points,
                   manifest=manifest, title=str(folder.resolve()), rt_tol_source=source)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _coelution(context: dict, config) -> tuple[float, str]:
    tol = context.get("rt_tol")
    if tol:
        # The wider of the isotope and adduct partners' (ions of any kind are shown).
        tol = max(float(tol), float(context.get("adduct_rt_tol") or 0.0))
        return tol, "the context pass's fitted co-elution tolerance (the wider of isotope " \
            "and adduct partners')"
    if isinstance(config, str):  # the manifest stores the settings as JSON text
        config = json.loads(config)
    widest = (config or {}).get("max_coelution", AssignConfig().max_coelution)
    return float(widest), "the run's max_coelution (no context pass was fitted)"


def prepare(assignments: pd.DataFrame, candidates: pd.DataFrame,
            calibration: Calibration | None = None, rt_tol: float | None = None,
            truth: pd.DataFrame | None = None, rule: ReviewRule | None = None,
            max_points: int = MAX_POINTS, manifest: dict | None = None, title: str = "",
            rt_tol_source: str | None = None) -> ReportData:
    """The report's view of a result given as frames (a notebook's ``compute()``).

    Parameters
    ----------
    assignments, candidates : pandas.DataFrame
        The two tables of a run (columns of ``assignments.parquet`` and
        ``candidates.parquet``).
    calibration : Calibration, optional
        The run's fitted calibration (``calibration.json``); the defaults when omitted.
    rt_tol : float, optional
        Co-elution tolerance of the partners; ``AssignConfig().max_coelution`` when omitted.
    truth : pandas.DataFrame, optional
    rule : ReviewRule, optional
    max_points : int
    manifest : dict, optional
    title : str
    rt_tol_source : str, optional

    Returns
    -------
    ReportData
    """
    from dask_assign.report.evaluate import correctness, evaluate

    if max_points < 1:
        raise ValueError(f"max_points: must be at least 1, not {max_points}")
    calibration = calibration or Calibration()
    rule = rule or ReviewRule()
    if rt_tol is None:
        rt_tol, rt_tol_source = AssignConfig().max_coelution, "the default max_coelution"
    peaks = assignments.reset_index(drop=True).copy()
    peaks["peak_id"] = peaks["peak_id"].astype("string")
    cands = candidates.reset_index(drop=True)
    # Each candidate's peak, looked up once (the slow step at millions of rows).
    cand_peak = pd.Index(peaks["peak_id"]).get_indexer(cands["peak_id"].astype("string"))
    _add_views(peaks, calibration)
    peaks["reason"] = doubt_reasons(peaks, rule).to_numpy()
    peaks["in_queue"] = peaks["reason"] != ""
    queue = review_queue(peaks, rule)
    graded = scores = None
    if truth is not None:
        graded, scores = correctness(peaks, truth), evaluate(peaks, truth)
        t = truth.assign(peak_id=truth["peak_id"].astype("string")).drop_duplicates("peak_id")
        right = graded.set_index("peak_id")["correct"].reindex(peaks["peak_id"])
        peaks["truth"] = (t.set_index("peak_id")["compound_id"].reindex(peaks["peak_id"])
                          .fillna("not in library").astype(object).to_numpy()
                          if "compound_id" in t else "")
        peaks["correct"] = np.where(right.isna(), "", np.where(
            right.fillna(False).astype(bool), "right", "wrong"))
    shown = shown_rows(len(peaks), queue.index.to_numpy(), max_points)
    where = np.full(len(peaks), -1, dtype=np.int64)  # position on the page of each peak
    where[shown] = np.arange(shown.size)
    row = np.where(cand_peak >= 0, where[np.maximum(cand_peak, 0)], -1)
    keep = np.flatnonzero(row >= 0)
    drawn_cands = cands.iloc[keep].assign(row=row[keep])
    order = np.lexsort((drawn_cands["rank"].to_numpy(), drawn_cands["row"].to_numpy()))
    drawn_cands = drawn_cands.iloc[order].reset_index(drop=True)
    drawn = peaks.iloc[shown].reset_index(drop=True)
    _add_labels(drawn, drawn_cands)
    pairs = coeluting_partners(peaks, cands, rt_tol, rows=shown,
                               molecule=_molecule(peaks, cands, cand_peak))
    partners = pd.DataFrame({"row": where[pairs["peak"].to_numpy()],
                             "partner": pairs["partner"].to_numpy(),
                             "drt": pairs["drt"].to_numpy()})
    # Grouped by page row, like the candidates: the page finds a peak's rows by offsets.
    partners = partners.iloc[np.lexsort((np.abs(partners["drt"].to_numpy()),
                                         partners["row"].to_numpy()))].reset_index(drop=True)
    return ReportData(peaks=peaks, shown=shown, drawn=drawn, candidates=drawn_cands,
                      partners=partners, queue=queue, calibration=calibration,
                      rt_tol=float(rt_tol), rt_tol_source=rt_tol_source or "given", rule=rule,
                      manifest=manifest or {}, graded=graded, scores=scores, title=title,
                      max_points=max_points)


def ion_label(compound, adduct, isotope) -> np.ndarray:
    """``compound adduct isotope`` labels, ``"not in library"`` where there is no compound.

    Examples
    --------
    >>> ion_label(["A", None], ["[M+H]+", None], [None, None]).tolist()
    ['A [M+H]+', 'not in library']
    """
    c = pd.Series(list(compound) if not hasattr(compound, "dtype") else compound,
                  dtype=object).reset_index(drop=True)
    a = pd.Series(adduct, dtype=object).reset_index(drop=True).fillna("")
    i = pd.Series(isotope, dtype=object).reset_index(drop=True)
    label = c.fillna("") + " " + a + np.where(i.isna(), "", " " + i.fillna("").astype(str))
    return np.where(c.isna().to_numpy(), "not in library", label.to_numpy()).astype(object)


def _molecule(peaks, cands, cand_peak) -> np.ndarray:
    """The compound each peak is about: its call, else its best candidate."""
    molecule = peaks["compound_id"].astype(object).to_numpy(na_value=None).copy()
    best = np.flatnonzero((cands["rank"].to_numpy() == 0) & (cand_peak >= 0))
    fill = np.full(len(peaks), None, dtype=object)
    fill[cand_peak[best]] = cands["compound_id"].astype(object).to_numpy(na_value=None)[best]
    none = pd.isna(molecule)
    molecule[none] = fill[none]
    return molecule


def _add_views(peaks: pd.DataFrame, cal: Calibration):
    """Columns the views need of every peak: kind of call, library RT, marker size."""
    called = peaks["compound_id"].notna().to_numpy()
    isotope = peaks["isotope"].notna().to_numpy()
    overflow = peaks["overflow"].to_numpy(dtype=bool, na_value=False)
    kind = np.where(overflow, 3, np.where(~called, 2, np.where(isotope, 1, 0)))
    peaks["category"] = np.asarray(CATEGORIES, dtype=object)[kind]
    rt = peaks["rt"].to_numpy(dtype=np.float64)
    err = peaks["rt_error"].to_numpy(dtype=np.float64, na_value=np.nan)
    peaks["lib_rt"] = rt - err  # rt_error is observed minus library RT
    lib = peaks["lib_rt"].to_numpy()
    fit = np.full(len(peaks), np.nan)
    ok = np.isfinite(lib)
    fit[ok] = np.asarray(cal.rt_map(lib[ok])) - lib[ok]
    peaks["rt_fit"] = fit  # where the fitted map expects the residual
    if "intensity" in peaks:
        li = np.log10(peaks["intensity"].to_numpy(dtype=np.float64, na_value=np.nan)
                      .clip(min=1e-12))
    else:
        li = np.full(len(peaks), np.nan)
    good = np.isfinite(li)
    lo_s, hi_s = SIZE_RANGE
    size = np.full(len(peaks), (lo_s + hi_s) / 2)
    if good.any():
        lo, hi = np.percentile(li[good], [1, 99])
        scale = (li[good] - lo) / (hi - lo) if hi > lo else np.full(good.sum(), 0.5)
        size[good] = lo_s + (hi_s - lo_s) * np.clip(scale, 0, 1)
    peaks["size"] = size


def _add_labels(drawn: pd.DataFrame, cands: pd.DataFrame):
    """The drawn peaks' labels: the call in words and the runner-up (for a compound call the
    better of the next compound, by its summed probability and named by its best-ranked ion,
    and the null; for a null call its best compound)."""
    called = drawn["compound_id"].notna().to_numpy()
    label = ion_label(drawn["compound_id"], drawn["adduct"], drawn["isotope"])
    name = drawn["name"].astype(object) if "name" in drawn else pd.Series(None,
                                                                           index=drawn.index)
    named = name.notna().to_numpy() & called
    drawn["call"] = np.where(named, name.fillna("").to_numpy() + " (" + label + ")", label)
    # Each peak's compounds, as a call sees them (scoring.passes.best_calls).
    own = drawn["compound_id"].astype("string").fillna("").to_numpy(dtype=object)
    other = cands.loc[cands["compound_id"].astype("string").fillna("").to_numpy(dtype=object)
                      != own[cands["row"].to_numpy()]]
    ranked = other.assign(total=other.groupby(["row", "compound_id"])["prob"].transform(
        "sum", min_count=1))  # NaN (a flagged overflow) stays NaN
    ranked = ranked.sort_values(["row", "total", "rank"], ascending=[True, False, True])
    picked = ranked.drop_duplicates("row")
    row = picked["row"].to_numpy()
    second = np.full(len(drawn), None, dtype=object)
    second_p = np.full(len(drawn), np.nan)
    second[row] = ion_label(picked["compound_id"], picked["adduct"], picked["isotope"])
    second_p[row] = picked["total"].to_numpy(dtype=np.float64)
    p_null = drawn["p_null"].to_numpy(dtype=np.float64, na_value=np.nan)
    null_wins = called & ~(second_p > p_null)  # NaN (no second candidate): the null
    second[null_wins] = "not in library"
    second_p[null_wins] = p_null[null_wins]
    drawn["runner_up"] = np.where(pd.isna(second), "none", second)
    drawn["runner_prob"] = second_p
