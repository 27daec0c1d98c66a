"""Annotation of one partition of peaks: candidates, features, scores, refinement.

Every function here works on one partition and depends only on its own peaks, the ion table
and the frozen settings, so a peak's result never depends on how the peaks were partitioned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dask_assign.config import AssignConfig, Calibration
from dask_assign.filtering.join import (
    batches_by_pairs,
    range_join,
    rank_within_peak,
    window_bounds,
)
from dask_assign.filtering.space import (
    SearchSpace,
    calibrated_ions,
    candidate_ppm,
    candidate_rt_window,
    centred_mz,
)
from dask_assign.scoring.features import PairFeatures, pair_features
from dask_assign.scoring.scorer import get_scorer, logsumexp_rounds, segment_softmax, with_isomers
from dask_assign.scoring.tables import to_tables


def peak_tensors(part, device: str) -> dict:
    """``mz``, ``rt``, ``intensity`` of a pandas or cudf partition as float64 tensors."""
    out = {}
    for col in ("mz", "rt", "intensity"):
        series = part[col]
        if hasattr(series, "to_cupy"):  # cudf: a device array, handed to torch by DLPack
            out[col] = torch.from_dlpack(series.astype("float64").to_cupy(na_value=np.nan))
        else:
            out[col] = torch.from_numpy(series.to_numpy(dtype=np.float64, na_value=np.nan)
                                        .copy()).to(device)
    return out


@dataclass
class ScoredPairs:
    """Candidate pairs of a set of peaks, scored.

    ``features`` are ordered by peak, best first; ``rank`` numbers them within each peak;
    ``prob`` and ``p_null`` follow the overflow policy (NaN for a flagged peak). ``logit`` is
    each kept pair's logit against the null slot, ``isomer`` the log odds that an unlisted
    compound of its formula made the peak instead (that probability is the null's), and
    ``log_rest`` the log of the summed weight of candidates scored but not kept (``-inf``
    unless ``overflow="rounds"``) with ``rest_isomer`` the share of it that is their
    unlisted isomers', so the context pass can re-weigh the same hypotheses.
    """

    features: PairFeatures
    rank: torch.Tensor
    prob: torch.Tensor
    p_null: torch.Tensor
    n_candidates: torch.Tensor
    overflow: torch.Tensor
    logit: torch.Tensor
    isomer: torch.Tensor
    log_rest: torch.Tensor
    rest_isomer: torch.Tensor

    #: Fields with one entry per kept pair, and per peak.
    PAIR_FIELDS = ("rank", "prob", "logit", "isomer")
    PEAK_FIELDS = ("p_null", "n_candidates", "overflow", "log_rest", "rest_isomer")


def slot_probabilities(logit, isomer, peak, n, log_rest=None, rest_isomer=None):
    """Probabilities of each candidate and of each peak's null (which takes the candidates'
    unlisted isomers, :func:`~dask_assign.scoring.scorer.with_isomers`), over the kept candidates
    and, where given, the summed weight ``log_rest`` of candidates not kept (of which the
    share ``rest_isomer`` is their isomers', and so the null's)."""
    slot, share = with_isomers(logit, isomer)
    to_null = torch.zeros(n, dtype=slot.dtype, device=slot.device)
    if log_rest is None:
        prob, p_null = segment_softmax(slot, peak, n)
    else:
        rest = torch.nonzero(torch.isfinite(log_rest)).flatten()
        prob, p_null = segment_softmax(torch.cat([slot, log_rest[rest]]),
                                       torch.cat([peak, rest]), n)
        to_null[rest] = prob[slot.shape[0]:] * rest_isomer[rest]
        prob = prob[: slot.shape[0]]
    return prob * share, p_null + to_null.index_add(0, peak, prob * (1 - share))


def score_peaks(peaks: dict, ions: dict, space: SearchSpace, config: AssignConfig,
                calibration: Calibration, k: int, widen: float = 1.0,
                adduct: int | None = None) -> ScoredPairs:
    """Join, score and keep at most ``k`` candidates per peak.

    Parameters
    ----------
    peaks : dict of torch.Tensor
    ions : dict of torch.Tensor
        From :func:`calibrated_ions`.
    space : SearchSpace
    config : AssignConfig
    calibration : Calibration
    k : int
        Candidates kept per peak.
    widen : float
        Factor on the ppm and RT windows (the refinement searches wider).
    adduct : int, optional
        Only this adduct's ions are candidates (the calibration's main adduct).
    """
    n = peaks["mz"].shape[0]
    pi, ii = range_join(centred_mz(peaks["mz"], calibration), peaks["rt"], ions["mz"],
                        ions["mapped_rt"], space.bins,
                        candidate_ppm(config, calibration, space, widen),
                        candidate_rt_window(config, calibration) * widen)
    if adduct is not None:
        mine = ions["adduct"][ii] == adduct
        pi, ii = pi[mine], ii[mine]
    feats = pair_features(pi, ii, peaks, ions)
    scorer = get_scorer(config.scorer, calibration, config.device)
    logits = scorer(feats)
    isomer = scorer.isomer_odds(feats)
    order, rank, _ = rank_within_peak(feats.peak, logits)
    n_cand = torch.bincount(feats.peak, minlength=n)
    overflow = n_cand > k
    keep = rank < k
    if config.overflow == "rounds":
        feats, logits, isomer = feats.take(order), logits[order], isomer[order]
        # Every candidate counts in the normaliser, K at a time; only the best K are listed.
        slot, share = with_isomers(logits, isomer)
        log_z = logsumexp_rounds(slot, feats.peak, n, torch.div(rank, k, rounding_mode="floor"))
        gone = feats.peak[~keep]
        weight = torch.exp(slot[~keep] - log_z[gone])
        dropped = torch.zeros_like(log_z).index_add(0, gone, weight)
        rest_isomer = torch.zeros_like(log_z).index_add(0, gone, weight * (1 - share[~keep]))
        rest_isomer = torch.where(dropped > 0, rest_isomer / dropped, rest_isomer)
        log_rest = torch.log(dropped) + log_z
        feats, rank, logits, isomer = feats.take(keep), rank[keep], logits[keep], isomer[keep]
        prob, p_null = slot_probabilities(logits, isomer, feats.peak, n, log_rest, rest_isomer)
    else:
        kept = order[keep]  # the listed pairs alone, gathered once
        feats, logits, rank, isomer = feats.take(kept), logits[kept], rank[keep], isomer[kept]
        prob, p_null = slot_probabilities(logits, isomer, feats.peak, n)
        log_rest = torch.full_like(p_null, float("-inf"))
        rest_isomer = torch.zeros_like(p_null)
        if config.overflow == "flag":
            # No call for a peak whose candidates were cut: it is left for review.
            nan = torch.tensor(float("nan"), dtype=prob.dtype, device=prob.device)
            prob = torch.where(overflow[feats.peak], nan, prob)
            p_null = torch.where(overflow, nan, p_null)
    return ScoredPairs(feats, rank, prob, p_null, n_cand, overflow, logits, isomer, log_rest,
                       rest_isomer)


def _merge(first: ScoredPairs, second: ScoredPairs, redo: torch.Tensor) -> ScoredPairs:
    """Replace the pairs and per-peak values of the peaks ``redo`` (global peak rows,
    ascending) by ``second``, whose peaks are numbered 0..len(redo)-1. Both list their pairs
    grouped by peak in peak order, and so does the result: a peak's pairs come from one pass,
    in that pass's order (each row is placed, not sorted, into the merged table)."""
    n = first.overflow.shape[0]
    gone = torch.zeros_like(first.overflow)
    gone[redo] = True
    keep = ~gone[first.features.peak]
    p1, p2 = first.features.peak[keep], redo[second.features.peak]
    c1, c2 = torch.bincount(p1, minlength=n), torch.bincount(p2, minlength=n)
    both = c1 + c2
    start = torch.cumsum(both, 0) - both

    def place(peak, count):
        within = torch.arange(peak.numel(), device=peak.device) - (torch.cumsum(count, 0)
                                                                  - count)[peak]
        return start[peak] + within

    d1, d2 = place(p1, c1), place(p2, c2)
    total = p1.numel() + p2.numel()

    def put(a, b):
        out = torch.empty(total, dtype=a.dtype, device=a.device)
        out[d1] = a[keep]
        out[d2] = b
        return out

    f1, f2 = first.features, second.features
    feats = PairFeatures(**{k: put(getattr(f1, k), p2 if k == "peak" else getattr(f2, k))
                            for k in f1.__dict__})
    pairs = {k: put(getattr(first, k), getattr(second, k)) for k in ScoredPairs.PAIR_FIELDS}
    peaks = {}
    for k in ScoredPairs.PEAK_FIELDS:
        peaks[k] = getattr(first, k).clone()
        peaks[k][redo] = getattr(second, k)
    return ScoredPairs(feats, **pairs, **peaks)


