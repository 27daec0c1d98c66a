"""Counts of one RT block for the context model: co-eluting 13C and decoy pairs, detection of
predicted partners, adduct co-occurrence with confident main-ion calls."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from dask_assign.chemistry.adducts import DECOY_SHIFTS
from dask_assign.chemistry.formulas import C13_ABUNDANCE
from dask_assign.config import AssignConfig, Calibration
from dask_assign.context.model import (
    CO_BINS,
    DETECT_MARGIN,
    RATIO_BINS,
    RT_BINS,
    partner_ppm,
    stat_columns,
)
from dask_assign.context.relations import (
    DECOY,
    ISOTOPE,
    RelationMaps,
    find_relations,
)
from dask_assign.context.search import (
    _BlockPeaks,
    _first_hit,
    nearest_target,
    neighbours,
    sibling_targets,
)
from dask_assign.filtering.join import (
    MassBinIndex,
    batches_by_pairs,
    range_join,
    window_bounds,
)
from dask_assign.filtering.space import (
    SearchSpace,
    calibrated_ions,
    candidate_rt_window,
    centred_mz,
    main_adduct,
)
from dask_assign.scoring.passes import (
    peak_tensors,
    score_in_batches,
)


def context_stats(block: pd.DataFrame, space: SearchSpace, config: AssignConfig,
                  calibration: Calibration) -> pd.Series:
    """Counts of one RT block for :func:`fit_context`, over the block's core peaks: RT
    differences of co-eluting 13C pairs and of decoy pairs; how often any peak predicted
    well above the detection limit has its 13C partner; and, for the confident main-ion
    calls of a first pass, how often each other adduct's ion and each isotopologue co-elute
    with them (against decoys).

    Counts add up over blocks, so the fit is the same whatever the blocks. A Series (named
    by :func:`stat_columns`), not a one-row frame: with thousands of columns a frame costs
    dask's ``sizeof`` a tenth of a second per block, as much as the counting on a small run.
    """
    core = block["core"].to_numpy(dtype=bool)
    # Partners are searched in m/z with the run's mass offset taken out: the offset curve
    # moves a trimer, a dimer or an adduct 60 Da away by another few ppm than its main ion.
    mz = centred_mz(block["mz"].to_numpy(dtype=np.float64), calibration)
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
    main_w, sib, co, ratio = _main_call_counts(block, mz, core, li, space, config,
                                               calibration, ppm, window)
    pairs = _adduct_pairs(block, core, space, config, calibration)
    far = _far_relations(mz, rt, core, space, ppm, window)
    any_core = core.any()
    row = np.concatenate([
        [core.sum(), neighbours(rt, window)[core].sum(),
         mz[core].min() if any_core else np.inf, mz[core].max() if any_core else -np.inf,
         rt[core].min() if any_core else np.inf, rt[core].max() if any_core else -np.inf,
         main_w, strong.sum(), (strong & hit_iso).sum(), hit_dec[strong].sum()], pairs,
        iso, decoy, sib.ravel(), ratio, co.ravel(), far.ravel()]).astype(np.float64)
    return pd.Series(row, index=stat_columns(len(space.adduct_names),
                                             len(space.isotope_labels)))


def _far_relations(mz, rt, core, space: SearchSpace, ppm: float, window: float) -> np.ndarray:
    """Peaks that each adduct relation (``[src, dst]``) finds from the core peaks over the
    outer half of the co-elution window: the accident rate of its partner windows (true
    partners co-elute closer), as the decoys' ``decoy`` histogram measures theirs."""
    n_adducts = len(space.adduct_names)
    far = np.zeros((n_adducts, n_adducts))
    if n_adducts < 2 or not core.any():
        return far
    ions = space.adduct_ions
    maps = RelationMaps.build(ions[:, 0], ions[:, 1], ions[:, 2], max_isotope=0)
    i, j, m = find_relations(mz, rt, maps, ppm, window, anchor=core)
    outer = np.abs(rt[j] - rt[i]) > window / 2
    np.add.at(far, (maps.src[m[outer]], maps.dst[m[outer]]), 1.0)
    return far


def _adduct_pairs(block, core, space, config, calibration) -> np.ndarray:
    """Core peaks with a candidate among each adduct's monoisotopic ions, in the candidate
    windows (a peak beside two isomers counts once): what the null's density near each
    adduct's ions is measured from."""
    n_adducts = len(space.adduct_names)
    rows = np.flatnonzero(core)
    if rows.size == 0 or len(space.mz) == 0:
        return np.zeros(n_adducts)
    peaks = peak_tensors(block.iloc[rows], "cpu")
    # Only the monoisotopic ions count: the join runs on them alone, with their library RTs
    # mapped to the run (as ``calibrated_ions`` maps every ion's).
    mono = np.flatnonzero(space.isotope == 0)
    ion_mz = torch.as_tensor(space.mz[mono])
    ion_rt = calibration.rt_map(torch.as_tensor(space.rt[mono]))
    adduct = space.adduct[mono]
    bins = MassBinIndex.build(space.mz[mono], space.bins_ppm)
    counts = np.zeros(n_adducts)
    mz = centred_mz(peaks["mz"], calibration)
    lo, hi = window_bounds(mz, bins)
    for a, b in batches_by_pairs(lo, hi, config.max_pairs):
        pi, ii = range_join(mz[a:b], peaks["rt"][a:b], ion_mz, ion_rt, bins, config.ppm,
                            candidate_rt_window(config, calibration))
        key = np.unique(pi.numpy() * n_adducts + adduct[ii.numpy()])
        counts += np.bincount(key % n_adducts, minlength=n_adducts)
    return counts


def _main_call_counts(block, mz, core, li, space, config, calibration, ppm, window):
    """The confident main-ion calls of a block's core peaks (a first pass over the main
    adduct's monoisotopic ions, each pair weighed by its probability) and what co-elutes
    with them (``mz``: the block's centred m/z, where the partners are searched): the summed
    weight; per isotopologue label, the weight of the calls whose
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
    pmz = mz[own]
    prt = block["rt"].to_numpy(dtype=np.float64)[own]
    block_rt = block["rt"].to_numpy(dtype=np.float64)
    found = _BlockPeaks(mz, block_rt, ppm)
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
        hit = nearest_target(owner[member], target, t, jj, mz)
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
