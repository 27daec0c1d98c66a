"""Second pass with context: co-eluting peaks that are other ions of the same molecule.

One molecule makes several peaks at one retention time: its 13C isotope peaks, other adducts,
in-source losses. A peak alone may be ambiguous ([M+Na]+ of one compound against [M+H]+ of
another, an isotope peak against the monoisotopic peak of a heavier compound); its co-eluting
partners usually are not.

For every hypothesis about a peak (each candidate, and each label "ion (adduct, 13C count) of a
molecule not in the library" that the null slot stands for) the pass asks which partner ions
that hypothesis predicts and whether they are there (:mod:`dask_assign.relations`):

* a partner found multiplies the hypothesis' odds by ``d q / rho + (1 - d)``, where ``d`` is the
  chance the partner is detected if the hypothesis holds, ``rho`` the chance that a peak lies in
  the partner's window by accident (measured with decoy mass differences), and ``q`` how well
  the partner's intensity fits the predicted isotope ratio (against a random peak's intensity);
* a partner missing multiplies them by ``1 - d``: a 13C1 peak without its monoisotopic peak,
  or an intense peak of a large molecule without its 13C1 peak, loses support.

The isotope terms use the candidate's own carbon count (so an isotope ratio can rule out a
formula); the null slot uses the library's typical carbon count for the peak's mass. The
updated logits go through the same segment softmax as the first pass. Everything is batched
tensor arithmetic over the partition's candidates; the partner search is a compiled sweep.

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

from .annotate import PartitionResult, ScoredPairs, SearchSpace, best_calls
from .candidates import rank_within_peak
from .chem import C13_ABUNDANCE, C13_SPACING
from .config import AssignConfig, Calibration
from .relations import ADDUCT, DECOY, DECOY_SHIFTS, ISOTOPE, RelationMaps, find_relations
from .scoring import segment_softmax

#: Most likely detection of a predicted partner (peak picking misses some of anything).
DETECT_MAX = 0.9
#: Largest chance that a molecule shows an adduct (the commonest one of the run).
ADDUCT_MAX = 0.9
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
LOG10_INTENSITY_BINS = np.arange(-2.0, 14.0 + 1e-9, 0.05)
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
    """

    rt_sigma: float
    rt_tol: float
    ppm: float
    log_kappa: float
    log_detect: float
    isotope_pairs: float

    def to_dict(self) -> dict:
        """Plain values, for JSON (``None`` for a detection limit a table without intensities
        cannot give)."""
        return {k: (v if math.isfinite(v) else None) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ContextModel:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: float("-inf") if data[f.name] is None else float(data[f.name])
                      for f in dataclasses.fields(cls)})


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


def _stat_columns() -> list[str]:
    n_li = LOG10_INTENSITY_BINS.size - 1
    return (["n", "neighbours", "mz_min", "mz_max", "rt_min", "rt_max"]
            + [f"iso{k}" for k in range(RT_BINS)] + [f"decoy{k}" for k in range(RT_BINS)]
            + [f"li{k}" for k in range(n_li)])


#: Columns of :func:`context_stats`.
STAT_COLUMNS = _stat_columns()


def context_stats(block: pd.DataFrame, config: AssignConfig,
                  calibration: Calibration) -> pd.DataFrame:
    """Counts of one RT block for :func:`fit_context`: RT differences of co-eluting 13C pairs
    and of decoy pairs, and a histogram of intensities, over the block's core peaks.

    Counts add up over blocks, so the fit is the same whatever the blocks.
    """
    core = block["core"].to_numpy(dtype=bool)
    mz = block["mz"].to_numpy(dtype=np.float64)
    rt = block["rt"].to_numpy(dtype=np.float64)
    # 13C1 of singly charged ions, and the decoys.
    maps = RelationMaps.build([1], [1], [0.0], max_isotope=1, adducts=False, decoys=True)
    maps = RelationMaps(*(v[maps.step >= 0] for v in dataclasses.astuple(maps)))
    i, j, m = find_relations(mz, rt, maps, partner_ppm(calibration), config.max_coelution,
                             anchor=core)
    drt = np.abs(rt[j] - rt[i])
    edges = np.linspace(0.0, config.max_coelution, RT_BINS + 1)
    iso = np.histogram(drt[maps.kind[m] == ISOTOPE], edges)[0]
    decoy = np.histogram(drt[maps.kind[m] == DECOY], edges)[0]
    inten = block["intensity"].to_numpy(dtype=np.float64, na_value=np.nan)[core]
    inten = inten[np.isfinite(inten) & (inten > 0)]
    li = np.histogram(np.log10(inten), LOG10_INTENSITY_BINS)[0]
    any_core = core.any()
    row = np.concatenate([
        [core.sum(), neighbours(rt, config.max_coelution)[core].sum(),
         mz[core].min() if any_core else np.inf,
         mz[core].max() if any_core else -np.inf, rt[core].min() if any_core else np.inf,
         rt[core].max() if any_core else -np.inf], iso, decoy, li]).astype(np.float64)
    return pd.DataFrame([row], columns=STAT_COLUMNS)