def best_calls(scored: ScoredPairs, n: int, space: SearchSpace):
    """The call of each peak: the library compound with the largest probability where that
    beats the null, named by its likeliest candidate ion.

    The question a call answers is which compound made the peak, so a compound's probability
    is summed over its candidate ions: isotopologues a peak cannot tell apart (13C2 and 18O
    of one molecule, a few ppm apart) split the ion's probability, not the compound's.

    Parameters
    ----------
    scored : ScoredPairs
    n : int
        Peaks of the partition.
    space : SearchSpace
        The ion table ``scored`` refers to (its ions' compounds).

    Returns
    -------
    pair : torch.Tensor (int64)
        Row of ``scored`` holding the call (the compound's most probable candidate), -1 for a
        null call.
    prob : torch.Tensor
        Probability of the called compound (of the null where the null wins; NaN for a
        flagged overflow).
    """
    f = scored.features
    device = scored.p_null.device
    pair = torch.full((n,), -1, dtype=torch.int64, device=device)
    best = torch.full((n,), -1.0, dtype=scored.prob.dtype, device=device)
    if f.peak.numel():
        compound = space.take("compound", f.ion)
        # One group per peak and compound, named by its best-ranked candidate.
        key = f.peak * len(space.compounds) + compound
        groups, inverse = torch.unique(key, return_inverse=True)
        total = torch.zeros(groups.numel(), dtype=scored.prob.dtype, device=device)
        total.index_add_(0, inverse, scored.prob.nan_to_num(0.0))
        rank = scored.rank.to(torch.int64)
        unset = int(rank.max()) + 1
        head_rank = torch.full((groups.numel(),), unset, dtype=torch.int64, device=device)
        head_rank.scatter_reduce_(0, inverse, rank, reduce="amin")
        is_head = rank == head_rank[inverse]
        head = torch.empty(groups.numel(), dtype=torch.int64, device=device)
        head[inverse[is_head]] = torch.nonzero(is_head).flatten()
        group_peak = f.peak[head]
        best.scatter_reduce_(0, group_peak, total, reduce="amax")
        # Ties between compounds (isomers the data cannot tell apart) go to the better-ranked.
        top = total == best[group_peak]
        pick_rank = torch.full((n,), unset, dtype=torch.int64, device=device)
        pick_rank.scatter_reduce_(0, group_peak[top], head_rank[top], reduce="amin")
        chosen = top & (head_rank == pick_rank[group_peak])
        pair[group_peak[chosen]] = head[chosen]
    # A flagged overflow peak has NaN everywhere: no call, NaN probability.
    wins = (best > scored.p_null) & (pair >= 0)
    pair = torch.where(wins, pair, torch.full_like(pair, -1))
    prob = torch.where(wins, best, scored.p_null)
    return pair, prob


