"""The context pass: co-eluting peaks that are other ions of the same molecule.

One molecule makes several peaks at one retention time: its isotopologues (13C, 15N, 18O,
34S, 37Cl, ...), other adducts, in-source losses. A peak alone may be ambiguous ([M+Na]+ of
one compound against [M+H]+ of another, an 18O peak against the monoisotopic peak of a
heavier compound); its co-eluting partners usually are not.

For every hypothesis about a peak (each candidate, and each label "ion (adduct, 13C count) of a
molecule not in the library" that the null slot stands for) the pass asks which partner ions
that hypothesis predicts and whether they are there:

* a candidate's isotopologue siblings (its monoisotopic ion, and the most abundant others of
  its compound and adduct) at the m/z and intensity ratio its formula predicts, from the ion
  table; a label's 13C partners from the typical carbon count of its mass;
* the other adducts of the same molecule (:mod:`dask_assign.relations` maps m/z to m/z).

A partner found multiplies the hypothesis' odds by ``d q / rho + (1 - d)``, where ``d`` is the
chance the partner is detected if the hypothesis holds, ``rho`` the chance that a peak lies in
the partner's window by accident (measured with decoy mass differences), and ``q`` how well
the partner fits (m/z, RT, intensity ratio) against a random peak; a partner missing
multiplies them by ``1 - d``. So an 18O peak whose monoisotopic peak is missing, or an acetate
adduct without its molecule's main ion, loses its support, while a main ion with no partner
loses little.

What the pass assumes of the run is fitted from the run (:func:`fit_context`, from sums over
RT blocks): the co-elution spread (13C pairs against decoys), the accident rate, the detection
limit, how often a molecule shows each adduct besides its main one (co-eluting pairs of
confident main-ion calls, against decoys: chance matches cannot inflate it), how often an
isotope partner is detected, and the share of unexplained peaks that are noise rather than
unknown molecules.

A peak's result depends only on its own candidates and on the peaks within the co-elution
tolerance, so blocks of peaks by RT with a halo that wide give the same result whatever the
number of blocks (:func:`dask_assign.pipeline.rt_blocks`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
import torch

from .annotate import (
    PartitionResult,
    ScoredPairs,
    SearchSpace,
    best_calls,
    calibrated_ions,
    candidate_rt_window,
    centred_mz,
    main_adduct,
    peak_tensors,
    score_in_batches,
    slot_probabilities,
)
from .calibration import prior_normaliser
from .candidates import (
    batches_by_pairs,
    range_join,
    rank_within_peak,
    run_filling,
    window_bounds,
)
from .chem import C13_ABUNDANCE, C13_SPACING
from .config import AssignConfig, Calibration
from .relations import ADDUCT, DECOY, DECOY_SHIFTS, ISOTOPE, RelationMaps, find_relations

#: Detection of a predicted isotope partner well above the detection limit, where the run
#: has too few confident calls to measure it (peak picking misses some of anything).
DETECT_MAX = 0.9
#: Chance that a molecule present shows its main adduct (the commonest one of the run); the
#: others' chances are measured against it.
ADDUCT_MAX = 0.9
#: Bins of the intensity-ratio residuals (natural log) behind the fitted ratio spread.
RATIO_BINS = np.linspace(-3.0, 3.0, 121)
#: Share of partners whose intensity is far off the predicted ratio where the run cannot
#: say, and how far (natural log): the robust tail of the intensity-ratio fit.
RATIO_OUTLIERS = 0.02
RATIO_OUTLIER_SIGMA = 1.0
#: Share of the true pairs that the co-elution tolerance holds, and the share of them spread
#: evenly over it rather than around 0 (peak apexes of weak or broad peaks wander).
COELUTION_QUANTILE = 0.95
COELUTION_TAIL = 0.2
#: Detection of a candidate isotopologue's monoisotopic ion where the intensity allows it.
MONO_DETECT = 0.98
#: 13C atoms the null's labels reach (an unknown molecule's other isotopologues are unknown).
NULL_13C = 2
#: Isotopologue clusters of a candidate searched besides its monoisotopic ion's (the most
#: abundant of its compound and adduct; those predicted below the detection limit weigh
#: nothing either way).
SIBLINGS = 6
# Peaks a partner search keeps per target (the nearest in RT).
MAX_PARTNERS = 4
#: Bins of the co-elution histograms of the adduct co-occurrence counts.
CO_BINS = 20
#: Pseudo-count (confident main-ion calls) pulling a measured adduct share toward the table's.
SHARE_PSEUDO = 5.0
#: Predicted isotope partners this far (natural log) above the detection limit count towards
#: the measured detection rate.
DETECT_MARGIN = math.log(10.0)
#: Spread (natural log) of the 13C1/M0 ratio over unknown molecules of one mass (their carbon
#: counts vary about the library's typical one).
UNKNOWN_RATIO_SIGMA = 0.4
#: Spread (natural log) of the detection threshold.
DETECT_SIGMA = 0.3
#: Adducts whose share of peaks is below this fraction of the commonest one's get no partner
#: search and no place in the null's mixture.
MIN_ADDUCT_SHARE = 1e-2
#: Bins of the co-elution histogram and of the log10 intensity histogram.
RT_BINS = 100
_LOG_RATIO13 = math.log(C13_ABUNDANCE / (1 - C13_ABUNDANCE))


@dataclass(frozen=True)
class ContextModel:
    """What the context pass fitted from the whole run (the same for every block).

    Attributes
    ----------
    rt_sigma : float
        Spread (minutes) of the RT difference between two ions of one molecule: from the RT
        differences of co-eluting 13C pairs in excess of decoy (chance) pairs.
    rt_tol : float
        Co-elution tolerance (minutes): 4 ``rt_sigma``.
    ppm : float
        Width of a partner's m/z window (ppm either side), from the fitted mass spread.
    log_kappa : float
        Log chance that one given peak within ``max_coelution`` of a peak falls into one of
        its partner windows by accident (from the decoys). A peak with ``c`` such neighbours
        has ``rho = c * kappa``: crowded stretches of the run (the void volume) make accidental
        partners likelier.
    log_detect : float
        Natural log of the intensity below which peaks are rarely detected (1st percentile).
    isotope_pairs : float
        13C pairs (in excess of decoys) behind ``rt_tol``.
    adduct_share : tuple of float
        Chance that a molecule present shows each adduct (by the ion table's adduct index):
        ``ADDUCT_MAX`` for the main adduct, the others measured as how often a confident
        main-ion call has the adduct's ion co-eluting, in excess of decoys (empty: the
        table's priors).
    isotope_detect : float
        Chance that an isotope partner predicted well above the detection limit is there (low
        where the peak table was de-isotoped): pooled over the isotopologues.
    label_detect : tuple of float
        The same for each isotopologue label of the ion table (by label index): a peak picker
        or a simulation may keep the 13C peaks and drop the others.
    noise_share : float
        Share of the peaks that no library ion explains that are noise (no molecule, so no
        partners) rather than molecules missing from the library.
    main_calls : float
        Confident main-ion calls behind ``adduct_share`` and ``isotope_detect``.
    ratio_sigma, ratio_outliers : float
        Spread (natural log) of an isotope partner's intensity around the ratio its formula
        predicts, and the share of partners far off it (interference, saturation, fine
        structure a peak picker or simulation drops): measured on the confident main-ion
        calls' partners.
    adduct_background : tuple of float
        log of how much denser the peaks that are not an adduct's ions lie beside its ions
        than beside the main adduct's (empty: the same). Real chemistry puts many peaks
        where a library compound's acetate or chloride adduct would be (other molecules one
        acetate heavier): chance cannot be measured with decoys alone there.
    """

    rt_sigma: float
    rt_tol: float
    ppm: float
    log_kappa: float
    log_detect: float
    isotope_pairs: float
    adduct_share: tuple = ()
    isotope_detect: float = DETECT_MAX
    label_detect: tuple = ()
    noise_share: float = 0.5
    main_calls: float = 0.0
    adduct_background: tuple = ()
    ratio_sigma: float = 0.15
    ratio_outliers: float = 0.02

    def to_dict(self) -> dict:
        """Plain values, for JSON (``None`` for a detection limit a table without intensities
        cannot give)."""
        out = {}
        for k, v in dataclasses.asdict(self).items():
            out[k] = list(v) if isinstance(v, tuple) else (v if math.isfinite(v) else None)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ContextModel:
        """Inverse of :meth:`to_dict`."""
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            v = data[f.name]
            values[f.name] = (tuple(float(x) for x in v) if isinstance(v, list)
                              else float("-inf") if v is None else float(v))
        return cls(**values)


def pair_sigma(calibration: Calibration) -> float:
    """Spread (ppm) of the m/z difference of two peaks of one molecule: two independent
    errors (the run's offset cancels)."""
    return math.sqrt(2.0) * calibration.mass_sigma_ppm


def partner_ppm(calibration: Calibration) -> float:
    """Partner window (ppm either side): 4 spreads of a pair's m/z difference."""
    return max(2.0, 4.0 * pair_sigma(calibration))


def neighbours(rt: np.ndarray, within: float) -> np.ndarray:
    """Other peaks within ``within`` minutes of each peak (of those given)."""
    ordered = np.sort(rt)
    return (np.searchsorted(ordered, rt + within, side="right")
            - np.searchsorted(ordered, rt - within, side="left") - 1)


def stat_columns(n_adducts: int, n_labels: int) -> list[str]:
    """Columns of :func:`context_stats` for an ion table of ``n_adducts`` adducts and
    ``n_labels`` isotopologue labels."""
    return (["n", "neighbours", "mz_min", "mz_max", "rt_min", "rt_max", "main_w",
             "all_w", "all_hit", "all_decoy"]
            + [f"pairs{b}" for b in range(n_adducts)]
            + [f"iso{k}" for k in range(RT_BINS)] + [f"decoy{k}" for k in range(RT_BINS)]
            + [f"{kind}{k}" for kind in ("sib_w", "sib_hit", "sib_decoy")
               for k in range(n_labels)]
            + [f"ratio{k}" for k in range(RATIO_BINS.size - 1)]
            + [f"co{b}_{k}" for b in range(n_adducts) for k in range(CO_BINS)]
            + [f"codecoy{b}_{k}" for b in range(n_adducts) for k in range(CO_BINS)])


class _BlockPeaks:
    """A block's peaks sorted by m/z, for target searches (co-eluting peaks near a predicted
    m/z)."""

    def __init__(self, mz: np.ndarray, rt: np.ndarray, ppm: float):
        self.order = np.argsort(mz, kind="stable")
        self.mz = np.ascontiguousarray(mz[self.order], dtype=np.float64)
        self.rt = np.ascontiguousarray(rt[self.order], dtype=np.float64)
        self.ppm = ppm

    def find(self, target_mz: np.ndarray, target_rt: np.ndarray, rt_tol: float):
        """(target, block row) of the peaks within ``ppm`` of a target m/z and ``rt_tol`` of
        its RT, ordered by target: at most ``MAX_PARTNERS`` per target, those nearest in RT.

        The cap bounds the work where many peaks pile up at one m/z and RT (repeated
        injections concatenated, a contaminant across a gradient): the evidence of a partner
        cluster saturates after the first few peaks at its place."""
        if target_mz.size == 0 or self.mz.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        k = self.ppm * 1e-6
        tm = np.ascontiguousarray(target_mz, dtype=np.float64)
        # |t - p| <= k p  <=>  t / (1 + k) <= p <= t / (1 - k)
        lo = np.searchsorted(self.mz, tm / (1 + k), side="left")
        hi = np.searchsorted(self.mz, tm / (1 - k), side="right")
        t, j = run_filling(_capped_sweep, (tm, np.ascontiguousarray(target_rt, dtype=np.float64),
                                           self.mz, self.rt, lo, hi, k, float(rt_tol),
                                           MAX_PARTNERS),
                           MAX_PARTNERS * tm.size, 2)
        return t, self.order[j]


@numba.njit(cache=True, nogil=True)
def _capped_sweep(tm, trt, mz, rt, lo, hi, k, rt_tol, cap, out_t, out_j):
    """Per target, the ``cap`` matches in ``[lo, hi)`` nearest in RT (ties: lower row)."""
    best_d = np.empty(cap)
    best_j = np.empty(cap, dtype=np.int64)
    found = 0
    for t in range(tm.size):
        n = 0
        for j in range(lo[t], hi[t]):
            if abs(tm[t] - mz[j]) > k * mz[j]:
                continue
            d = abs(trt[t] - rt[j])
            if not d <= rt_tol and not np.isnan(rt[j]):
                continue
            if np.isnan(d):
                d = 0.0
            if n == cap and d >= best_d[n - 1]:
                continue
            at = n if n < cap else cap - 1
            while at > 0 and best_d[at - 1] > d:
                best_d[at] = best_d[at - 1]
                best_j[at] = best_j[at - 1]
                at -= 1
            best_d[at] = d
            best_j[at] = j
            if n < cap:
                n += 1
        for q in range(n):
            if found < out_t.size:
                out_t[found] = t
                out_j[found] = best_j[q]
            found += 1
    return found


def nearest_target(owner: np.ndarray, target_mz: np.ndarray, t: np.ndarray, j: np.ndarray,
                   peak_mz: np.ndarray) -> np.ndarray:
    """Which hits ``(t, j)`` (target, peak) to keep when the targets of one owner lie close
    together: a peak counts for the owner's target nearest to it in m/z only, so a peak that
    falls in two partner windows (a 13C2 peak near the 18O1 position) is not found twice."""
    if t.size == 0:
        return np.zeros(0, dtype=bool)
    err = np.abs(peak_mz[j] - target_mz[t])
    key = owner[t].astype(np.int64) * (int(j.max()) + 1) + j
    order = np.lexsort((err, key))
    first = np.ones(order.size, dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = np.zeros(t.size, dtype=bool)
    keep[order[first]] = True
    return keep


def _first_hit(owner: np.ndarray, drt: np.ndarray, n: int) -> np.ndarray:
    """Smallest ``|drt|`` per owner (``inf`` for owners without a hit)."""
    best = np.full(n, np.inf)
    np.minimum.at(best, owner, np.abs(drt))
    return best


def context_stats(block: pd.DataFrame, space: SearchSpace, config: AssignConfig,
                  calibration: Calibration) -> pd.DataFrame:
    """Counts of one RT block for :func:`fit_context`, over the block's core peaks: RT
    differences of co-eluting 13C pairs and of decoy pairs; how often any peak predicted
    well above the detection limit has its 13C partner; and, for the confident main-ion
    calls of a first pass, how often each other adduct's ion and each isotopologue co-elute
    with them (against decoys).

    Counts add up over blocks, so the fit is the same whatever the blocks.
    """
    core = block["core"].to_numpy(dtype=bool)
    mz = block["mz"].to_numpy(dtype=np.float64)
    rt = block["rt"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        li = np.log(block["intensity"].to_numpy(dtype=np.float64, na_value=np.nan))
    ppm = partner_ppm(calibration)
    window = config.max_coelution
    # 13C1 of singly charged ions, and the decoys.
    maps = RelationMaps.build([1], [1], [0.0], max_isotope=1, adducts=False, decoys=True)
    maps = RelationMaps(*(v[maps.step >= 0] for v in dataclasses.astuple(maps)))
    i, j, m = find_relations(mz, rt, maps, ppm, window, anchor=core)
    drt = np.abs(rt[j] - rt[i])
    edges = np.linspace(0.0, window, RT_BINS + 1)
    iso = np.histogram(drt[maps.kind[m] == ISOTOPE], edges)[0]
    decoy = np.histogram(drt[maps.kind[m] == DECOY], edges)[0]
    # Any core peak whose 13C1 partner (typical carbon count) is well above the limit.
    n_c = np.maximum(space.carbon_per_mass * mz, 1.0)
    pred = li + np.log(n_c * C13_ABUNDANCE / (1 - C13_ABUNDANCE))
    strong = core & (pred >= calibration.log_detect + DETECT_MARGIN)
    hit_iso = np.zeros(mz.size, dtype=bool)
    hit_iso[i[maps.kind[m] == ISOTOPE]] = True
    hit_dec = np.bincount(i[maps.kind[m] == DECOY], minlength=mz.size)
    main_w, sib, co, ratio = _main_call_counts(block, core, li, space, config, calibration,
                                               ppm, window)
    pairs = _adduct_pairs(block, core, space, config, calibration)
    any_core = core.any()
    row = np.concatenate([
        [core.sum(), neighbours(rt, window)[core].sum(),
         mz[core].min() if any_core else np.inf, mz[core].max() if any_core else -np.inf,
         rt[core].min() if any_core else np.inf, rt[core].max() if any_core else -np.inf,
         main_w, strong.sum(), (strong & hit_iso).sum(), hit_dec[strong].sum()], pairs,
        iso, decoy, sib.ravel(), ratio, co.ravel()]).astype(np.float64)
    return pd.DataFrame([row], columns=stat_columns(len(space.adduct_names),
                                                    len(space.isotope_labels)))


def _adduct_pairs(block, core, space, config, calibration) -> np.ndarray:
    """Core peaks with a candidate among each adduct's monoisotopic ions, in the candidate
    windows (a peak beside two isomers counts once): what the null's density near each
    adduct's ions is measured from."""
    n_adducts = len(space.adduct_names)
    rows = np.flatnonzero(core)
    if rows.size == 0 or len(space.mz) == 0:
        return np.zeros(n_adducts)
    peaks = peak_tensors(block.iloc[rows], "cpu")
    ions = calibrated_ions(space, calibration, "cpu")
    counts = np.zeros(n_adducts)
    mz = centred_mz(peaks["mz"], calibration)
    lo, hi = window_bounds(mz, space.bins)
    for a, b in batches_by_pairs(lo, hi, config.max_pairs):
        pi, ii = range_join(mz[a:b], peaks["rt"][a:b], ions["mz"], ions["mapped_rt"],
                            space.bins, config.ppm, candidate_rt_window(config, calibration))
        pi, ii = pi.numpy(), ii.numpy()
        mono = space.isotope[ii] == 0
        key = np.unique(pi[mono] * n_adducts + space.adduct[ii[mono]])
        counts += np.bincount(key % n_adducts, minlength=n_adducts)
    return counts


def _main_call_counts(block, core, li, space, config, calibration, ppm, window):
    """The confident main-ion calls of a block's core peaks (a first pass over the main
    adduct's monoisotopic ions, each pair weighed by its probability) and what co-elutes
    with them: the summed weight; per isotopologue label, the weight of the calls whose
    sibling of that label is predicted well above the detection limit, and its hits and
    decoy hits; per adduct, the co-occurrence histograms (hits, then decoy hits, by RT
    difference)."""
    n_adducts, n_labels = len(space.adduct_names), len(space.isotope_labels)
    co = np.zeros((2, n_adducts, CO_BINS))
    sib = np.zeros((3, n_labels))
    ratio = np.zeros(RATIO_BINS.size - 1)
    rows = np.flatnonzero(core)
    if rows.size == 0 or len(space.mz) == 0:
        return 0.0, sib, co, ratio
    main = main_adduct(space)
    part = block.iloc[rows]
    peaks = peak_tensors(part, "cpu")
    scored = score_in_batches(peaks, calibrated_ions(space, calibration, "cpu"), space,
                              config, calibration, config.k_first, adduct=main)
    f = scored.features
    ion = f.ion.numpy()
    w = scored.prob.nan_to_num(0.0).numpy()
    keep = (space.isotope[ion] == 0) & (w > 0)
    ion, w, peak = ion[keep], w[keep], f.peak.numpy()[keep]
    if ion.size == 0:
        return 0.0, sib, co, ratio
    own = rows[peak]
    pmz = block["mz"].to_numpy(dtype=np.float64)[own]
    prt = block["rt"].to_numpy(dtype=np.float64)[own]
    block_rt = block["rt"].to_numpy(dtype=np.float64)
    found = _BlockPeaks(block["mz"].to_numpy(dtype=np.float64), block_rt, ppm)
    shifts = np.asarray(DECOY_SHIFTS)

    def search(owner, target):
        """Per target and decoy shift (columns: 0 the target, then the decoys): the
        smallest RT difference of a co-eluting peak other than the call's own (inf: none)."""
        tgt = (target[:, None] + np.r_[0.0, shifts][None, :]).ravel()
        who = np.repeat(owner, shifts.size + 1)
        t, jj = found.find(tgt, prt[who], window)
        mine = jj != own[who[t]]
        best = _first_hit(t[mine], block_rt[jj[mine]] - prt[who[t[mine]]], tgt.size)
        return best.reshape(owner.size, shifts.size + 1)

    # Adduct co-occurrence: the monoisotopic ion of each other adduct of the call's compound.
    compound = space.compound[ion]
    for b in range(n_adducts):
        other = space.monoisotopic[compound, b] if b != main else np.full(ion.size, -1)
        ok = np.flatnonzero(other >= 0)
        if ok.size == 0:
            continue
        best = search(ok, pmz[ok] * space.mz[other[ok]] / space.mz[ion[ok]])
        hit = np.isfinite(best)
        bins = np.minimum((np.where(hit, best, 0.0) / window * CO_BINS).astype(np.int64),
                          CO_BINS - 1)
        weights = np.broadcast_to(w[ok][:, None], best.shape)
        co[0, b] += np.bincount(bins[:, 0][hit[:, 0]], weights=weights[:, 0][hit[:, 0]],
                                minlength=CO_BINS)
        co[1, b] += np.bincount(bins[:, 1:][hit[:, 1:]], weights=weights[:, 1:][hit[:, 1:]],
                                minlength=CO_BINS)
    # Isotopologue partner clusters predicted well above the detection limit, by label.
    owner, cluster, log_cluster, own_cluster, member, member_row = sibling_targets(
        space, ion, ppm)
    pred = li[own[owner]] + log_cluster - own_cluster
    ok = pred >= calibration.log_detect + DETECT_MARGIN
    if ok.any():
        near = np.zeros((owner.size, shifts.size + 1), dtype=bool)
        target = pmz[owner[member]] * space.mz[member_row] / space.mz[ion[owner[member]]]
        best = search(owner[member], target)
        # Decoys as found; a real partner only where it is the nearest of the call's targets.
        np.logical_or.at(near[:, 1:], member, best[:, 1:] <= window)
        t, jj = found.find(target, prt[owner[member]], window)
        mine = jj != own[owner[member[t]]]
        t, jj = t[mine], jj[mine]
        hit = nearest_target(owner[member], target, t, jj,
                             block["mz"].to_numpy(dtype=np.float64))
        near[member[t[hit]], 0] = True
        # How far the partners' intensities lie from the predicted ratio (strong ones only).
        partner = member[t[hit]]
        strong = ok[partner]
        residual = li[jj[hit]][strong] - pred[partner][strong]
        good = np.isfinite(residual)
        ratio += np.histogram(residual[good], RATIO_BINS,
                              weights=w[owner[partner[strong]]][good])[0]
        owner, near, label = owner[ok], near[ok], space.isotope[cluster[ok]]
        sib[0] += np.bincount(label, weights=w[owner], minlength=n_labels)
        sib[1] += np.bincount(label, weights=w[owner] * near[:, 0], minlength=n_labels)
        sib[2] += np.bincount(label, weights=w[owner] * near[:, 1:].sum(axis=1),
                              minlength=n_labels)
    return float(w.sum()), sib, co, ratio


def fit_context(stats: pd.DataFrame, config: AssignConfig, calibration: Calibration,
                space: SearchSpace) -> ContextModel:
    """Fit the :class:`ContextModel` from the summed :func:`context_stats` of all blocks.

    The co-elution tolerance is 4 robust standard deviations of the RT differences of the 13C
    pairs in excess of the decoys' (random) pairs. The accident rate is the decoys' hit rate
    per co-eluting neighbour, shrunk towards an even spread of the peaks when hits are few.
    An adduct's share is the rate at which confident main-ion calls have its ion within the
    tolerance, less the decoys' rate, pulled toward the table's prior by a few pseudo-calls.
    """
    total = stats.sum()
    mins = stats[["mz_min", "rt_min"]].min()
    maxs = stats[["mz_max", "rt_max"]].max()
    iso = total[[f"iso{k}" for k in range(RT_BINS)]].to_numpy()
    decoys = total[[f"decoy{k}" for k in range(RT_BINS)]].to_numpy()
    n_decoy = len(DECOY_SHIFTS)
    excess = np.clip(iso - decoys / n_decoy, 0, None)
    width = config.max_coelution / RT_BINS
    if excess.sum() >= 10:
        # Robust spread of the true pairs' RT differences (half-normal: median = 0.674 sd),
        # and 4 of them: the tail of the excess is mostly chance pairs.
        mid = (np.arange(RT_BINS) + 0.5) * width
        median = mid[int(np.searchsorted(np.cumsum(excess) / excess.sum(), 0.5))]
        rt_sigma = max(median / 0.6745, width / 2)
    else:  # too few pairs to tell: an eighth of the search width
        rt_sigma = config.max_coelution / 8
    # The tolerance holds nearly all true pairs: co-elution differences have a long tail
    # (weak or broad peaks), so a quantile of the excess, not a multiple of the core spread.
    if excess.sum() >= 10:
        tail = mid[int(np.searchsorted(np.cumsum(excess) / excess.sum(), COELUTION_QUANTILE))]
        rt_tol = min(max(4 * rt_sigma, tail + width / 2), config.max_coelution)
    else:
        rt_tol = min(4 * rt_sigma, config.max_coelution)
    ppm = partner_ppm(calibration)
    hits = float(decoys[: int(round(rt_tol / width))].sum())
    mz_span = math.log(max(maxs["mz_max"], 1.0) / max(mins["mz_min"], 1e-3)) \
        if np.isfinite(mins["mz_min"]) else 1.0
    # Prior: neighbours spread evenly over log m/z and over the co-elution window.
    uniform = min(1.0, 2 * ppm * 1e-6 / max(mz_span, 1e-6)) * rt_tol / config.max_coelution
    kappa = (hits + 1.0) / (n_decoy * float(total["neighbours"]) + 1.0 / max(uniform, 1e-12))
    detect, labels, noise = _detection(total, space, calibration)
    ratio_sigma, ratio_outliers = _ratio_spread(total, config)
    shares = _adduct_shares(total, space, rt_tol, config)
    background = _adduct_background(total, space, shares, calibration)
    return ContextModel(rt_sigma=float(rt_sigma), rt_tol=float(rt_tol), ppm=float(ppm),
                        log_kappa=float(math.log(kappa)), log_detect=calibration.log_detect,
                        isotope_pairs=float(excess.sum()), adduct_share=shares,
                        isotope_detect=detect, label_detect=labels, noise_share=noise,
                        main_calls=float(total["main_w"]), adduct_background=background,
                        ratio_sigma=ratio_sigma, ratio_outliers=ratio_outliers)


def _ratio_spread(total, config) -> tuple[float, float]:
    """Spread (natural log) of isotope partners' intensities around the predicted ratio, and
    the share far off it: the robust spread (1.4826 median absolute residual) of the
    confident main-ion calls' partners (at least ``config.isotope_ratio_sigma``), and the
    share beyond four of it (a few pseudo-partners pull it toward ``RATIO_OUTLIERS``)."""
    hist = total[[f"ratio{k}" for k in range(RATIO_BINS.size - 1)]].to_numpy()
    floor = config.isotope_ratio_sigma
    if hist.sum() < 10:
        return floor, RATIO_OUTLIERS
    mid = 0.5 * (RATIO_BINS[:-1] + RATIO_BINS[1:])
    centre = mid[int(np.searchsorted(np.cumsum(hist) / hist.sum(), 0.5))]
    dev = np.abs(mid - centre)
    order = np.argsort(dev)
    mad = dev[order][int(np.searchsorted(np.cumsum(hist[order]) / hist.sum(), 0.5))]
    sigma = float(max(1.4826 * mad, floor))
    far = float(hist[dev > 4 * sigma].sum())
    share = (far + SHARE_PSEUDO * RATIO_OUTLIERS) / (hist.sum() + SHARE_PSEUDO)
    return sigma, float(min(max(share, 0.005), 0.3))


def _detection(total, space: SearchSpace, calibration: Calibration):
    """Detection of isotope partners well above the limit: pooled, and per label (the
    confident main-ion calls' siblings, less decoys, each label pulled toward the pooled
    rate by a few pseudo-calls); and the noise share of the unexplained peaks: any peak's 13C
    partner is there at ``(1 - null * noise)`` times the 13C1 rate, if unknown molecules show
    their isotopes as library compounds do."""
    n_decoy = len(DECOY_SHIFTS)
    n_labels = len(space.isotope_labels)
    w = total[[f"sib_w{k}" for k in range(n_labels)]].to_numpy()
    hit = total[[f"sib_hit{k}" for k in range(n_labels)]].to_numpy() \
        - total[[f"sib_decoy{k}" for k in range(n_labels)]].to_numpy() / n_decoy
    if w.sum() < 10:
        return DETECT_MAX, (DETECT_MAX,) * n_labels, 0.5
    pooled = float(min(max(hit.sum() / w.sum(), 0.05), 0.98))
    labels = np.clip((hit + SHARE_PSEUDO * pooled) / (w + SHARE_PSEUDO), 0.01, 0.98)
    # The monoisotopic ion, as a partner of its isotopologues: more intense than they are, and
    # the peak every peak picker reports.
    labels[0] = MONO_DETECT
    c13 = space.isotope_labels.index("13C1") if "13C1" in space.isotope_labels else 0
    noise = 0.5
    if total["all_w"] >= 10:
        seen = (total["all_hit"] - total["all_decoy"] / n_decoy) / total["all_w"]
        null = min(max(calibration.null_prior, 0.05), 1.0)
        noise = (1.0 - seen / labels[c13]) / null
    return pooled, tuple(float(v) for v in labels), float(min(max(noise, 0.05), 0.95))


def _adduct_background(total, space: SearchSpace, shares: tuple,
                       calibration: Calibration) -> tuple:
    """log of each adduct's background density beside its ions against the main adduct's:
    the candidate pairs in excess of the adduct's own ions (the main-ion calls times its
    share), per monoisotopic ion of the adduct. One pseudo-pair per adduct keeps a rare one
    from dividing by nothing."""
    n_adducts = len(space.adduct_names)
    main = main_adduct(space)
    calls = float(total["main_w"])
    # Ions by distinct m/z (isomers share one).
    mono = np.flatnonzero(space.isotope == 0)
    distinct = np.unique(np.stack([space.adduct[mono], np.round(space.mz[mono], 4)]), axis=1)
    n_ions = np.bincount(distinct[0].astype(np.int64), minlength=n_adducts).astype(float)
    pairs = np.array([float(total[f"pairs{b}"]) for b in range(n_adducts)])
    true = calls * np.asarray(shares) / ADDUCT_MAX
    density = (np.maximum(pairs - true, 0.0) + 1.0) / np.maximum(n_ions, 1.0)
    return tuple(float(v) for v in np.log(density / density[main]))


def _adduct_shares(total, space: SearchSpace, rt_tol: float, config) -> tuple:
    """Chance that a molecule present shows each adduct (see :class:`ContextModel`)."""
    n_adducts = len(space.adduct_names)
    main = main_adduct(space)
    table = np.full(n_adducts, -np.inf)
    np.maximum.at(table, space.adduct, space.log_adduct_prior)
    prior = ADDUCT_MAX * np.exp(table - table[main])
    calls = float(total["main_w"])
    upto = max(1, int(math.ceil(rt_tol / config.max_coelution * CO_BINS)))
    shares = np.zeros(n_adducts)
    for b in range(n_adducts):
        if b == main:
            shares[b] = ADDUCT_MAX
            continue
        hits = float(total[[f"co{b}_{k}" for k in range(upto)]].sum())
        chance = float(total[[f"codecoy{b}_{k}" for k in range(upto)]].sum()) \
            / len(DECOY_SHIFTS)
        measured = max(hits - chance, 0.0)
        shares[b] = (measured + SHARE_PSEUDO * min(prior[b], ADDUCT_MAX)) \
            / (calls + SHARE_PSEUDO)
    return tuple(float(min(max(v, 1e-4), ADDUCT_MAX)) for v in shares)


def _log_abundances(n_carbon: torch.Tensor, max_isotope: int) -> torch.Tensor:
    """log of the 13C0..13C``max_isotope`` peaks against the monoisotopic one, stacked on a
    last axis (binomial, as :func:`dask_assign.chem.c13_abundances`; ``-inf`` where a molecule
    has too few carbons)."""
    out = [torch.zeros_like(n_carbon)]
    inf = torch.full_like(n_carbon, float("-inf"))
    if max_isotope >= 1:
        out.append(torch.where(n_carbon >= 1, torch.log(n_carbon) + _LOG_RATIO13, inf))
    if max_isotope >= 2:
        out.append(torch.where(n_carbon >= 2, torch.log(n_carbon * (n_carbon - 1) / 2)
                               + 2 * _LOG_RATIO13, inf))
    return torch.stack(out, dim=-1)


def _log_normal(x, mu, sigma):
    z = (x - mu) / sigma
    return -0.5 * z * z - math.log(sigma) - 0.5 * math.log(2 * math.pi)


def _ratio_fit(x, expected, sigma, outliers=None):
    """log density of a partner's log intensity around the predicted one: mostly within
    ``sigma``, a share ``outliers`` far off (an interfering peak, saturation, a simulation or
    peak picker that drops some fine structure), so one bad ratio cannot veto a hypothesis
    outright."""
    outliers = RATIO_OUTLIERS if outliers is None else outliers
    return torch.logaddexp(_log_normal(x, expected, sigma) + math.log1p(-outliers),
                           _log_normal(x, expected, RATIO_OUTLIER_SIGMA) + math.log(outliers))


def _position_fit(mz_partner, target, rt_diff, model: ContextModel, calibration):
    """log density of a partner's m/z error and RT difference for a true partner against a
    random peak (uniform over the partner window)."""
    err = (mz_partner - target) / target * 1e6
    coelution = torch.logaddexp(_log_normal(rt_diff, 0.0, model.rt_sigma)
                                + math.log1p(-COELUTION_TAIL),
                                torch.full_like(rt_diff, math.log(COELUTION_TAIL
                                                                  / (2 * model.rt_tol))))
    return (_log_normal(err, 0.0, pair_sigma(calibration)) + math.log(2 * model.ppm)
            + coelution + math.log(2 * model.rt_tol))


def adduct_presence(space: SearchSpace, model: ContextModel) -> np.ndarray:
    """Chance that a molecule shows each adduct: the model's measured shares, or the table's
    priors relative to the main adduct's (whose chance is ``ADDUCT_MAX``)."""
    if len(model.adduct_share) == len(space.adduct_names):
        return np.asarray(model.adduct_share, dtype=np.float64)
    lp = np.full(len(space.adduct_names), -np.inf)
    np.maximum.at(lp, space.adduct, space.log_adduct_prior)
    return np.clip(ADDUCT_MAX * np.exp(lp - lp.max()), 1e-4, ADDUCT_MAX)


def scoring_calibration(calibration: Calibration, model: ContextModel | None,
                        space: SearchSpace, config: AssignConfig) -> Calibration:
    """The calibration the run scores with: the adduct priors the context model measured
    (each adduct's share of a molecule's ions), and the null prior that goes with them (the
    EM measured the main adduct's share of the peaks)."""
    if model is None or len(model.adduct_share) != len(space.adduct_names) or not len(space.mz):
        return calibration
    log_priors = np.log(np.asarray(model.adduct_share, dtype=np.float64))
    main = main_adduct(space)
    w = np.exp(log_priors[space.adduct] + space.log_abundance)
    scale = float(w.sum() / w[space.adduct == main].sum())
    null = 1.0 - scale * calibration.main_share
    background = (model.adduct_background if len(model.adduct_background) == len(log_priors)
                  else None)
    return calibration.replace(
        log_adduct_priors=tuple(float(v) for v in log_priors),
        log_adduct_background=background,
        log_prior_mass=prior_normaliser(space, config.scorer, log_priors[space.adduct]),
        null_prior=min(max(null, 0.02), 0.98))


def _segment_logsumexp(values, segment, n):
    """``log(sum(exp(values)))`` within each of ``n`` segments (``-inf`` for an empty one)."""
    top = torch.full((n,), float("-inf"), dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, segment, values, reduce="amax", include_self=True)
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros_like(top).index_add(0, segment, torch.exp(values - safe[segment]))
    return safe + torch.log(total)


def _log_or_partners(log_d, log_q, log_rho):
    """log of the odds factor of one predicted partner, ``1 - d + d * sum(q) / rho`` over the
    peaks found in its window (``log_q``: their summed fit, ``-inf`` where none): any of them
    may be the partner, the others are there by accident."""
    log_1md = torch.log1p(-torch.exp(log_d).clamp(max=1.0 - 1e-12))
    return torch.logaddexp(log_1md, log_d + log_q - log_rho)


@dataclass
class _Partners:
    """Partners found for the peaks of one partition."""

    adduct_odds: torch.Tensor  # [n, A] log odds factor of the adduct partners of each label
    iso_start: torch.Tensor  # [n * C + 1] where each (peak, column)'s isotope matches start
    iso_j: torch.Tensor  # the matches' partner (block row), by (peak, column)
    iso_col: torch.Tensor  # [A, S, S] column of adduct a from 13C s to t, or -1
    iso_step: torch.Tensor  # [C] 13C atoms added by each column, and its charge
    iso_charge: torch.Tensor
    log_rho: torch.Tensor  # [n] log chance of an accidental partner in one window
    n_partners: torch.Tensor  # [n] distinct co-eluting partner peaks


def _find_partners(block_mz, block_rt, core_rows, space, config, calibration, model,
                   p_adduct, kept, device) -> _Partners:
    """Search the block for the partners of its core peaks, over the adducts ``kept``."""
    ions = space.adduct_ions
    n_add, n_iso = ions.shape[0], NULL_13C + 1
    sub = ions[kept]
    maps = RelationMaps.build(sub[:, 0], sub[:, 1], sub[:, 2], NULL_13C)
    anchor = np.zeros(block_mz.size, dtype=bool)
    anchor[core_rows] = True
    bi, bj, m = find_relations(block_mz, block_rt, maps, model.ppm, model.rt_tol, anchor)
    row_of = np.full(block_mz.size, -1, dtype=np.int64)
    row_of[core_rows] = np.arange(core_rows.size)
    rows = row_of[bi]  # still sorted: core rows keep the block's order
    n = core_rows.size
    kind = maps.kind[m]
    crowd = np.maximum(neighbours(block_rt, config.max_coelution)[core_rows], 1)
    log_rho = torch.as_tensor(np.log(crowd) + model.log_kappa, device=device)

    def t(x):
        return torch.as_tensor(x, device=device)

    # Adduct labels: every other adduct missing, then each one found replaces its term.
    log_p = t(np.log(p_adduct))
    log_1mp = torch.log1p(-torch.exp(log_p))
    missing = torch.zeros(n_add, dtype=log_p.dtype, device=device)
    missing[t(kept)] = log_1mp[t(kept)]
    odds = (missing.sum() - missing).expand(n, n_add).clone()
    sel = kind == ADDUCT
    if sel.any():
        q = _position_fit(t(block_mz[bj[sel]]),
                          t(maps.scale[m[sel]] * block_mz[bi[sel]] + maps.shift[m[sel]]),
                          t(block_rt[bj[sel]] - block_rt[bi[sel]]), model, calibration)
        key, group = torch.unique_consecutive(t(rows[sel] * len(maps) + m[sel]),
                                              return_inverse=True)
        lse = _segment_logsumexp(q, group, key.numel())
        r, mm = key // len(maps), key % len(maps)
        dst, src = t(kept[maps.dst])[mm], t(kept[maps.src])[mm]
        gain = _log_or_partners(log_p[dst], lse, log_rho[r]) - log_1mp[dst]
        odds.view(-1).index_add_(0, r * n_add + src, gain)
    # Isotope partners: one column per (charge, 13C step), matches grouped by (peak, column).
    iso_maps = np.flatnonzero(maps.kind == ISOTOPE)
    col_of_map = np.full(len(maps), -1)
    col_of_map[iso_maps] = np.arange(iso_maps.size)
    iso_col = np.full((n_add, n_iso, n_iso), -1, dtype=np.int64)
    for c, k in enumerate(iso_maps):
        for a in np.flatnonzero(ions[:, 1] == maps.charge[k]):
            for s_ in range(n_iso):
                if 0 <= s_ + maps.step[k] < n_iso:
                    iso_col[a, s_, s_ + maps.step[k]] = c
    sel = kind == ISOTOPE
    n_col = max(iso_maps.size, 1)
    iso_key = rows[sel] * n_col + col_of_map[m[sel]]  # sorted: matches come by (peak, map)
    start = np.r_[0, np.cumsum(np.bincount(iso_key, minlength=n * n_col))]
    # Distinct partner peaks of each peak (one peak may match several maps).
    key = np.sort(rows[kind != DECOY] * block_mz.size + bj[kind != DECOY])
    first = key[np.r_[True, key[1:] != key[:-1]]] if key.size else key
    n_partners = np.bincount(first // max(block_mz.size, 1), minlength=n)
    return _Partners(odds, t(start), t(bj[sel]), t(iso_col),
                     t(np.r_[maps.step[iso_maps], 0]), t(np.r_[maps.charge[iso_maps], 1]),
                     log_rho, t(n_partners))


def _isotope_odds(partners: _Partners, rows, a, s, n_carbon, mz, rt, li, block_mz, block_rt,
                  block_li, model, config, calibration, ratio_sigma, kernel="auto"):
    """Summed log odds factor of the isotope partners that label ``(a, s)`` of a molecule
    with ``n_carbon`` carbons predicts for the peaks ``rows`` (m/z ``mz``, log intensity
    ``li``, RT ``rt``); 1-D tensors of one length.

    On CPU a compiled loop computes it entry by entry (``kernel="numba"``); the torch version
    (``"torch"``, the one CUDA runs) needs a dozen passes over memory per partner column. Both
    give the same numbers (tested)."""
    if kernel == "numba" or (kernel == "auto" and n_carbon.device.type == "cpu"):
        args = [x.contiguous().numpy() for x in (
            rows, a, s, n_carbon, mz, rt, li, partners.iso_col, partners.iso_start,
            partners.iso_j, partners.iso_step, partners.iso_charge, partners.log_rho,
            block_mz, block_rt, block_li)]
        out = _isotope_odds_loop(
            *args, NULL_13C, model.log_detect, math.log(model.isotope_detect),
            float(ratio_sigma), float(model.ratio_outliers),
            calibration.log_intensity_center, calibration.log_intensity_scale,
            pair_sigma(calibration), model.ppm, model.rt_sigma, model.rt_tol)
        return torch.from_numpy(out)
    return _isotope_odds_torch(partners, rows, a, s, n_carbon, mz, rt, li, block_mz, block_rt,
                               block_li, model, config, calibration, ratio_sigma)


@numba.njit(cache=True, nogil=True)
def _log_ndtr(z):
    if z > -37.0:
        return math.log(0.5 * math.erfc(-z / math.sqrt(2.0)))
    # Far tail: the asymptotic series (erfc underflows).
    return -0.5 * z * z - math.log(-z) - 0.5 * math.log(2 * math.pi) + math.log1p(-1 / (z * z))


@numba.njit(cache=True, nogil=True)
def _lognorm(x, mu, sigma):
    d = (x - mu) / sigma
    return -0.5 * d * d - math.log(sigma) - 0.5 * math.log(2 * math.pi)


@numba.njit(cache=True, nogil=True)
def _ratio_fit_one(x, expected, sigma, outliers):
    """:func:`_ratio_fit` of one value."""
    a = _lognorm(x, expected, sigma) + math.log1p(-outliers)
    b = _lognorm(x, expected, RATIO_OUTLIER_SIGMA) + math.log(outliers)
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


@numba.njit(cache=True, nogil=True)
def _isotope_odds_loop(rows, a, s, n_carbon, mz, rt, li, iso_col, iso_start, iso_j, iso_step,
                       iso_charge, log_rho, block_mz, block_rt, block_li, max_isotope,
                       log_detect, log_detect_max, ratio_sigma, ratio_outliers, li_center,
                       li_scale, mass_sigma, ppm, rt_sigma, rt_tol):
    """:func:`_isotope_odds_torch`, one entry at a time (same formulas)."""
    n_col = max(iso_step.size - 1, 1)
    out = np.zeros(rows.size)
    log_window = math.log(2 * ppm) + math.log(2 * rt_tol)
    log_a = np.empty(3)
    for e in range(rows.size):
        c = n_carbon[e]
        log_a[0] = 0.0
        log_a[1] = math.log(c) + _LOG_RATIO13 if c >= 1 else -np.inf
        log_a[2] = math.log(c * (c - 1) / 2) + 2 * _LOG_RATIO13 if c >= 2 else -np.inf
        se = s[e]
        total = 0.0
        for t in range(max_isotope + 1):
            col = iso_col[a[e], se, t]
            if col < 0:
                continue
            expected = li[e] + log_a[t] - log_a[se]
            log_d = log_detect_max + _log_ndtr((expected - log_detect) / DETECT_SIGMA)
            if math.isnan(log_d):
                log_d = math.log(0.5)
            term = math.log1p(-min(math.exp(log_d), 1.0 - 1e-12))
            key = rows[e] * n_col + col
            lo, hi = iso_start[key], iso_start[key + 1]
            if hi > lo:
                top, acc = -np.inf, 0.0
                target = mz[e] + iso_step[col] * C13_SPACING / iso_charge[col]
                for k in range(lo, hi):
                    j = iso_j[k]
                    q = (_ratio_fit_one(block_li[j], expected, ratio_sigma, ratio_outliers)
                         - _lognorm(block_li[j], li_center, li_scale))
                    if math.isnan(q):
                        q = 0.0
                    elif q == -np.inf:
                        q = -1e4
                    err = (block_mz[j] - target) / target * 1e6
                    near = _lognorm(block_rt[j] - rt[e], 0.0, rt_sigma) \
                        + math.log1p(-COELUTION_TAIL)
                    even = math.log(COELUTION_TAIL / (2 * rt_tol))
                    top2 = max(near, even)
                    coelution = top2 + math.log(math.exp(near - top2) + math.exp(even - top2))
                    q += _lognorm(err, 0.0, mass_sigma) + coelution + log_window
                    if q > top:
                        acc = acc * math.exp(top - q) + 1.0
                        top = q
                    else:
                        acc += math.exp(q - top)
                lse = top + math.log(acc)
                hit = log_d + lse - log_rho[rows[e]]
                term = max(term, hit) + math.log1p(math.exp(-abs(term - hit)))
            total += term
        out[e] = total
    return out


def _isotope_odds_torch(partners: _Partners, rows, a, s, n_carbon, mz, rt, li, block_mz,
                        block_rt, block_li, model, config, calibration, ratio_sigma):
    """The torch version of :func:`_isotope_odds`."""
    total = torch.zeros_like(n_carbon)
    log_a = _log_abundances(n_carbon, NULL_13C)
    log_a_s = log_a.gather(1, s[:, None])[:, 0]
    log_rho = partners.log_rho[rows]
    n_col = partners.iso_step.numel() - 1
    for t in range(NULL_13C + 1):
        col = partners.iso_col[a, s, t]
        usable = col >= 0  # t != s, and a map for this charge
        col = col.clamp(min=0)
        key = rows * max(n_col, 1) + col
        lo = partners.iso_start[key]
        count = torch.where(usable, partners.iso_start[key + 1] - lo, torch.zeros_like(lo))
        # One row per (entry, peak in the partner's window).
        entry = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)
        first = torch.cumsum(count, 0) - count
        j = partners.iso_j[lo[entry] + torch.arange(entry.numel(), device=entry.device)
                           - first[entry]]
        expected = li + log_a[:, t] - log_a_s
        # A true partner has the predicted intensity ratio, m/z and RT; a random peak not.
        log_q = (_ratio_fit(block_li[j], expected[entry], ratio_sigma, model.ratio_outliers)
                 - _log_normal(block_li[j], calibration.log_intensity_center,
                               calibration.log_intensity_scale))
        log_q = torch.nan_to_num(log_q, nan=0.0, neginf=-1e4)
        # float64 first: an integer tensor times a Python float would be float32.
        target = mz[entry] + partners.iso_step[col[entry]].to(mz.dtype) * C13_SPACING \
            / partners.iso_charge[col[entry]].to(mz.dtype)
        log_q = log_q + _position_fit(block_mz[j], target, block_rt[j] - rt[entry], model,
                                      calibration)
        lse = _segment_logsumexp(log_q, entry, count.numel())
        # Chance the partner is detected: its predicted intensity against the threshold.
        z = (expected - model.log_detect) / DETECT_SIGMA
        log_d = math.log(model.isotope_detect) + torch.special.log_ndtr(z)
        log_d = torch.where(torch.isnan(log_d), torch.full_like(log_d, math.log(0.5)), log_d)
        term = _log_or_partners(log_d, lse, log_rho)
        total = total + torch.where(usable, term, torch.zeros_like(term))
    return total


def isotope_clusters(space: SearchSpace, groups: np.ndarray, ppm: float):
    """The isotopologues of some ions (compound x adduct groups) as a partner window of
    ``ppm`` sees them: each isotopologue joins the most abundant one of its ion within the
    window (itself, if none), and a cluster is searched and weighed as one partner.

    Returns
    -------
    rows : numpy.ndarray
        Every isotopologue (row of the space) of the groups.
    rep : numpy.ndarray
        The cluster (its most abundant row) each belongs to.
    log_abundance : numpy.ndarray
        log of its cluster's summed abundance.
    """
    groups = np.unique(groups)
    start, stop = space.group_start[groups], space.group_start[groups + 1]
    size = stop - start
    owner = np.repeat(np.arange(groups.size), size)
    at = np.arange(owner.size) - np.repeat(np.cumsum(size) - size, size)
    rows = space.group_rows[start[owner] + at]
    rep = np.full(rows.size, -1, dtype=np.int64)
    mz = space.mz[rows]
    for k in range(int(size.max(initial=0))):  # the group's rows, most abundant first
        has = k < size[owner]
        other = space.group_rows[np.minimum(start[owner] + k, space.group_rows.size - 1)]
        close = has & (rep < 0) & (np.abs(space.mz[other] - mz) <= ppm * 1e-6 * mz)
        rep[close] = other[close]
    # Chains (a within the window of b, b of c) join one cluster.
    by_row = np.argsort(rows)
    for _ in range(rows.size):
        deeper = rep[by_row][np.searchsorted(rows[by_row], rep)]
        if np.array_equal(deeper, rep):
            break
        rep = deeper
    total = np.zeros(space.mz.size)  # only the reps' entries are read
    np.add.at(total, rep, np.exp(space.log_abundance[rows]))
    return rows, rep, np.log(total[rep])


def sibling_targets(space: SearchSpace, ions: np.ndarray, ppm: float):
    """The isotopologue partners of each candidate ion: the cluster of its monoisotopic ion
    and the ``SIBLINGS`` most abundant other clusters of its compound and adduct
    (:func:`isotope_clusters`), never the candidate's own cluster.

    Returns
    -------
    owner : numpy.ndarray
        Candidate (index into ``ions``) of each partner cluster.
    cluster : numpy.ndarray
        Each partner's cluster: its most abundant row of the space.
    log_cluster, own_cluster : numpy.ndarray
        log abundance of each partner cluster, and of its candidate's own cluster.
    member, member_row : numpy.ndarray
        Every isotopologue to search: its partner (index into ``owner``) and its row.
    """
    rows, rep, log_total = isotope_clusters(space, space.group[ions], ppm)
    by_row = np.argsort(rows)
    rep_of = rep[by_row][np.searchsorted(rows[by_row], ions)]
    # Each group's clusters, most abundant first (CSR by group).
    heads = np.flatnonzero(rows == rep)
    c_group, c_rep, c_total = space.group[rows[heads]], rep[heads], log_total[heads]
    order = np.lexsort((-c_total, c_group))
    c_group, c_rep, c_total = c_group[order], c_rep[order], c_total[order]
    groups, first, count = np.unique(c_group, return_index=True, return_counts=True)
    g = np.searchsorted(groups, space.group[ions])
    start, size = first[g], count[g]
    mono = space.group_mono[space.group[ions]]
    mono_rep = np.where(mono >= 0, rep[by_row][np.searchsorted(
        rows[by_row], np.maximum(mono, 0))], -1)
    owner, cluster, taken = [], [], np.zeros(ions.size, dtype=np.int64)
    has_mono = np.zeros(ions.size, dtype=bool)
    for k in range(int(size.max(initial=0))):
        at = np.flatnonzero(k < size)
        c = c_rep[start[at] + k]
        ok = (c != rep_of[at]) & ((taken[at] < SIBLINGS) | (c == mono_rep[at]))
        owner.append(at[ok])
        cluster.append(c[ok])
        taken[at[ok]] += 1
        has_mono[at[ok & (c == mono_rep[at])]] = True
    owner, cluster = np.concatenate(owner), np.concatenate(cluster)
    key = np.lexsort((cluster, owner))
    owner, cluster = owner[key], cluster[key]
    total_of = dict(zip(c_rep.tolist(), c_total.tolist(), strict=True))
    log_cluster = np.array([total_of[c] for c in cluster.tolist()], dtype=np.float64)
    own_cluster = np.array([total_of[c] for c in rep_of.tolist()], dtype=np.float64)[owner]
    # The members of each chosen cluster (CSR by cluster).
    by_rep = np.argsort(rep, kind="stable")
    reps, r_first, r_count = np.unique(rep[by_rep], return_index=True, return_counts=True)
    r = np.searchsorted(reps, cluster)
    member = np.repeat(np.arange(cluster.size), r_count[r])
    at = np.arange(member.size) - np.repeat(np.cumsum(r_count[r]) - r_count[r], r_count[r])
    member_row = rows[by_rep][r_first[r][member] + at]
    return owner, cluster, log_cluster, own_cluster, member, member_row


def _sibling_odds(f_peak, f_ion, space: SearchSpace, peaks: dict, li, core_rows, block,
                  finder: _BlockPeaks, log_rho, model: ContextModel, config: AssignConfig,
                  calibration: Calibration) -> torch.Tensor:
    """Summed log odds factor of each candidate's isotopologue siblings: its monoisotopic ion
    and the ``SIBLINGS`` most abundant others of its compound and adduct, at the m/z the
    candidate's own error predicts and at the intensity ratio its formula predicts."""
    n_c = f_ion.size
    device = log_rho.device
    if n_c == 0:
        return torch.zeros(0, dtype=torch.float64, device=device)
    owner, cluster, log_cluster, own_cluster, member, member_row = sibling_targets(
        space, f_ion, model.ppm)
    if owner.size == 0:
        return torch.zeros(n_c, dtype=torch.float64, device=device)
    peak = f_peak[owner]
    pmz = peaks["mz"].cpu().numpy()[peak]
    prt = peaks["rt"].cpu().numpy()[peak]
    # One target per member of a partner cluster; a peak near any counts once.
    ratio = pmz / space.mz[f_ion[owner]]
    member_mz = ratio[member] * space.mz[member_row]
    expected = li.cpu().numpy()[peak] + log_cluster - own_cluster
    tm, j = finder.find(member_mz, prt[member], model.rt_tol)
    t = member[tm]
    mine = j != np.asarray(core_rows)[peak[t]]
    tm, t, j = tm[mine], t[mine], j[mine]
    hit = nearest_target(owner[member], member_mz, tm, j, block["mz"].to_numpy(dtype=np.float64))
    tm, t, j = tm[hit], t[hit], j[hit]
    n_block = max(len(block), 1)
    _, first = np.unique(t * n_block + j, return_index=True)
    tm, t, j = tm[first], t[first], j[first]
    target = member_mz[tm]

    def tt(x):
        return torch.as_tensor(x, device=device)

    block_mz = block["mz"].to_numpy(dtype=np.float64)
    block_rt = block["rt"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        block_li = np.log(block["intensity"].to_numpy(dtype=np.float64, na_value=np.nan))
    # The peak is the whole cluster (unresolved) or the member it lies at alone (resolved,
    # or the other members missing): either intensity counts.
    alone = li.cpu().numpy()[peak[t]] + space.log_abundance[member_row[tm]] - own_cluster[t]
    ratio_fit = torch.logaddexp(
        _ratio_fit(tt(block_li[j]), tt(expected[t]), model.ratio_sigma, model.ratio_outliers),
        _ratio_fit(tt(block_li[j]), tt(alone), model.ratio_sigma, model.ratio_outliers)) \
        - math.log(2)
    q = ratio_fit - _log_normal(tt(block_li[j]), calibration.log_intensity_center,
                                calibration.log_intensity_scale)
    q = torch.nan_to_num(q, nan=0.0, neginf=-1e4)
    q = q + _position_fit(tt(block_mz[j]), tt(target), tt(block_rt[j] - prt[t]), model,
                          calibration)
    lse = _segment_logsumexp(q, tt(t), owner.size)
    z = (tt(expected) - model.log_detect) / DETECT_SIGMA
    if len(model.label_detect) == len(space.isotope_labels):
        rate = np.asarray(model.label_detect)[space.isotope[cluster]]
    else:
        rate = np.full(cluster.size, model.isotope_detect)
    log_d = tt(np.log(rate)) + torch.special.log_ndtr(z)
    log_d = torch.where(torch.isnan(log_d), torch.full_like(log_d, math.log(0.5)), log_d)
    term = _log_or_partners(log_d, lse, log_rho[tt(peak)])
    return torch.zeros(n_c, dtype=torch.float64, device=device).index_add_(0, tt(owner), term)


def apply_context(result: PartitionResult, block: pd.DataFrame, core_rows: np.ndarray,
                  space: SearchSpace, config: AssignConfig, calibration: Calibration,
                  model: ContextModel, kernel: str = "auto") -> PartitionResult:
    """Re-weigh the candidates of a scored partition by the evidence of co-eluting peaks.

    Parameters
    ----------
    result : PartitionResult
        First (and refined) pass of the partition's peaks.
    block : pandas.DataFrame
        ``mz``, ``rt``, ``intensity`` of every peak that may be a partner: the partition's own
        and those within ``model.rt_tol`` of them.
    core_rows : numpy.ndarray
        Row of ``block`` of each peak of ``result``, in order.
    space : SearchSpace
    config : AssignConfig
    calibration : Calibration
    model : ContextModel
    kernel : {"auto", "numba", "torch"}
        How the null's isotope odds are computed (``auto``: compiled on CPU, torch on CUDA).

    Returns
    -------
    PartitionResult
        With updated probabilities, calls, ``n_partners`` and ``changed``.
    """
    scored = result.scored
    device = scored.p_null.device
    n = int(scored.p_null.shape[0])
    core_rows = np.asarray(core_rows, dtype=np.int64)
    block_mz = block["mz"].to_numpy(dtype=np.float64)
    block_rt = block["rt"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        block_li = torch.as_tensor(np.log(block["intensity"].to_numpy(
            dtype=np.float64, na_value=np.nan)), device=device)
    block_mz_t = torch.as_tensor(block_mz, device=device)
    block_rt_t = torch.as_tensor(block_rt, device=device)
    p_adduct = adduct_presence(space, model)
    # Adducts too rare to matter (a hundredth of the commonest) get no partner search.
    kept = np.flatnonzero(p_adduct >= MIN_ADDUCT_SHARE * p_adduct.max())
    partners = _find_partners(block_mz, block_rt, core_rows, space, config, calibration, model,
                              p_adduct, kept, device)
    ions = torch.as_tensor(space.adduct_ions, device=device)
    li = block_li[torch.as_tensor(core_rows, device=device)]
    mz, rt = result.peaks["mz"], result.peaks["rt"]
    weight = config.context_weight
    common = (block_mz_t, block_rt_t, block_li, model, config, calibration)

    # Candidates: the partners of their own adduct, and their isotopologue siblings.
    f = scored.features
    ion = f.ion.cpu().numpy()
    a = torch.as_tensor(space.adduct[ion], device=device)
    finder = _BlockPeaks(block_mz, block_rt, model.ppm)
    cand = partners.adduct_odds[f.peak, a] + _sibling_odds(
        f.peak.cpu().numpy(), ion, space, result.peaks, li, core_rows, block, finder,
        partners.log_rho, model, config, calibration)

    # The null slot: noise, or a molecule missing from the library under any label (adduct,
    # 13C count), with the typical carbon count of its mass. The isotope terms of one charge
    # and 13C count are shared by its adducts (computed from the commonest adduct's reading).
    # Only peaks with a candidate need it: for the others the null is the only answer.
    n_iso = NULL_13C + 1
    unknown_sigma = math.hypot(model.ratio_sigma, UNKNOWN_RATIO_SIGMA)
    log_p = torch.as_tensor(np.log(p_adduct), device=device)
    kept_t = torch.as_tensor(kept, device=device)
    charges = space.adduct_ions[kept, 1]
    rows = torch.unique(f.peak)
    pmz, prt, pli = mz[rows], rt[rows], li[rows]
    iso = torch.zeros((rows.numel(), len(kept), n_iso), dtype=li.dtype, device=device)
    lcarbon = torch.zeros_like(iso)
    for z in np.unique(charges):
        idx = np.flatnonzero(charges == z)
        rep = int(kept[idx[np.argmax(p_adduct[kept[idx]])]])  # the charge's commonest adduct
        group = torch.as_tensor(idx, device=device)
        for s_ in range(n_iso):
            ls = torch.full_like(rows, s_)
            la = torch.full_like(rows, rep)
            c = space.carbon_per_mass * _neutral(pmz, la, ls, ions).clamp(min=0) * ions[la, 0]
            odds = _isotope_odds(partners, rows, la, ls, c, pmz, prt, pli, *common,
                                 unknown_sigma, kernel)
            iso[:, group, s_] = odds[:, None]
            lcarbon[:, group, s_] = c[:, None]
    lneutral = _neutral(pmz[:, None, None], kept_t[None, :, None],
                        torch.arange(n_iso, device=device)[None, None, :], ions)
    prior = log_p[kept_t][None, :, None] + _log_abundances(lcarbon[..., 0], NULL_13C)
    prior = torch.where(lneutral > 0, prior, torch.full_like(prior, float("-inf")))
    prior = prior - torch.logsumexp(prior.flatten(1), dim=1)[:, None, None]
    label = partners.adduct_odds[rows][:, kept_t][:, :, None] + iso
    molecule = torch.logsumexp((prior + weight * label).flatten(1), dim=1)
    phi = model.noise_share if config.context_noise_share is None \
        else config.context_noise_share
    null = torch.zeros(n, dtype=li.dtype, device=device)
    null[rows] = torch.nan_to_num(torch.logaddexp(
        torch.full_like(molecule, math.log(phi)), math.log1p(-phi) + molecule), nan=0.0)

    logit = scored.logit + weight * cand - null[f.peak]
    return _rescored(result, logit, scored.log_rest - null, partners.n_partners, config)


def _neutral(mz, a, s, ions):
    """Neutral monoisotopic mass of a peak read as the 13C``s`` ion of adduct ``a``."""
    z = ions[a, 1]
    return (z * mz - s.to(mz.dtype) * C13_SPACING - ions[a, 2]) / ions[a, 0]


def _rescored(result: PartitionResult, logit, log_rest, n_partners, config) -> PartitionResult:
    """Softmax of the updated logits (null at 0, dropped candidates at ``log_rest``)."""
    scored = result.scored
    f = scored.features
    n = int(scored.p_null.shape[0])
    order, rank, _ = rank_within_peak(f.peak, logit)
    f, logit, isomer = f.take(order), logit[order], scored.isomer[order]
    prob, p_null = slot_probabilities(logit, isomer, f.peak, n, log_rest, scored.rest_isomer)
    flagged = torch.isnan(scored.p_null)  # a flagged overflow stays without a call
    nan = torch.tensor(float("nan"), dtype=prob.dtype, device=prob.device)
    prob = torch.where(flagged[f.peak], nan, prob)
    p_null = torch.where(flagged, nan, p_null)
    new = ScoredPairs(f, rank, prob, p_null, scored.n_candidates, scored.overflow, logit,
                      isomer, log_rest, scored.rest_isomer)
    pair, call_prob = best_calls(new, n)
    before = torch.where(result.pair >= 0, scored.features.ion[result.pair.clamp(min=0)],
                         torch.full_like(result.pair, -1))
    after = torch.where(pair >= 0, f.ion[pair.clamp(min=0)], torch.full_like(pair, -1))
    return dataclasses.replace(result, scored=new, pair=pair, prob=call_prob,
                               n_partners=n_partners, changed=before != after)
