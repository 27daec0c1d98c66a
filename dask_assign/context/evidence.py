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
  table, or, for a monoisotopic candidate, its 13C envelope alone, as a peak table that
  merges or drops the fine structure shows it (the better reading counts); a label's 13C
  partners from the typical carbon count of its mass;
* the other adducts of the same molecule (:mod:`dask_assign.context.relations` maps m/z to m/z).

A partner found multiplies the hypothesis' odds by ``d q / rho + (1 - d)``, where ``d`` is the
chance the partner is detected if the hypothesis holds, ``rho`` the chance that a peak lies in
the partner's window by accident (measured with decoy mass differences), and ``q`` how well
the partner fits (m/z, RT, intensity ratio) against a random peak; a partner missing
multiplies them by ``1 - d``. So an 18O peak whose monoisotopic peak is missing, or an acetate
adduct without its molecule's main ion, loses its support, while a main ion with no partner
loses little.

What the pass assumes of the run is fitted from the run (:func:`fit_context`, from sums over
RT blocks): the co-elution spread of isotope partners (13C pairs against decoys) and that of
adduct partners (separate features, whose apexes wander more), the accident rate, the detection
limit, how often a molecule shows each adduct besides its main one (co-eluting pairs of
confident main-ion calls, against decoys: chance matches cannot inflate it), how often an
isotope partner is detected, and the share of unexplained peaks that are noise rather than
unknown molecules.