def fit_context(stats: pd.DataFrame, config: AssignConfig,
                calibration: Calibration) -> ContextModel:
    """Fit the :class:`ContextModel` from the summed :func:`context_stats` of all blocks.

    The co-elution tolerance is 4 robust standard deviations of the RT differences of the 13C
    pairs in excess of the decoys' (random) pairs. The accident rate is the decoys' hit rate
    per co-eluting neighbour, shrunk towards an even spread of the peaks when hits are few.
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
    rt_tol = min(4 * rt_sigma, config.max_coelution)
    ppm = partner_ppm(calibration)
    hits = float(decoys[: int(round(rt_tol / width))].sum())
    mz_span = math.log(max(maxs["mz_max"], 1.0) / max(mins["mz_min"], 1e-3)) \
        if np.isfinite(mins["mz_min"]) else 1.0
    # Prior: neighbours spread evenly over log m/z and over the co-elution window.
    uniform = min(1.0, 2 * ppm * 1e-6 / max(mz_span, 1e-6)) * rt_tol / config.max_coelution
    kappa = (hits + 1.0) / (n_decoy * float(total["neighbours"]) + 1.0 / max(uniform, 1e-12))
    li = total[[f"li{k}" for k in range(LOG10_INTENSITY_BINS.size - 1)]].to_numpy()
    if li.sum() > 0:
        k = int(np.searchsorted(np.cumsum(li) / li.sum(), 0.01))
        log_detect = float(LOG10_INTENSITY_BINS[k] * math.log(10))
    else:
        log_detect = float("-inf")
    return ContextModel(rt_sigma=float(rt_sigma), rt_tol=float(rt_tol), ppm=float(ppm),
                        log_kappa=float(math.log(kappa)), log_detect=log_detect,
                        isotope_pairs=float(excess.sum()))


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


def _position_fit(mz_partner, target, rt_diff, model: ContextModel, calibration):
    """log density of a partner's m/z error and RT difference for a true partner against a
    random peak (uniform over the partner window)."""
    err = (mz_partner - target) / target * 1e6
    return (_log_normal(err, 0.0, pair_sigma(calibration)) + math.log(2 * model.ppm)
            + _log_normal(rt_diff, 0.0, model.rt_sigma) + math.log(2 * model.rt_tol))


def adduct_presence(space: SearchSpace, calibration: Calibration) -> np.ndarray:
    """Chance that a molecule shows each adduct: its share of peaks (fitted where calibration
    ran) relative to the commonest adduct's, whose chance is ``ADDUCT_MAX``."""
    if calibration.log_adduct_priors is not None:
        lp = np.asarray(calibration.log_adduct_priors, dtype=np.float64)
    else:
        lp = np.full(len(space.adduct_names), -np.inf)
        lp[space.adduct] = space.log_adduct_prior
    lp = np.pad(lp, (0, len(space.adduct_names) - lp.size), constant_values=-np.inf)
    return np.clip(ADDUCT_MAX * np.exp(lp - lp.max()), 1e-4, ADDUCT_MAX)


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
    n_add, n_iso = ions.shape[0], config.max_isotope + 1
    sub = ions[kept]
    maps = RelationMaps.build(sub[:, 0], sub[:, 1], sub[:, 2], config.max_isotope)
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
            *args, config.max_isotope, model.log_detect, float(ratio_sigma),
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
def _isotope_odds_loop(rows, a, s, n_carbon, mz, rt, li, iso_col, iso_start, iso_j, iso_step,
                       iso_charge, log_rho, block_mz, block_rt, block_li, max_isotope,
                       log_detect, ratio_sigma, li_center, li_scale, mass_sigma, ppm,
                       rt_sigma, rt_tol):
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
            log_d = math.log(DETECT_MAX) + _log_ndtr((expected - log_detect) / DETECT_SIGMA)
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
                    q = (_lognorm(block_li[j], expected, ratio_sigma)
                         - _lognorm(block_li[j], li_center, li_scale))
                    if math.isnan(q):
                        q = 0.0
                    elif q == -np.inf:
                        q = -1e4
                    err = (block_mz[j] - target) / target * 1e6
                    q += (_lognorm(err, 0.0, mass_sigma) + _lognorm(block_rt[j] - rt[e], 0.0,
                                                                    rt_sigma) + log_window)
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
    log_a = _log_abundances(n_carbon, config.max_isotope)
    log_a_s = log_a.gather(1, s[:, None])[:, 0]
    log_rho = partners.log_rho[rows]
    n_col = partners.iso_step.numel() - 1
    for t in range(config.max_isotope + 1):
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
        log_q = (_log_normal(block_li[j], expected[entry], ratio_sigma)
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
        log_d = math.log(DETECT_MAX) + torch.special.log_ndtr(z)
        log_d = torch.where(torch.isnan(log_d), torch.full_like(log_d, math.log(0.5)), log_d)
        term = _log_or_partners(log_d, lse, log_rho)
        total = total + torch.where(usable, term, torch.zeros_like(term))
    return total


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
        How the isotope odds are computed (``auto``: compiled on CPU, torch on CUDA).

    Returns
    -------
    PartitionResult
        With updated probabilities, calls, ``n_partners`` and ``changed``.
    """
    scored = result.scored
    device = scored.p_null.device
    n = int(scored.p_null.shape[0])
    block_mz = block["mz"].to_numpy(dtype=np.float64)
    block_rt = block["rt"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        block_li = torch.as_tensor(np.log(block["intensity"].to_numpy(
            dtype=np.float64, na_value=np.nan)), device=device)
    block_mz_t = torch.as_tensor(block_mz, device=device)
    block_rt_t = torch.as_tensor(block_rt, device=device)
    p_adduct = adduct_presence(space, calibration)
    # Adducts too rare to matter (a hundredth of the commonest) get no partner search.
    kept = np.flatnonzero(p_adduct >= MIN_ADDUCT_SHARE * p_adduct.max())
    partners = _find_partners(block_mz, block_rt, np.asarray(core_rows, dtype=np.int64), space,
                              config, calibration, model, p_adduct, kept, device)
    ions = torch.as_tensor(space.adduct_ions, device=device)
    li = block_li[torch.as_tensor(core_rows, device=device)]
    mz, rt = result.peaks["mz"], result.peaks["rt"]
    weight = config.context_weight
    common = (block_mz_t, block_rt_t, block_li, model, config, calibration)

    # Candidates: their own adduct, 13C count and the carbon count of their formula.
    f = scored.features
    ion = f.ion.cpu().numpy()
    a = torch.as_tensor(space.adduct[ion], device=device)
    s = torch.as_tensor(space.isotope[ion], device=device)
    carbon = torch.as_tensor(space.n_carbon[space.compound[ion]], device=device)
    neutral = _neutral(mz[f.peak], a, s, ions)
    carbon = torch.where(torch.isnan(carbon), space.carbon_per_mass * neutral.clamp(min=0),
                         carbon) * ions[a, 0]
    cand = partners.adduct_odds[f.peak, a] + _isotope_odds(
        partners, f.peak, a, s, carbon, mz[f.peak], rt[f.peak], li[f.peak], *common,
        config.isotope_ratio_sigma, kernel)

    # The null slot: noise, or a molecule missing from the library under any label (adduct,
    # 13C count), with the typical carbon count of its mass. The isotope terms of one charge
    # and 13C count are shared by its adducts (computed from the commonest adduct's reading).
    # Only peaks with a candidate need it: for the others the null is the only answer.
    n_iso = config.max_isotope + 1
    unknown_sigma = math.hypot(config.isotope_ratio_sigma, UNKNOWN_RATIO_SIGMA)
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
    prior = log_p[kept_t][None, :, None] + _log_abundances(lcarbon[..., 0], config.max_isotope)
    prior = torch.where(lneutral > 0, prior, torch.full_like(prior, float("-inf")))
    prior = prior - torch.logsumexp(prior.flatten(1), dim=1)[:, None, None]
    label = partners.adduct_odds[rows][:, kept_t][:, :, None] + iso
    molecule = torch.logsumexp((prior + weight * label).flatten(1), dim=1)
    phi = config.context_noise_share
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
    f, logit = f.take(order), logit[order]
    rest = torch.isfinite(log_rest)
    rest_rows = torch.nonzero(rest).flatten()
    prob, p_null = segment_softmax(torch.cat([logit, log_rest[rest_rows]]),
                                   torch.cat([f.peak, rest_rows]), n)
    prob = prob[: logit.shape[0]]
    kappa = config.scorer.unlisted_prior
    prob = prob * (1 - kappa)
    p_null = p_null + kappa * (1 - p_null)
    flagged = torch.isnan(scored.p_null)  # a flagged overflow stays without a call
    nan = torch.tensor(float("nan"), dtype=prob.dtype, device=prob.device)
    prob = torch.where(flagged[f.peak], nan, prob)
    p_null = torch.where(flagged, nan, p_null)
    new = ScoredPairs(f, rank, prob, p_null, scored.n_candidates, scored.overflow, logit,
                      log_rest)
    pair, call_prob = best_calls(new, n)
    before = torch.where(result.pair >= 0, scored.features.ion[result.pair.clamp(min=0)],
                         torch.full_like(result.pair, -1))
    after = torch.where(pair >= 0, f.ion[pair.clamp(min=0)], torch.full_like(pair, -1))
    return dataclasses.replace(result, scored=new, pair=pair, prob=call_prob,
                               n_partners=n_partners, changed=before != after)