def _concat(parts: list[ScoredPairs]) -> ScoredPairs:
    """Join the scored pairs of consecutive peak batches (peaks renumbered in order)."""
    if len(parts) == 1:
        return parts[0]
    feats, offset = [], 0
    for part in parts:
        f = part.features
        feats.append(PairFeatures(**{**f.__dict__, "peak": f.peak + offset}))
        offset += part.p_null.shape[0]
    features = PairFeatures(**{k: torch.cat([getattr(f, k) for f in feats])
                               for k in feats[0].__dict__})
    return ScoredPairs(features, **{k: torch.cat([getattr(p, k) for p in parts])
                                    for k in ScoredPairs.PAIR_FIELDS + ScoredPairs.PEAK_FIELDS})


def score_in_batches(peaks: dict, ions: dict, space: SearchSpace, config: AssignConfig,
                     calibration: Calibration, k: int, widen: float = 1.0,
                     adduct: int | None = None) -> ScoredPairs:
    """:func:`score_peaks` over batches of about ``config.max_pairs`` candidate pairs, so a
    crowded m/z range (or a huge tolerance) cannot exhaust memory."""
    lo, hi = window_bounds(peaks["mz"], space.bins)
    return _concat([score_peaks({key: v[a:b] for key, v in peaks.items()}, ions, space, config,
                                calibration, k, widen, adduct)
                    for a, b in batches_by_pairs(lo, hi, config.max_pairs)])