A peak's result depends only on its own candidates and on the peaks within the co-elution
tolerance, so blocks of peaks by RT with a halo that wide give the same result whatever the
number of blocks (:func:`dask_assign.graph.plan.rt_blocks`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
import torch

from dask_assign.backends import compiled
from dask_assign.chemistry.formulas import C13_ABUNDANCE, C13_SPACING
from dask_assign.config import AssignConfig, Calibration
from dask_assign.context.model import (
    COELUTION_TAIL,
    DETECT_SIGMA,
    MIN_ADDUCT_SHARE,
    NULL_13C,
    RATIO_OUTLIER_SIGMA,
    RATIO_OUTLIERS,
    UNKNOWN_RATIO_SIGMA,
    ContextModel,
    adduct_presence,
    pair_sigma,
)
from dask_assign.context.relations import (
    ADDUCT,
    DECOY,
    ISOTOPE,
    MAX_PARTNERS,
    RelationMaps,
    find_relations,
)
from dask_assign.context.search import (
    _BlockPeaks,
    _nearest_in_rt,
    distinct_sibling_targets,
    nearest_target,
    neighbours,
    sibling_targets,
)
from dask_assign.filtering.join import (
    rank_within_peak,
)
from dask_assign.filtering.space import (
    SearchSpace,
    centred_mz,
)
from dask_assign.scoring.passes import (
    PartitionResult,
    ScoredPairs,
    best_calls,
    slot_probabilities,
)
from dask_assign.scoring.scorer import log_normal

_LOG_RATIO13 = math.log(C13_ABUNDANCE / (1 - C13_ABUNDANCE))


def _log_abundances(n_carbon: torch.Tensor, max_isotope: int) -> torch.Tensor:
    """log of the 13C0..13C``max_isotope`` peaks against the monoisotopic one, stacked on a
    last axis (binomial, as :func:`dask_assign.chemistry.formulas.c13_abundances`; ``-inf``
    where a molecule
    has too few carbons)."""
    out = [torch.zeros_like(n_carbon)]
    inf = torch.full_like(n_carbon, float("-inf"))
    if max_isotope >= 1:
        out.append(torch.where(n_carbon >= 1, torch.log(n_carbon) + _LOG_RATIO13, inf))
    if max_isotope >= 2:
        out.append(torch.where(n_carbon >= 2, torch.log(n_carbon * (n_carbon - 1) / 2)
                               + 2 * _LOG_RATIO13, inf))
    return torch.stack(out, dim=-1)


def _ratio_fit(x, expected, sigma, outliers=None):
    """log density of a partner's log intensity around the predicted one: mostly within
    ``sigma``, a share ``outliers`` far off (an interfering peak, saturation, a simulation or
    peak picker that drops some fine structure), so one bad ratio cannot veto a hypothesis
    outright."""
    outliers = RATIO_OUTLIERS if outliers is None else outliers
    return torch.logaddexp(log_normal(x - expected, sigma) + math.log1p(-outliers),
                           log_normal(x - expected, RATIO_OUTLIER_SIGMA) + math.log(outliers))


def _position_fit(mz_partner, target, rt_diff, model: ContextModel, calibration,
                  coelution=None):
    """log density of a partner's m/z error and RT difference for a true partner against a
    random peak (uniform over the partner window); ``coelution``: the ``(spread, tolerance)``
    of the partner's kind (the isotope partners' by default)."""
    rt_sigma, rt_tol = (model.rt_sigma, model.rt_tol) if coelution is None else coelution
    err = (mz_partner - target) / target * 1e6
    near = torch.logaddexp(log_normal(rt_diff, rt_sigma) + math.log1p(-COELUTION_TAIL),
                           torch.full_like(rt_diff, math.log(COELUTION_TAIL / (2 * rt_tol))))
    return (log_normal(err, pair_sigma(calibration)) + math.log(2 * model.ppm)
            + near + math.log(2 * rt_tol))


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
    adduct_sigma, adduct_tol = model.adduct_coelution()
    # Each kind of partner within its own tolerance.
    bi, bj, m = find_relations(block_mz, block_rt, maps, model.ppm,
                               np.where(maps.kind == ADDUCT, adduct_tol, model.rt_tol), anchor)
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
                          t(block_rt[bj[sel]] - block_rt[bi[sel]]), model, calibration,
                          (adduct_sigma, adduct_tol))
        key, group = torch.unique_consecutive(t(rows[sel] * len(maps) + m[sel]),
                                              return_inverse=True)
        lse = _segment_logsumexp(q, group, key.numel())
        r, mm = key // len(maps), key % len(maps)
        dst, src = t(kept[maps.dst])[mm], t(kept[maps.src])[mm]
        # A wider window holds proportionally more accidental partners, and a window at a
        # mass difference chemistry makes often (acetate, CH2) more than the decoys say.
        accident = t(model.relation_accidents(n_add))[src, dst]
        gain = _log_or_partners(log_p[dst], lse,
                                log_rho[r] + math.log(adduct_tol / model.rt_tol) + accident) \
            - log_1mp[dst]
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
    if compiled(rows, n_carbon, mz, block_mz, kernel=kernel):
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
    return _log_add(a, b)


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
                 - log_normal(block_li[j] - calibration.log_intensity_center,
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


def _sibling_odds(f_peak, f_ion, space: SearchSpace, peaks: dict, li, core_rows, block,
                  finder: _BlockPeaks, log_rho, model: ContextModel, config: AssignConfig,
                  calibration: Calibration, kernel: str = "auto") -> torch.Tensor:
    """Summed log odds factor of each candidate's isotopologue siblings: its monoisotopic ion
    and the ``SIBLINGS`` most abundant others of its compound and adduct, at the m/z the
    candidate's own error predicts and at the intensity ratio its formula predicts.

    On CPU one compiled pass does it candidate by candidate (``kernel="numba"``), reading
    each distinct ion's partner clusters where :func:`sibling_targets` would copy them to
    every candidate; the array version (``"torch"``, the one CUDA runs) builds every
    candidate's targets and hits at once. Both give the same numbers (tested)."""
    if compiled(li, log_rho, kernel=kernel):
        return _sibling_odds_compiled(f_peak, f_ion, space, peaks, li, core_rows, block,
                                      finder, log_rho, model, calibration)
    return _sibling_odds_arrays(f_peak, f_ion, space, peaks, li, core_rows, block, finder,
                                log_rho, model, config, calibration)


def _sibling_odds_compiled(f_peak, f_ion, space: SearchSpace, peaks: dict, li, core_rows,
                           block, finder: _BlockPeaks, log_rho, model: ContextModel,
                           calibration: Calibration) -> torch.Tensor:
    """:func:`_sibling_odds` by :func:`_sibling_odds_loop`."""
    n_c = f_ion.size
    if n_c == 0:
        return torch.zeros(0, dtype=torch.float64)
    distinct, inverse = np.unique(np.asarray(f_ion), return_inverse=True)
    owner, cluster, log_cluster, own_cluster, member, member_row = \
        distinct_sibling_targets(space, distinct, model.ppm)
    p_start = np.r_[0, np.cumsum(np.bincount(owner, minlength=distinct.size))]
    m_start = np.r_[0, np.cumsum(np.bincount(member, minlength=cluster.size))]
    if len(model.label_detect) == len(space.isotope_labels):
        rate = np.asarray(model.label_detect)[space.isotope[cluster]]
    else:
        rate = np.full(cluster.size, model.isotope_detect)
    with np.errstate(divide="ignore", invalid="ignore"):
        block_li = np.log(block["intensity"].to_numpy(dtype=np.float64, na_value=np.nan))

    def c(x, dtype=np.float64):
        return np.ascontiguousarray(x, dtype=dtype)

    out = _sibling_odds_loop(
        c(f_peak, np.int64), c(f_ion, np.int64), c(inverse, np.int64), c(p_start, np.int64),
        c(log_cluster), c(own_cluster), c(np.log(rate)), c(m_start, np.int64),
        c(member_row, np.int64), c(space.mz[member_row]), c(space.mz), c(space.log_abundance),
        c(peaks["mz"].cpu().numpy()), c(peaks["rt"].cpu().numpy()), c(li.cpu().numpy()),
        c(log_rho.cpu().numpy()), c(core_rows, np.int64), finder.mz, finder.rt,
        c(finder.order, np.int64), c(block["mz"].to_numpy(dtype=np.float64)),
        c(block["rt"].to_numpy(dtype=np.float64)), c(block_li),
        finder.ppm * 1e-6, model.rt_tol, MAX_PARTNERS, model.log_detect,
        model.ratio_sigma, model.ratio_outliers, calibration.log_intensity_center,
        calibration.log_intensity_scale, pair_sigma(calibration), model.ppm, model.rt_sigma)
    return torch.from_numpy(out).to(log_rho.device)


@numba.njit(cache=True, nogil=True)
def _log_add(a, b):
    """``log(exp(a) + exp(b))``, as ``torch.logaddexp`` (NaN in, NaN out)."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    top = max(a, b)
    if top == -np.inf:
        return -np.inf
    return top + math.log(math.exp(a - top) + math.exp(b - top))


@numba.njit(cache=True, nogil=True)
def _sibling_odds_loop(cand_peak, cand_ion, inverse, p_start, log_cluster, own_cluster,
                       log_rate, m_start, member_row, member_mz, ion_mz, ion_log_abundance,
                       peak_mz,
                       peak_rt, peak_li, log_rho, core_rows, sorted_mz, sorted_rt, order,
                       block_mz, block_rt, block_li, k, rt_tol, cap, log_detect, ratio_sigma,
                       ratio_outliers, li_center, li_scale, mass_sigma, ppm, rt_sigma):
    """:func:`_sibling_odds_arrays`, one candidate at a time (same formulas): the partner
    clusters of the candidate's ion (CSR by distinct ion: ``p_start``; their members by
    ``m_start``), each member's target searched as ``_BlockPeaks.find`` does (the ``cap``
    peaks nearest in RT, then the candidate's own peak dropped), a peak counted only for
    the candidate's target nearest to it in m/z."""
    n_c = cand_peak.size
    out = np.zeros(n_c)
    log_window = math.log(2 * ppm) + math.log(2 * rt_tol)
    even = math.log(COELUTION_TAIL / (2 * rt_tol))
    tail = math.log1p(-COELUTION_TAIL)
    # Buffers for the most any candidate needs: its partners, and ``cap`` hits a member.
    most_partners, most_members = 1, 1
    for d in range(p_start.size - 1):
        most_partners = max(most_partners, p_start[d + 1] - p_start[d])
        most_members = max(most_members, m_start[p_start[d + 1]] - m_start[p_start[d]])
    size = cap * most_members
    h_part = np.empty(size, dtype=np.int64)  # each hit's partner cluster, peak, member
    h_j = np.empty(size, dtype=np.int64)
    h_m = np.empty(size, dtype=np.int64)
    h_err = np.empty(size)
    h_keep = np.empty(size, dtype=np.bool_)
    best_d = np.empty(cap)
    best_j = np.empty(cap, dtype=np.int64)
    lse = np.empty(most_partners)
    # Candidates of one ion one after the other: its partners' arrays stay in cache.
    for c in np.argsort(inverse, kind="mergesort"):
        d = inverse[c]
        p = cand_peak[c]
        ratio = peak_mz[p] / ion_mz[cand_ion[c]]
        prt = peak_rt[p]
        own = core_rows[p]
        lo_p, hi_p = p_start[d], p_start[d + 1]
        n_hit = 0
        for q in range(lo_p, hi_p):
            for m in range(m_start[q], m_start[q + 1]):
                target = ratio * member_mz[m]
                # Peaks within k of the target: t / (1 + k) <= mz <= t / (1 - k).
                found = _nearest_in_rt(target, prt, sorted_mz, sorted_rt,
                                       np.searchsorted(sorted_mz, target / (1 + k)), k,
                                       rt_tol, best_d, best_j)
                for f in range(found):
                    j = order[best_j[f]]
                    if j == own:
                        continue
                    h_part[n_hit] = q
                    h_j[n_hit] = j
                    h_m[n_hit] = m
                    h_err[n_hit] = abs(block_mz[j] - target)
                    h_keep[n_hit] = True
                    n_hit += 1
        # A peak counts for the candidate's target nearest to it (the first on ties).
        for a in range(n_hit):
            if not h_keep[a]:
                continue
            for b in range(a + 1, n_hit):
                if h_keep[b] and h_j[b] == h_j[a]:
                    if h_err[b] < h_err[a]:
                        h_keep[a] = False
                        break
                    h_keep[b] = False
        for q in range(lo_p, hi_p):
            lse[q - lo_p] = -np.inf
        li = peak_li[p]
        for a in range(n_hit):
            if not h_keep[a]:
                continue
            q = h_part[a]
            j = h_j[a]
            expected = li + log_cluster[q] - own_cluster[q]
            alone = li + ion_log_abundance[member_row[h_m[a]]] - own_cluster[q]
            x = block_li[j]
            fit = _log_add(_ratio_fit_one(x, expected, ratio_sigma, ratio_outliers),
                           _ratio_fit_one(x, alone, ratio_sigma, ratio_outliers)) - math.log(2)
            v = fit - _lognorm(x, li_center, li_scale)
            if math.isnan(v):
                v = 0.0
            elif v == -np.inf:
                v = -1e4
            target = ratio * member_mz[h_m[a]]
            err = (block_mz[j] - target) / target * 1e6
            near = _lognorm(block_rt[j] - prt, 0.0, rt_sigma) + tail
            v += _lognorm(err, 0.0, mass_sigma) + log_window + _log_add(near, even)
            lse[q - lo_p] = _log_add(lse[q - lo_p], v)
        total = 0.0
        for q in range(lo_p, hi_p):
            expected = li + log_cluster[q] - own_cluster[q]
            log_d = log_rate[q] + _log_ndtr((expected - log_detect) / DETECT_SIGMA)
            if math.isnan(log_d):
                log_d = math.log(0.5)
            term = math.log1p(-min(math.exp(log_d), 1.0 - 1e-12))
            if lse[q - lo_p] != -np.inf:  # a NaN fit stays NaN, as in the array version
                term = _log_add(term, log_d + lse[q - lo_p] - log_rho[p])
            total += term
        out[c] = total
    return out


