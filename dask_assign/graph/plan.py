"""The run plan, made once before any peak is annotated: calibration (drift and mass searches,
EM on a sample), the RT blocks with their halo, the context model. Used by the API, the CLI,
the tests and the benchmarks alike."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.base import get_scheduler
from dask.delayed import Delayed

from dask_assign.backends import to_pandas
from dask_assign.calibration import mass_search as mass_search_module
from dask_assign.calibration.drift import (
    DRIFT_BIN,
    DRIFT_SAMPLE,
    VOTE_COLUMNS,
    drift_from_votes,
)
from dask_assign.calibration.em import (
    EM_SAMPLE,
    em_columns,
    fit_calibration,
    generative,
)
from dask_assign.calibration.isomer_rt import with_isomer_rt
from dask_assign.calibration.mass_search import VOTE_COLUMNS as MASS_VOTE_COLUMNS
from dask_assign.calibration.mass_search import mz_edges
from dask_assign.calibration.peaks import SUMMARY_COLUMNS, run_context
from dask_assign.config import AssignConfig, Calibration
from dask_assign.context.model import ContextModel, fit_context, scoring_calibration
from dask_assign.context.stats import context_stats
from dask_assign.filtering.space import SearchSpace, fitted_ppm
from dask_assign.graph.tasks import (
    add_context,
    drift_search,
    em_fit,
    em_step,
    join_and_score,
    kept_pairs,
    mass_search,
    refine_partition,
    rt_block,
    rt_sketch,
    sample_peaks,
    split_by_rt,
    summarize_peaks,
)

log = logging.getLogger(__name__)

#: Peaks in each partition of the calibration sample: few, full tasks for the EM steps (each
#: task also maps the whole ion table through the run's calibration).
SAMPLE_PARTITION = 50_000


def peak_sample(peaks: dd.DataFrame, n_peaks: int) -> dd.DataFrame:
    """The peaks that calibration and block planning look at, persisted: all of them up to
    ``EM_SAMPLE``, else a deterministic sample by peak id (:func:`sampled`), regrouped into
    partitions of about :data:`SAMPLE_PARTITION` peaks (a few tens of MB in all).

    A smaller sample by the same hash (the drift search's, the planner's) is a subset of it,
    so those read it instead of the whole table.
    """
    fraction = min(1.0, EM_SAMPLE / max(n_peaks, 1))
    sample = peaks if fraction >= 1 else peaks.map_partitions(sample_peaks, fraction,
                                                              meta=peaks._meta)
    parts = max(1, math.ceil(min(n_peaks, EM_SAMPLE) / SAMPLE_PARTITION))
    if parts < sample.npartitions:
        sample = sample.repartition(npartitions=parts)
    return sample.persist()


def blocks_may_overfill(n_peaks: int, n_partitions: int, config: AssignConfig) -> bool:
    """Whether an RT block could hold over ``config.block_pairs`` kept pairs (else the
    planner has nothing to measure)."""
    return n_peaks * config.k_max > config.block_pairs * n_partitions




def block_edges(ddf: dd.DataFrame, n_blocks: int) -> np.ndarray:
    """Inner RT edges of about ``n_blocks`` blocks of equal peak counts (fewer where RTs tie)."""
    if n_blocks <= 1:
        return np.empty(0)
    sketch = _collect(ddf.map_partitions(rt_sketch, meta={"rt": "float64", "w": "float64"}))
    sketch = sketch.sort_values("rt", kind="stable")
    cum = sketch["w"].cumsum().to_numpy()
    if cum.size == 0:
        return np.empty(0)
    at = np.searchsorted(cum, cum[-1] * np.arange(1, n_blocks) / n_blocks)
    edges = np.unique(sketch["rt"].to_numpy()[np.minimum(at, cum.size - 1)])
    return edges[edges > sketch["rt"].iloc[0]]


#: Peaks the block planner scores, at most (a sample by peak id, like the calibration's). It
#: estimates a mean (kept pairs a peak) that only sizes the blocks: a few thousand peaks pin it
#: to a few percent (benchmarks/NOTES.md), and each sampled peak costs a first pass.
PLAN_SAMPLE = 5_000


def plan_blocks(ddf: dd.DataFrame, space_key, config: AssignConfig,
                calibration: Calibration, sample: dd.DataFrame | None = None) -> int:
    """How many RT blocks to make: as many as ``ddf`` has partitions, more where the run is so
    crowded that a block would hold over ``config.block_pairs`` kept candidate pairs
    (``sample``: :func:`peak_sample` of ``ddf``, read instead of ``ddf`` when given).

    A block's memory follows its kept pairs (about 650 bytes each at its peak, measured), and
    their number per peak varies tenfold between runs: it is measured here on up to
    :data:`PLAN_SAMPLE` peaks, scored as the run will score them. Results do not depend on
    the number of blocks.
    """
    n_peaks = int(len(ddf))
    if not blocks_may_overfill(n_peaks, ddf.npartitions, config):
        return ddf.npartitions
    fraction = min(1.0, PLAN_SAMPLE / n_peaks)
    source = ddf if sample is None else sample
    picked = source.map_partitions(sample_peaks, fraction, meta=source._meta)
    counts = _collect(picked.map_partitions(kept_pairs, space_key, config, calibration,
                                            meta={"n": "float64", "kept": "float64"}))
    per_peak = float(counts["kept"].sum()) / max(float(counts["n"].sum()), 1.0)
    n_blocks = max(ddf.npartitions, math.ceil(n_peaks * per_peak / config.block_pairs))
    log.info("blocks: %.1f kept candidates a peak (sample of %d peaks) -> %d RT blocks",
             per_peak, int(counts["n"].sum()), n_blocks)
    return n_blocks


def rt_blocks(ddf: dd.DataFrame, config: AssignConfig, n_blocks: int | None = None) -> list:
    """The peaks regrouped into about ``n_blocks`` RT blocks (delayed frames; as many as
    ``ddf`` has partitions when omitted, fewer where RTs tie).

    Each block carries a halo ``max_coelution`` wide on both sides, so every peak within that
    RT distance of a block's own peaks is in the block.
    """
    edges = block_edges(ddf, ddf.npartitions if n_blocks is None else n_blocks)
    halo = config.max_coelution * 1.001  # a hair wider: RT comparisons round
    n_blocks = edges.size + 1
    parts = ddf.to_delayed()
    splits = [dask.delayed(split_by_rt, nout=n_blocks)(p, edges, halo) for p in parts]
    return [dask.delayed(rt_block)([sp[k] for sp in splits], edges, k) for k in range(n_blocks)]


#: Peaks the context model is fitted on, about: a larger run is fitted on evenly spaced RT
#: blocks holding this many (co-eluting partners stay together in a block, as they would not
#: in a sample by peak id). ``benchmarks/context_sample.py`` shows the fit against the blocks.
CONTEXT_SAMPLE = 200_000


def context_sample(n_blocks: int, n_peaks: int) -> list[int]:
    """The RT blocks (their numbers) the context model is fitted on: all of them below twice
    :data:`CONTEXT_SAMPLE` peaks, else every k-th (the middle one of each k), so that they
    hold at least about that many (blocks hold equal peak counts).

    >>> context_sample(4, 1000)
    [0, 1, 2, 3]
    >>> context_sample(20, 2_000_000)
    [5, 15]
    """
    step = min(max(1, n_peaks // CONTEXT_SAMPLE), max(n_blocks, 1))
    return list(range(step // 2, n_blocks, step))


def context_model(blocks: list, space, space_key, config: AssignConfig,
                  calibration: Calibration, n_peaks: int = 0) -> ContextModel:
    """Fit the run's co-elution evidence (co-elution spread, accident rate, detection limit
    and rate, adduct shares, noise share; sums over blocks) on the blocks of
    :func:`context_sample`: all of them below twice :data:`CONTEXT_SAMPLE` peaks."""
    picked = [blocks[k] for k in context_sample(len(blocks), n_peaks)]
    stats = [dask.delayed(context_stats)(b, space_key, config, calibration) for b in picked]
    parts = dask.compute(*stats)
    # One array, not one per statistic (1,954 of them: their allocations set off a full
    # garbage collection in a small run).
    frame = pd.DataFrame(np.vstack([p.to_numpy() for p in parts]), columns=parts[0].index)
    model = fit_context(frame, config, calibration, space)
    log.info("context: co-elution tolerance %.4f min (from %.0f 13C pairs), of adducts %.4f "
             "min, partner window %.1f ppm, isotope detection %.2f, noise share %.2f, adduct "
             "shares %s (from %.0f main-ion calls)", model.rt_tol, model.isotope_pairs,
             model.adduct_coelution()[1], model.ppm,
             model.isotope_detect, model.noise_share,
             dict(zip(space.adduct_names, np.round(model.adduct_share, 3).tolist(),
                      strict=False)), model.main_calls)
    return model


def on_workers(obj):
    """``obj`` (a value, or a delayed that makes it) as a task argument that is sent once:
    persisted on the cluster when a
    distributed client is current, so later graphs name it instead of carrying it (the
    search space of a large library is tens of MB); else a delayed literal of the graph.

    Persisted, not scattered: the scheduler keeps the task that makes it, so a worker lost
    mid-run costs a recomputation, not the run (scattered data cannot be recovered)."""
    value = obj if isinstance(obj, Delayed) else dask.delayed(obj, pure=True)
    client = cluster_client()
    if client is None:
        return value
    # Sent once on purpose: distributed's warning about a large graph does not apply.
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "2GB"}):
        return client.persist(value)


def cluster_client():
    """The distributed client that will run the graphs, or ``None`` for a local scheduler
    (a client may exist while dask.config says "synchronous")."""
    client = getattr(get_scheduler(), "__self__", None)
    return client if hasattr(client, "persist") and hasattr(client, "scheduler_info") else None


def resolve_space(space: SearchSpace, tol_ppm: float, max_ppm: float) -> SearchSpace:
    """The space as a run's instrument sees it (:meth:`SearchSpace.resolved` at ``tol_ppm``),
    its mass bins indexed for windows up to ``max_ppm``."""
    return space.resolved(tol_ppm).indexed(max_ppm)


def annotated_blocks(plan: RunPlan, config: AssignConfig, which=None) -> list:
    """One delayed :class:`~dask_assign.scoring.passes.PartitionResult` per RT block of the plan
    (or of the blocks numbered ``which``)."""
    key, cal = plan.space_key, plan.calibration
    out = []
    for k in range(len(plan.blocks)) if which is None else which:
        block = plan.blocks[k]
        scored = dask.delayed(join_and_score)(block, key, config, cal)
        refined = dask.delayed(refine_partition)(scored, key, config, cal)
        out.append(dask.delayed(add_context)(refined, block, key, config, cal, plan.context))
    return out


def _collect(frames: dd.DataFrame) -> pd.DataFrame:
    """Compute small per-partition summaries into one pandas frame."""
    return to_pandas(frames.compute())


def calibrate(peaks: dd.DataFrame, space: SearchSpace, config: AssignConfig,
              space_key=None, sample: dd.DataFrame | None = None) -> Calibration:
    """The run's calibration: defaults from the data's ranges, then EM if ``config.calibrate``.

    Runs on whatever scheduler is active (a distributed client when one is connected);
    ``space_key`` is the space as :func:`on_workers` gives it (made here when omitted);
    ``sample`` is :func:`peak_sample` of ``peaks`` (made here when omitted). The drift search
    and the EM steps read the sample, not the table. The fit uses the generative scorer
    (:func:`~dask_assign.calibration.em.generative`), whatever model will score the run.
    """
    config = generative(config)
    summary = _collect(peaks.map_partitions(summarize_peaks,
                                        meta={c: "float64" for c in SUMMARY_COLUMNS}))
    start = run_context(summary, space, config)
    if not config.calibrate:
        return start
    space_key = on_workers(space) if space_key is None else space_key
    n_peaks = float(summary["n"].sum())
    # The EM steps share one sample of the peaks, read once and kept in the workers' memory.
    em_peaks = peak_sample(peaks, int(n_peaks)) if sample is None else sample
    if config.mass_search_ppm > 0:
        fraction = min(1.0, mass_search_module.MASS_SAMPLE / max(n_peaks, 1.0))
        edges = mz_edges(float(summary["mz_min"].min()), float(summary["mz_max"].max()))
        votes = _collect(em_peaks.map_partitions(mass_search, space_key, config, fraction,
                                                 edges, meta=dict(MASS_VOTE_COLUMNS)))
        votes = votes.groupby(["mz_bin", "err_bin"], as_index=False)["w"].sum()
        start = mass_search_module.start_mass_curve(votes, start, config, edges)
    if config.max_drift > 0 and np.isfinite(space.rt).any():
        fraction = min(1.0, DRIFT_SAMPLE / max(n_peaks, 1.0))
        votes = _collect(em_peaks.map_partitions(drift_search, space_key, config, fraction,
                                                 start, meta=dict(VOTE_COLUMNS)))
        votes = votes.groupby(["slope", "shift"], as_index=False)["w"].sum()
        found = drift_from_votes(votes, config)
        if found is not None:
            # Start EM from the voted map, with an RT spread as wide as one vote bin allows.
            start = start.replace(
                rt_values=tuple(found[0] + found[1] * k for k in start.rt_knots),
                rt_sigma=max(start.rt_sigma, 2 * DRIFT_BIN))
            log.info("RT drift search: run RT = %.3f + %.3f x library RT", *found)

    if em_peaks.npartitions == 1:  # the usual case: the sample is at most 50k peaks
        return dask.delayed(em_fit)(em_peaks.to_delayed()[0], space_key, config,
                                    start).compute()

    def stats_of(calibration):
        parts = em_peaks.map_partitions(em_step, space_key, config, calibration,
                                        meta={c: "float64" for c in em_columns(space)})
        return _collect(parts).sum().to_dict()

    return fit_calibration(stats_of, start, config, space)


@dataclass
class RunPlan:
    """Everything a run decides before it scores: made once by :func:`plan_run`, used alike
    by the API, the CLI, training and the benchmarks.

    Attributes
    ----------
    fitted : Calibration
        What the calibration fitted (saved for ``--resume``).
    calibration : Calibration
        What the run scores with: ``fitted`` with the adduct priors the evidence measured.
    space : SearchSpace
        The ion table at the run's mass resolution (isotopologues closer than its fitted
        mass spread merged).
    space_key : object
        ``space`` as :func:`on_workers` gives it.
    n_blocks : int
    blocks : list
        The peaks as delayed RT blocks (with their halos).
    evidence : ContextModel
        The run's fitted co-elution evidence (saved).
    context : ContextModel or None
        What the context pass uses: ``evidence``, or ``None`` when the pass is off.
    """

    fitted: Calibration
    calibration: Calibration
    space: SearchSpace
    space_key: object
    n_blocks: int
    blocks: list
    evidence: ContextModel
    context: ContextModel | None


def plan_run(ddf: dd.DataFrame, space: SearchSpace, config: AssignConfig,
             calibration: Calibration | None = None, n_blocks: int | None = None,
             evidence: ContextModel | None = None) -> RunPlan:
    """Calibrate, resolve the ion table at the run's mass spread, plan the RT blocks and fit
    the run's co-elution evidence, on the active scheduler; each step is skipped where its
    result is given (a resumed run). The calibration and the planner read one
    :func:`peak_sample`, made only when one of them needs it."""
    n_peaks = int(len(ddf))
    sample = None
    if (calibration is None and config.calibrate) or (
            n_blocks is None and blocks_may_overfill(n_peaks, ddf.npartitions, config)):
        sample = peak_sample(ddf, n_peaks)
    space_key = None
    if calibration is None:
        space_key = on_workers(space)
        calibration = calibrate(ddf, space, config, space_key, sample)
    # Isotopologues closer than the run's mass spread are one peak to this instrument; the
    # mass bins serve the windows the fitted spread sets (the refinement's included).
    tol = max(config.isotope_merge_ppm, calibration.mass_sigma_ppm)
    ppm = fitted_ppm(config, calibration, config.refine_widen)
    # A cluster that holds the space resolves its copy (while this process resolves its
    # own) rather than receive the table again: a 100k-compound library's is 0.9 GB.
    held = space_key is not None and cluster_client() is not None
    on_cluster = on_workers(dask.delayed(resolve_space)(space_key, tol, ppm)) if held else None
    resolved = resolve_space(space, tol, ppm)
    if resolved is not space or space_key is None:  # the cluster holds one space at a time
        space_key = on_cluster if held else on_workers(resolved)
    # The evidence is a sum over blocks, the same for any blocks (below 2 x CONTEXT_SAMPLE):
    # fitted on one block a partition, so that the planner can count pairs as the run will
    # score them.
    blocks = rt_blocks(ddf, config, n_blocks or ddf.npartitions)
    if evidence is None:  # fitted with the generative scorer, as the calibration is
        evidence = context_model(blocks, resolved, space_key, generative(config), calibration,
                                 n_peaks)
    scoring = with_isomer_rt(scoring_calibration(calibration, evidence, resolved, config),
                             resolved)
    if n_blocks is None:
        n_blocks = plan_blocks(ddf, space_key, config, scoring, sample)
        if n_blocks != len(blocks):
            blocks = rt_blocks(ddf, config, n_blocks)
    return RunPlan(fitted=calibration, calibration=scoring,
                   space=resolved, space_key=space_key, n_blocks=n_blocks, blocks=blocks,
                   evidence=evidence, context=evidence if config.context else None)