@dataclass
class PartitionResult:
    """One partition between the pipeline's stages: its peaks, their scored candidates and
    calls (see :func:`best_calls`), which peaks the second pass refined, and what the context
    pass found (co-eluting partners of each peak; whether it changed the call)."""

    part: object
    peaks: dict
    scored: ScoredPairs
    pair: torch.Tensor
    prob: torch.Tensor
    refined: torch.Tensor
    n_partners: torch.Tensor | None = None
    changed: torch.Tensor | None = None


def first_pass(part, space: SearchSpace, config: AssignConfig,
               calibration: Calibration) -> PartitionResult:
    """Join and score a partition with ``k_first`` candidates per peak."""
    peaks = peak_tensors(part, config.device)
    ions = calibrated_ions(space, calibration, config.device)
    scored = score_in_batches(peaks, ions, space, config, calibration, config.k_first)
    n = peaks["mz"].shape[0]
    pair, prob = best_calls(scored, n, space)
    refined = torch.zeros(n, dtype=torch.bool, device=prob.device)
    return PartitionResult(part, peaks, scored, pair, prob, refined)


def second_pass(result: PartitionResult, space: SearchSpace, config: AssignConfig,
                calibration: Calibration) -> PartitionResult:
    """Re-score the peaks whose call is below ``refine_below`` (or that had no candidate)
    with up to ``k_max`` candidates in windows ``refine_widen`` times wider."""
    peaks, scored = result.peaks, result.scored
    # Low confidence, or nothing in the first window (a drifted match may lie just beyond).
    # NaN (a flagged overflow) compares False: it is left for review.
    refined = (result.prob < config.refine_below) | (scored.n_candidates == 0)
    redo = torch.nonzero(refined).flatten()
    if redo.numel() == 0:
        return PartitionResult(result.part, peaks, scored, result.pair, result.prob, refined)
    sub = {k: v[redo] for k, v in peaks.items()}
    second = score_in_batches(sub, calibrated_ions(space, calibration, config.device), space,
                              config, calibration, config.k_max, widen=config.refine_widen)
    scored = _merge(scored, second, redo)
    pair, prob = best_calls(scored, peaks["mz"].shape[0], space)
    return PartitionResult(result.part, peaks, scored, pair, prob, refined)


def annotate_partition(part, space: SearchSpace, config: AssignConfig,
                       calibration: Calibration):
    """Annotate one partition of peaks.

    Parameters
    ----------
    part : pandas.DataFrame or cudf.DataFrame
        Peaks with ``peak_id``, ``mz``, ``rt`` (minutes), ``intensity``.
    space : SearchSpace
    config : AssignConfig
    calibration : Calibration

    Returns
    -------
    assignments, candidates : pandas.DataFrame
        One row per peak (``ASSIGNMENT_DTYPES``), and one per kept candidate
        (``CANDIDATE_DTYPES``), in peak order.
    """
    result = second_pass(first_pass(part, space, config, calibration), space, config,
                         calibration)
    return to_tables(result, space)