def _sibling_odds_arrays(f_peak, f_ion, space: SearchSpace, peaks: dict, li, core_rows, block,
                         finder: _BlockPeaks, log_rho, model: ContextModel,
                         config: AssignConfig, calibration: Calibration) -> torch.Tensor:
    """The array version of :func:`_sibling_odds`."""
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

    # Copies: a frame's columns can be read-only views (copy on write), which torch wraps
    # only with a warning.
    block_mz = block["mz"].to_numpy(dtype=np.float64, copy=True)
    block_rt = block["rt"].to_numpy(dtype=np.float64, copy=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        block_li = np.log(block["intensity"].to_numpy(dtype=np.float64, na_value=np.nan))
    # The peak is the whole cluster (unresolved) or the member it lies at alone (resolved,
    # or the other members missing): either intensity counts.
    alone = li.cpu().numpy()[peak[t]] + space.log_abundance[member_row[tm]] - own_cluster[t]
    ratio_fit = torch.logaddexp(
        _ratio_fit(tt(block_li[j]), tt(expected[t]), model.ratio_sigma, model.ratio_outliers),
        _ratio_fit(tt(block_li[j]), tt(alone), model.ratio_sigma, model.ratio_outliers)) \
        - math.log(2)
    q = ratio_fit - log_normal(tt(block_li[j]) - calibration.log_intensity_center,
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
        and those within ``config.max_coelution`` of them (which bounds both tolerances).
    core_rows : numpy.ndarray
        Row of ``block`` of each peak of ``result``, in order.
    space : SearchSpace
    config : AssignConfig
    calibration : Calibration
    model : ContextModel
    kernel : {"auto", "numba", "torch"}
        How the null's isotope odds and the candidates' sibling odds are computed (``auto``:
        compiled on CPU, the array versions on CUDA).

    Returns
    -------
    PartitionResult
        With updated probabilities, calls, ``n_partners`` and ``changed``.
    """
    scored = result.scored
    device = scored.p_null.device
    n = int(scored.p_null.shape[0])
    core_rows = np.asarray(core_rows, dtype=np.int64)
    # Partners are searched in m/z with the run's mass offset taken out (as the candidates
    # were): the offset curve moves ions far apart in m/z by different ppm.
    block = block.assign(mz=centred_mz(block["mz"].to_numpy(dtype=np.float64), calibration))
    peaks = {**result.peaks, "mz": centred_mz(result.peaks["mz"], calibration)}
    # Copies: a frame's columns can be read-only views (copy on write), which torch wraps
    # only with a warning.
    block_mz = block["mz"].to_numpy(dtype=np.float64, copy=True)
    block_rt = block["rt"].to_numpy(dtype=np.float64, copy=True)
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
    mz, rt = peaks["mz"], peaks["rt"]
    weight = config.context_weight
    common = (block_mz_t, block_rt_t, block_li, model, config, calibration)

    # Candidates: the partners of their own adduct, and their isotopologue siblings.
    f = scored.features
    ion = f.ion.cpu().numpy()
    a = torch.as_tensor(space.adduct[ion], device=device)
    finder = _BlockPeaks(block_mz, block_rt, model.ppm)
    siblings = _sibling_odds(f.peak.cpu().numpy(), ion, space, peaks, li, core_rows, block,
                             finder, partners.log_rho, model, config, calibration, kernel)
    siblings = torch.maximum(siblings, _envelope_odds(
        partners, f.peak, ion, a, space, mz, rt, li, common, model.ratio_sigma, kernel))
    cand = partners.adduct_odds[f.peak, a] + siblings

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
    return _rescored(result, logit, scored.log_rest - null, partners.n_partners, space)


def _envelope_odds(partners: _Partners, peak, ion, a, space: SearchSpace, mz, rt, li, common,
                   ratio_sigma: float, kernel) -> torch.Tensor:
    """Log odds factor of a monoisotopic candidate's 13C envelope alone: its 13C1 and 13C2
    partners at the intensities its formula's carbon count predicts (spread
    ``ratio_sigma``), as the null slot reads an unknown molecule's (``-inf`` for the other
    candidates; ``common`` is the block's ``(mz, rt, log intensity, model, config,
    calibration)`` that :func:`_isotope_odds` reads).

    A peak table may report an ion's isotopologue fine structure (15N, 18O, 34S apart from
    13C) or only its 13C envelope: a peak picker that groups features within some ppm merges
    NAD's 15N1 into its 13C1 peak (9.7 ppm apart at m/z 663) and its 18O1 with its 13C2. The
    sibling term then counts each merged isotopologue as missing and the merged peak as off
    its ratio, while the null's reading of an unknown molecule asks only for the envelope;
    credited with the better of the two readings, a library compound does not lose to an
    unknown molecule on evidence both explain."""
    out = torch.full((ion.size,), float("-inf"), dtype=li.dtype, device=li.device)
    mono = space.isotope[ion] == 0
    carbon = space.n_carbon[space.compound[ion]] * space.adduct_ions[space.adduct[ion], 0]
    ok = mono & np.isfinite(carbon)
    ok &= partners.iso_col[a, 0, 1].cpu().numpy() >= 0  # its charge's 13C maps were searched
    if not ok.any():
        return out
    sel = torch.as_tensor(np.flatnonzero(ok), device=li.device)
    rows = peak[sel]
    c = torch.as_tensor(carbon[ok], dtype=li.dtype, device=li.device)
    # The formula's own carbon count: the isotope ratio spread, not the unknowns' wider one.
    out[sel] = _isotope_odds(partners, rows, a[sel], torch.zeros_like(rows), c, mz[rows],
                             rt[rows], li[rows], *common, ratio_sigma, kernel)
    return out


def _neutral(mz, a, s, ions):
    """Neutral monoisotopic mass of a peak read as the 13C``s`` ion of adduct ``a``."""
    z = ions[a, 1]
    return (z * mz - s.to(mz.dtype) * C13_SPACING - ions[a, 2]) / ions[a, 0]


def _rescored(result: PartitionResult, logit, log_rest, n_partners,
              space: SearchSpace) -> PartitionResult:
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
    pair, call_prob = best_calls(new, n, space)
    before = torch.where(result.pair >= 0, scored.features.ion[result.pair.clamp(min=0)],
                         torch.full_like(result.pair, -1))
    after = torch.where(pair >= 0, f.ion[pair.clamp(min=0)], torch.full_like(pair, -1))
    return dataclasses.replace(result, scored=new, pair=pair, prob=call_prob,
                               n_partners=n_partners, changed=before != after)
