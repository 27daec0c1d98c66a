"""Learning the scorer's weights from labeled runs (``dask-assign train``).

Each labeled run is calibrated exactly as ``run`` calibrates it (EM on the run's own data);
its first-pass candidates are gathered with their features and marked right or wrong from the
truth. The weights of :data:`~dask_assign.scoring.scorer.LEARNED_WEIGHTS` and the unlisted-isomer
share are then fitted to all runs at once by maximum likelihood: each peak's probability of
its true slot (the right candidate, or "not in library") under the same segment softmax the
pipeline uses. The fitted error models stay per run; the weights say how far to trust them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch

from dask_assign.backends import to_pandas
from dask_assign.chemistry.adducts import parse_adduct_name
from dask_assign.chemistry.isotopes import label_shift
from dask_assign.config import AssignConfig, Calibration, ScorerParams
from dask_assign.errors import InputError
from dask_assign.filtering.join import range_join
from dask_assign.filtering.space import (
    calibrated_ions,
    candidate_ppm,
    candidate_rt_window,
    centred_mz,
    prepare_library,
)
from dask_assign.graph.plan import plan_run
from dask_assign.graph.run import as_dask_frame
from dask_assign.io.tables import read_tabular
from dask_assign.scoring.features import PairFeatures, pair_features
from dask_assign.scoring.passes import peak_tensors
from dask_assign.scoring.scorer import LEARNED_WEIGHTS, PeakScorer, with_isomers

log = logging.getLogger(__name__)


#: Pull of each weight toward its generative value (per peak of training data): keeps weights
#: that the data hardly inform where the model put them.
L2_PULL = 1e-3


@dataclass
class LabeledRun:
    """One labeled run, ready for training.

    Attributes
    ----------
    name : str
    calibration : Calibration
        Fitted on the run, as ``run`` would.
    features : PairFeatures
        Every candidate in the first-pass windows.
    right : torch.Tensor (bool)
        Whether each candidate is the peak's true ion.
    labeled : torch.Tensor (bool)
        Per peak: whether the truth covers it.
    data_key : str, optional
        A checksum of the run's peak table: two runs with one key are the same data.
    """

    name: str
    calibration: Calibration
    features: PairFeatures
    right: torch.Tensor
    labeled: torch.Tensor
    data_key: str | None = None

    @property
    def n_peaks(self) -> int:
        return int(self.labeled.shape[0])


def read_truth(path) -> pd.DataFrame:
    """A truth table: ``peak_id`` and either ``compound_id`` (empty: not in library) with
    optionally ``adduct`` and ``isotope`` (empty or ``M+0``, ``13C1``, ``13C1+18O1``, ...),
    or, at formula level, ``formula`` and ``in_library`` with optionally ``kind`` (``M-H``,
    ``M-H/13C1``: the adduct and isotopologue).

    Raises
    ------
    InputError
        When a required column is missing or a peak id repeats.
    """
    if isinstance(path, pd.DataFrame):
        frame, source = path.astype("string"), "truth table"
    else:
        frame, _ = read_tabular(path, "truth")
        source = str(path)
    need = ("peak_id", "formula", "in_library") if "compound_id" not in frame.columns \
        and "formula" in frame.columns else ("peak_id", "compound_id")
    for column in need:
        if column not in frame.columns:
            raise InputError(source, "required column missing", column=column)
    dup = frame["peak_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise InputError(source, "a peak id appears more than once", column="peak_id",
                         rows=(np.flatnonzero(dup) + 2).tolist(),
                         values=frame["peak_id"][dup].tolist())
    return frame


def _text(values) -> np.ndarray:
    """Strings with missing values as ''."""
    return pd.Series(values, dtype="string").fillna("").to_numpy(dtype=object)


def label_run(peaks, library, truth, config: AssignConfig, name: str = "") -> LabeledRun:
    """Calibrate one run and mark its candidates right or wrong.

    Parameters
    ----------
    peaks, library : str, Path or pandas.DataFrame
        As for :func:`~dask_assign.graph.run.assign` (the library also as a
        :class:`~dask_assign.filtering.space.SearchSpace`).
    truth : str, Path or pandas.DataFrame
        See :func:`read_truth`; ``adduct`` and ``isotope``, where given, must match too.
    config : AssignConfig
    name : str

    Returns
    -------
    LabeledRun
    """
    t = read_truth(truth)
    ddf = as_dask_frame(peaks, config)
    space = prepare_library(library, config)
    plan = plan_run(ddf, space, config)
    space, calibration = plan.space, plan.calibration
    part = ddf.compute()
    part = to_pandas(part)
    p = peak_tensors(part, "cpu")
    ions = calibrated_ions(space, calibration, "cpu")
    pi, ii = range_join(centred_mz(p["mz"], calibration), p["rt"], ions["mz"],
                        ions["mapped_rt"], space.bins,
                        candidate_ppm(config, calibration, space),
                        candidate_rt_window(config, calibration))
    feats = pair_features(pi, ii, p, ions)

    rows = pd.Series(np.arange(len(t)), index=t["peak_id"].astype(str).to_numpy())
    at = rows.reindex(part["peak_id"].astype(str).to_numpy()).to_numpy()
    labeled = ~np.isnan(at)
    at = np.where(labeled, at, 0).astype(np.int64)
    pair_peak, pair_ion = pi.numpy(), ii.numpy()
    right = _right_pairs(t, at[pair_peak], pair_ion, space) & labeled[pair_peak]
    right = _nearest_right(right, pair_peak * len(space.compounds) + space.compound[pair_ion],
                           feats.ppm_error.numpy() - feats.ppm_offset.numpy())
    if (~labeled).any():
        log.warning("%s: %d of %d peaks have no truth row; left out of training", name,
                    int((~labeled).sum()), labeled.size)
    key = pd.util.hash_pandas_object(part[["peak_id", "mz", "rt"]], index=False).sum()
    return LabeledRun(name, calibration, feats, torch.as_tensor(right),
                      torch.as_tensor(labeled), str(int(key)))


def _right_pairs(t: pd.DataFrame, row: np.ndarray, ion: np.ndarray, space) -> np.ndarray:
    """Whether each candidate (``ion``) is the true ion of its peak's truth row (``row``):
    the compound (or, at formula level, its formula), the adduct (names compared by what
    they add and remove) and the isotopologue (by the neutrons it adds: labels of merged
    isotopologues differ between programs)."""
    from dask_assign.chemistry.formulas import parse_formula

    compounds = space.compounds
    if "compound_id" in t.columns:
        truth_id = _text(t["compound_id"])[row]
        right = truth_id == compounds["compound_id"].astype(str).to_numpy()[space.compound[ion]]
        adduct = _text(t["adduct"]) if "adduct" in t.columns else None
        isotope = _text(t["isotope"]) if "isotope" in t.columns else None
    else:
        hill = np.array([parse_formula(f).formula if f else "" for f in _text(t["formula"])],
                        dtype=object)
        in_lib = _text(t["in_library"]).astype(str)
        in_lib = np.isin(np.char.lower(in_lib.astype(str)), ("true", "1", "yes"))
        formulas = compounds["formula"].astype("string").fillna("").to_numpy(dtype=object)
        right = in_lib[row] & (hill[row] == formulas[space.compound[ion]])
        adduct = isotope = None
        if "kind" in t.columns:
            kind = _text(t["kind"])
            adduct = np.array([k.split("/")[0] for k in kind], dtype=object)
            isotope = np.array([k.split("/")[1] if "/" in k else "" for k in kind],
                               dtype=object)
    if adduct is not None:
        ours = np.array([_adduct_key(n) for n in space.adduct_names], dtype=object)
        theirs = np.array([_adduct_key(x) for x in adduct], dtype=object)
        right &= theirs[row] == ours[space.adduct[ion]]
    if isotope is not None:
        shift = np.array([label_shift(x) for x in isotope])[row]
        ours = np.array([label_shift(x) for x in space.isotope_labels])[space.isotope[ion]]
        right &= shift == ours
    return right


def _nearest_right(right: np.ndarray, key: np.ndarray, error: np.ndarray) -> np.ndarray:
    """At most one right candidate per ``key`` (peak and compound): where two isotopologues
    of the true ion add the same neutrons (13C1, 15N1), the one nearest in mass is the
    peak's. A formula-level truth keeps one for each isomer of its formula."""
    rows = np.flatnonzero(right)
    if rows.size == 0:
        return right
    order = rows[np.lexsort((np.abs(error[rows]), key[rows]))]
    first = np.ones(order.size, dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    out = np.zeros_like(right)
    out[order[first]] = True
    return out


def _adduct_key(name: str) -> str:
    """An adduct name as what it adds and removes, whatever its spelling (charge aside);
    '' for a text that names no adduct (a truth's ``none``)."""
    try:
        mult, _, atoms = parse_adduct_name(name)
    except ValueError:
        return ""
    return f"{mult}M" + "".join(f"{el}{k:+d}" for el, k in atoms)


def leave_one_out(runs: list[LabeledRun], held_out_only=None):
    """Folds for leave-one-run-out evaluation: ``(held_out, training_runs)`` for each run
    (or each run named in ``held_out_only``); a run is never among its own fold's training
    runs, nor any run with its peaks (the same data under another name).

    Examples
    --------
    >>> runs = [LabeledRun(n, None, None, torch.zeros(0, dtype=torch.bool),
    ...         torch.zeros(0, dtype=torch.bool)) for n in "abc"]
    >>> [(h.name, [r.name for r in t]) for h, t in leave_one_out(runs)]
    [('a', ['b', 'c']), ('b', ['a', 'c']), ('c', ['a', 'b'])]
    """
    for held in runs:
        if held_out_only is not None and held.name not in held_out_only:
            continue
        same = {id(held), getattr(held, "data_key", None)}
        yield held, [r for r in runs if id(r) not in same
                     and (getattr(r, "data_key", None) is None
                          or r.data_key != getattr(held, "data_key", None))]


def _tied_scorers(runs: list[LabeledRun], start: ScorerParams) -> list[PeakScorer]:
    """One scorer per run (each with its calibration) sharing the learned weights."""
    scorers = [PeakScorer(start, r.calibration) for r in runs]
    for s in scorers[1:]:
        for name in LEARNED_WEIGHTS:
            setattr(s, name, getattr(scorers[0], name))
    return scorers


def run_nll(scorer: PeakScorer, run: LabeledRun, kappa: torch.Tensor) -> torch.Tensor:
    """Summed negative log-probability of each labeled peak's true slot (the right
    candidate, or the null where no candidate is right), with each candidate's unlisted
    isomer (share ``kappa``) on the null's side, as the pipeline scores them."""
    f, n = run.features, run.n_peaks
    logits = scorer(f)
    isomer = scorer.isomer_odds(f, unlisted_prior=kappa)
    slot, share = with_isomers(logits, isomer)
    top = torch.zeros(n, dtype=slot.dtype).scatter_reduce(
        0, f.peak, slot.detach(), reduce="amax", include_self=True)
    total = torch.exp(-top).index_add(0, f.peak, torch.exp(slot - top[f.peak]))
    log_z = top + torch.log(total)
    p = torch.exp(slot - log_z[f.peak])
    p_right = torch.zeros(n, dtype=p.dtype).index_add(0, f.peak[run.right],
                                                      (p * share)[run.right])
    has_right = torch.zeros(n, dtype=torch.bool)
    has_right[f.peak[run.right]] = True
    p_null = torch.exp(-log_z) + torch.zeros(n, dtype=p.dtype).index_add(
        0, f.peak, p * (1 - share))
    target = torch.where(has_right, p_right, p_null)
    return -torch.log(target.clamp_min(1e-300))[run.labeled].sum()


def train(runs: list[LabeledRun], start: ScorerParams | None = None,
          max_iter: int = 200) -> tuple[ScorerParams, dict]:
    """Fit the learned weights and the unlisted share to labeled runs.

    Parameters
    ----------
    runs : list of LabeledRun
    start : ScorerParams, optional
        Starting point and anchor of the L2 pull (the generative defaults).
    max_iter : int
        L-BFGS iterations at most.

    Returns
    -------
    params : ScorerParams
    report : dict
        Mean log loss per peak before and after, per run and overall; iterations; seconds.
    """
    start = start or ScorerParams()
    if not runs or sum(int(r.labeled.sum()) for r in runs) == 0:
        raise ValueError("no labeled peaks to train on")
    t0 = time.perf_counter()
    scorers = _tied_scorers(runs, start)
    raw_kappa = torch.nn.Parameter(torch.tensor(
        math.log(start.unlisted_prior / (1 - start.unlisted_prior)), dtype=torch.float64))
    weights = [getattr(scorers[0], n) for n in LEARNED_WEIGHTS]
    anchor = torch.tensor([getattr(start, n) for n in LEARNED_WEIGHTS], dtype=torch.float64)
    n_labeled = sum(int(r.labeled.sum()) for r in runs)

    def losses():
        kappa = torch.sigmoid(raw_kappa)
        return [run_nll(s, r, kappa) for s, r in zip(scorers, runs, strict=True)]

    with torch.no_grad():
        before = [float(v) for v in losses()]
    opt = torch.optim.LBFGS([*weights, raw_kappa], lr=1.0, max_iter=max_iter,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                            tolerance_change=1e-12)
    steps = [0]

    def closure():
        opt.zero_grad()
        pull = ((torch.stack(weights) - anchor) ** 2).sum()
        loss = sum(losses()) / n_labeled + L2_PULL * pull
        loss.backward()
        steps[0] += 1
        return loss

    opt.step(closure)
    with torch.no_grad():
        after = [float(v) for v in losses()]
    learned = {n: float(w.detach()) for n, w in zip(LEARNED_WEIGHTS, weights, strict=True)}
    learned["unlisted_prior"] = float(torch.sigmoid(raw_kappa.detach()))
    params = ScorerParams(**{**{f.name: getattr(start, f.name) for f in fields(ScorerParams)},
                             **learned})
    per_run = {r.name: {"peaks": int(r.labeled.sum()),
                        "log_loss_before": b / max(int(r.labeled.sum()), 1),
                        "log_loss_after": a / max(int(r.labeled.sum()), 1)}
               for r, b, a in zip(runs, before, after, strict=True)}
    report = {"peaks": n_labeled, "runs": per_run,
              "log_loss_before": sum(before) / n_labeled,
              "log_loss_after": sum(after) / n_labeled,
              "evaluations": steps[0], "seconds": time.perf_counter() - t0}
    log.info("trained on %d peaks of %d runs: log loss %.4f -> %.4f", n_labeled, len(runs),
             report["log_loss_before"], report["log_loss_after"])
    return params, report
