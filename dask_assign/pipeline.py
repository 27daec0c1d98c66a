"""The dask graph: read -> summarise -> sample -> calibrate (EM) -> plan RT blocks -> score
-> refine -> context -> write.

Peaks are a dask DataFrame (pandas or cudf partitions); the library is small and becomes one
:class:`~dask_assign.annotate.SearchSpace` that every task shares (one graph key, so each
worker receives it once). After calibration the peaks are regrouped into blocks of retention
time, as many as memory asks for, each with a halo of its neighbours ``max_coelution`` wide,
so that the context pass sees every co-eluting partner of its peaks: results do not depend on
the number of blocks. Task names say what they do, so the dashboard's task stream reads as
the pipeline: ``read_parquet``, ``summarize_peaks``, ``sample_peaks``, ``drift_search``,
``em_step``, ``kept_pairs``, ``rt_sketch``, ``split_by_rt``, ``rt_block``, ``context_stats``,
``join_and_score``, ``refine_partition``, ``add_context``, ``write_partition``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.base import get_scheduler

from . import calibration as calibration_module
from .adducts import select_adducts
from .annotate import (
    ASSIGNMENT_DTYPES,
    CANDIDATE_DTYPES,
    SearchSpace,
    first_pass,
    second_pass,
    to_tables,
)
from .calibration import (
    DRIFT_BIN,
    DRIFT_SAMPLE,
    EM_SAMPLE,
    SUMMARY_COLUMNS,
    VOTE_COLUMNS,
    drift_from_votes,
    drift_votes,
    em_columns,
    em_statistics,
    fit_calibration,
    generative,
    peak_summary,
    run_context,
    sampled,
)
from .config import AssignConfig, Calibration
from .context import (
    ContextModel,
    apply_context,
    context_stats,
    fit_context,
    scoring_calibration,
)
from .io import read_library, read_peaks
from .ions import build_ions
from .isomer_rt import with_isomer_rt
from .mass_search import VOTE_COLUMNS as MASS_VOTE_COLUMNS
from .mass_search import mz_edges

log = logging.getLogger(__name__)


def prepare_library(library, config: AssignConfig) -> SearchSpace:
    """Library (path or frame from :func:`~dask_assign.io.read_library`) -> search space."""
    if not isinstance(library, pd.DataFrame):
        library = read_library(library, rt_unit=config.library_rt_unit)
    adducts = select_adducts(config.mode, config.adducts, config.adduct_table)
    table = build_ions(library, adducts, config.max_isotope, config.isotope_min_abundance,
                       config.isotope_merge_ppm)
    log.info("library: %d compounds, %d ions (%d adducts, %d isotopologue labels)",
             len(library), len(table), len(adducts), len(table.isotope_labels))
    return SearchSpace.build(table, config.ppm * config.refine_widen)


def summarize_peaks(part):
    """Task: sums and ranges of one partition (for the run context)."""
    return peak_summary(part)


def drift_search(part, space, config, fraction, calibration):
    """Task: mass-only votes of one partition for the library-to-run RT map."""
    return drift_votes(part, space, config, fraction, calibration)


def mass_search(part, space, config, fraction, edges):
    """Task: RT-free votes of one partition for the run's mass-offset curve."""
    return calibration_module.mass_search(part, space, config, fraction, edges)


def sample_peaks(part, fraction):
    """Task: the peaks of a partition that calibration looks at (a sample by peak id)."""
    return part[sampled(part, fraction)]


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


def em_step(part, space, config, calibration):
    """Task: the E-step of calibration on one partition."""
    return em_statistics(part, space, config, calibration)


#: RT values per partition in the sketch that places the block edges.
EDGE_SAMPLE = 2000


def rt_sketch(part) -> pd.DataFrame:
    """Task: evenly spaced order statistics of a partition's RTs, each weighing the peaks it
    stands for."""
    rt = np.sort(part["rt"].to_numpy(dtype=np.float64))
    if rt.size > EDGE_SAMPLE:
        rt = rt[np.linspace(0, rt.size - 1, EDGE_SAMPLE).round().astype(np.int64)]
    return pd.DataFrame({"rt": rt, "w": np.full(rt.size, len(part) / max(rt.size, 1))})


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


def split_by_rt(part, edges: np.ndarray, halo: float):
    """Task: the rows of a partition for each RT block, halo included (a row near an edge
    goes to both blocks)."""
    rt = part["rt"].to_numpy(dtype=np.float64)
    lo = np.r_[-np.inf, edges] - halo
    hi = np.r_[edges, np.inf] + halo
    return tuple(part[(rt >= a) & (rt < b)] for a, b in zip(lo, hi, strict=True))


def rt_block(pieces, edges: np.ndarray, k: int):
    """Task: block ``k``: its pieces from every partition, in one canonical order (RT, m/z,
    peak id), with ``core`` marking the peaks that belong to it (not to its halo)."""
    if hasattr(pieces[0], "to_pandas"):
        import cudf

        block = cudf.concat(list(pieces), ignore_index=True)
    else:
        block = pd.concat(list(pieces), ignore_index=True)
    # Peak ids are unique, so this order is total: the same rows, the same order, whatever
    # the blocks (pandas and cudf alike).
    block = block.sort_values(["rt", "mz", "peak_id"], ignore_index=True) if len(block) \
        else block
    rt = block["rt"].to_numpy(dtype=np.float64)
    lo = -np.inf if k == 0 else edges[k - 1]
    hi = np.inf if k == len(edges) else edges[k]
    block["core"] = (rt >= lo) & (rt < hi)
    return block


#: Peaks the block planner scores, at most (a sample by peak id, like the calibration's).
PLAN_SAMPLE = 50_000


def kept_pairs(part, space, config, calibration) -> pd.DataFrame:
    """Task: peaks and kept candidate pairs (first pass, then refinement) of a partition."""
    result = second_pass(first_pass(part.reset_index(drop=True), space, config, calibration),
                         space, config, calibration)
    return pd.DataFrame({"n": [float(len(part))], "kept": [float(len(result.scored.features))]})


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


def context_model(blocks: list, space, space_key, config: AssignConfig,
                  calibration: Calibration) -> ContextModel:
    """Fit the run's co-elution evidence on every block (co-elution spread, accident rate,
    detection limit and rate, adduct shares, noise share; sums over blocks)."""
    stats = [dask.delayed(context_stats)(b, space_key, config, calibration) for b in blocks]
    parts = dask.compute(*stats)
    model = fit_context(pd.concat(parts, ignore_index=True), config, calibration, space)
    log.info("context: co-elution tolerance %.4f min (from %.0f 13C pairs), partner window "
             "%.1f ppm, isotope detection %.2f, noise share %.2f, adduct shares %s (from %.0f "
             "main-ion calls)", model.rt_tol, model.isotope_pairs, model.ppm,
             model.isotope_detect, model.noise_share,
             dict(zip(space.adduct_names, np.round(model.adduct_share, 3).tolist(),
                      strict=False)), model.main_calls)
    return model


def join_and_score(block, space, config, calibration):
    """Task: the candidate join and first-pass scores of the own peaks of a block."""
    core = block[block["core"]].drop(columns="core") if "core" in block.columns else block
    return first_pass(core.reset_index(drop=True), space, config, calibration)


def refine_partition(result, space, config, calibration):
    """Task: the second pass over the low-confidence peaks of one block."""
    return second_pass(result, space, config, calibration)


def add_context(result, block, space, config, calibration, model):
    """Task: the context pass of one block (its own peaks; the halo only as partners)."""
    if model is None:
        return result
    core_rows = np.flatnonzero(block["core"].to_numpy(dtype=bool))
    return apply_context(result, block, core_rows, space, config, calibration, model)


def on_workers(obj):
    """``obj`` as a task argument that is sent once: persisted on the cluster when a
    distributed client is current, so later graphs name it instead of carrying it (the
    search space of a large library is tens of MB); else a delayed literal of the graph.

    Persisted, not scattered: the scheduler keeps the task that makes it, so a worker lost
    mid-run costs a recomputation, not the run (scattered data cannot be recovered)."""
    value = dask.delayed(obj, pure=True)
    # The scheduler that will run the graphs: a distributed client's, or a local one (a
    # client may exist while dask.config says "synchronous").
    client = getattr(get_scheduler(), "__self__", None)
    if not hasattr(client, "persist") or not hasattr(client, "scheduler_info"):
        return value
    # Sent once on purpose: distributed's warning about a large graph does not apply.
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "2GB"}):
        return client.persist(value)


def annotated_blocks(plan: RunPlan, config: AssignConfig, which=None) -> list:
    """One delayed :class:`~dask_assign.annotate.PartitionResult` per RT block of the plan
    (or of the blocks numbered ``which``)."""
    key, cal = plan.space_key, plan.calibration
    out = []
    for k in range(len(plan.blocks)) if which is None else which:
        block = plan.blocks[k]
        scored = dask.delayed(join_and_score)(block, key, config, cal)
        refined = dask.delayed(refine_partition)(scored, key, config, cal)
        out.append(dask.delayed(add_context)(refined, block, key, config, cal, plan.context))
    return out


def block_table(result, space, which: int):
    """Task: the assignments (``which=0``) or candidates (``1``) table of an annotated block,
    in the backend of its peaks."""
    return _to_backend_of(result.part, to_tables(result, space)[which])


def _to_backend_of(part, frame: pd.DataFrame):
    if isinstance(part, pd.DataFrame):
        return frame
    import cudf  # a cudf partition came in: hand one back

    return cudf.from_pandas(frame)


def _collect(frames: dd.DataFrame) -> pd.DataFrame:
    """Compute small per-partition summaries into one pandas frame."""
    total = frames.compute()
    return total.to_pandas() if hasattr(total, "to_pandas") else total


def calibrate(peaks: dd.DataFrame, space: SearchSpace, config: AssignConfig,
              space_key=None, sample: dd.DataFrame | None = None) -> Calibration:
    """The run's calibration: defaults from the data's ranges, then EM if ``config.calibrate``.

    Runs on whatever scheduler is active (a distributed client when one is connected);
    ``space_key`` is the space as :func:`on_workers` gives it (made here when omitted);
    ``sample`` is :func:`peak_sample` of ``peaks`` (made here when omitted). The drift search
    and the EM steps read the sample, not the table. The fit uses the generative scorer
    (:func:`~dask_assign.calibration.generative`), whatever model will score the run.
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
        fraction = min(1.0, calibration_module.MASS_SAMPLE / max(n_peaks, 1.0))
        edges = mz_edges(float(summary["mz_min"].min()), float(summary["mz_max"].max()))
        votes = _collect(em_peaks.map_partitions(mass_search, space_key, config, fraction,
                                                 edges, meta=dict(MASS_VOTE_COLUMNS)))
        votes = votes.groupby(["mz_bin", "err_bin"], as_index=False)["w"].sum()
        start = calibration_module.start_mass_curve(votes, start, config, edges)
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
    if calibration is None:
        calibration = calibrate(ddf, space, config, on_workers(space), sample)
    # Isotopologues closer than the run's mass spread are one peak to this instrument.
    resolved = space.resolved(max(config.isotope_merge_ppm, calibration.mass_sigma_ppm))
    space_key = on_workers(resolved)
    # The evidence is a sum over blocks, the same for any blocks: fitted on one block a
    # partition, so that the planner can count pairs as the run will score them.
    blocks = rt_blocks(ddf, config, n_blocks or ddf.npartitions)
    if evidence is None:  # fitted with the generative scorer, as the calibration is
        evidence = context_model(blocks, resolved, space_key, generative(config), calibration)
    scoring = with_isomer_rt(scoring_calibration(calibration, evidence, resolved, config),
                             resolved)
    if n_blocks is None:
        n_blocks = plan_blocks(ddf, space_key, config, scoring, sample)
        if n_blocks != len(blocks):
            blocks = rt_blocks(ddf, config, n_blocks)
    return RunPlan(fitted=calibration, calibration=scoring,
                   space=resolved, space_key=space_key, n_blocks=n_blocks, blocks=blocks,
                   evidence=evidence, context=evidence if config.context else None)


def as_dask_frame(peaks, config: AssignConfig) -> dd.DataFrame:
    """Peaks as a dask dataframe: a file is read and checked (:func:`~dask_assign.io.read_peaks`),
    a pandas frame is split and moved to the configured backend, a dask frame is kept."""
    if isinstance(peaks, dd.DataFrame):
        return peaks
    if isinstance(peaks, pd.DataFrame):
        ddf = dd.from_pandas(peaks, chunksize=config.partition_size, sort=False)
        backend = dask.config.get("dataframe.backend", "pandas")
        return ddf if backend == "pandas" else ddf.to_backend(backend)
    return read_peaks(peaks, rt_unit=config.rt_unit, partition_size=config.partition_size)


def assign(peaks, library, config: AssignConfig | None = None, client=None,
           calibration: Calibration | None = None) -> dd.DataFrame:
    """Annotate peaks against a library.

    Parameters
    ----------
    peaks : str, Path, pandas.DataFrame or dask.dataframe.DataFrame
        A peak table (file, or frame with ``peak_id``, ``mz``, ``rt`` in minutes,
        ``intensity``).
    library : str, Path or pandas.DataFrame
        A compound library (file, or frame from :func:`~dask_assign.io.read_library`).
    config : AssignConfig, optional
    client : distributed.Client, optional
        Where the calibration runs; the current client (or scheduler) when omitted.
    calibration : Calibration, optional
        A calibration to use as it is (no fitting).

    Returns
    -------
    dask.dataframe.DataFrame
        Lazy; one row per peak with the columns of ``ASSIGNMENT_DTYPES``, one partition per RT
        block, rows in RT order. Calibration and the context model (if on) have already been
        fitted, since the scores depend on them.

    Notes
    -----
    In a notebook: ``dask_assign.assign("peaks.csv", "library.csv").compute()``; the demo data
    is in ``dask_assign/data/demo``. ``tests/test_pipeline.py`` runs it on a LocalCluster.
    """
    config = config or AssignConfig()
    ddf = as_dask_frame(peaks, config)
    space = prepare_library(library, config)
    with client.as_current() if client is not None else nullcontext():
        plan = plan_run(ddf, space, config, calibration)
    return _table(annotated_blocks(plan, config), plan.space_key, 0, ASSIGNMENT_DTYPES, ddf)


def candidates(peaks, library, config: AssignConfig, calibration: Calibration,
               client=None) -> dd.DataFrame:
    """The long candidates table (lazy), for the same settings and calibration as
    :func:`assign`."""
    ddf = as_dask_frame(peaks, config)
    space = prepare_library(library, config)
    with client.as_current() if client is not None else nullcontext():
        plan = plan_run(ddf, space, config, calibration)
    return _table(annotated_blocks(plan, config), plan.space_key, 1, CANDIDATE_DTYPES, ddf)


def _table(results, space_key, which, dtypes, ddf) -> dd.DataFrame:
    meta = pd.DataFrame({k: pd.Series(dtype=v) for k, v in dtypes.items()})
    if not isinstance(ddf._meta, pd.DataFrame):
        meta = _to_backend_of(ddf._meta, meta)
    return dd.from_delayed([dask.delayed(block_table)(r, space_key, which) for r in results],
                           meta=meta, verify_meta=False)




def run(peaks, library, out, config: AssignConfig | None = None, client=None,
        fmt: str = "parquet", columns=None, sources: dict | None = None,
        resume: bool = False, progress: bool = False, overwrite: bool = False) -> dict:
    """Annotate a peak table and write the results to a folder, atomically.

    Parameters
    ----------
    peaks : str, Path or dask.dataframe.DataFrame
        Peak table file, or peaks already read with :func:`~dask_assign.io.read_peaks`.
    library : str, Path or SearchSpace
        Library file, or a search space from :func:`prepare_library`.
    out : str or Path
        Output folder: ``assignments.<fmt>``, ``candidates.<fmt>``, ``calibration.json``,
        ``manifest.json`` (it lists these files) and ``_SUCCESS`` (``fmt="mztab"``: the
        Parquet tables and ``results.mzTab``). Nothing is written there unless the run
        succeeds. It must be absent, empty, or (with ``overwrite``) an earlier result;
        anything else is refused before any work (:func:`dask_assign.output.claim`).
    config : AssignConfig, optional
    client : distributed.Client, optional
        The cluster to run on; the current client (or scheduler) when omitted.
    fmt : {"parquet", "csv", "mztab"}
    columns : dict, optional
        Explicit peak-table column mapping.
    sources : dict, optional
        ``{"peaks": path, "library": path}`` for the manifest when already-read inputs are
        given.
    resume : bool
        Continue an interrupted run into the same ``out`` with the same inputs and settings:
        its calibration and finished partitions are kept, the rest computed. The result is
        identical to an uninterrupted run.
    progress : bool
        Show distributed's progress bar while partitions are scored and written.
    overwrite : bool
        Replace an earlier result in ``out``: only the files it lists; other files in the
        folder are kept, byte for byte.

    Returns
    -------
    dict
        The run summary (also in ``manifest.json``).
    """
    from . import output

    if fmt not in output.FORMATS:
        raise ValueError(f"format must be one of {output.FORMATS}, not {fmt!r}")
    config = config or AssignConfig()
    t0 = time.perf_counter()
    sources = dict(sources or {})
    for key, value in (("peaks", peaks), ("library", library)):
        if isinstance(value, (str, Path)):
            sources.setdefault(key, value)
    space = library if isinstance(library, SearchSpace) else prepare_library(library, config)
    with output.claim(out, overwrite=overwrite):
        if isinstance(peaks, dd.DataFrame):
            return _annotate_to_folder(peaks, space, out, config, client, fmt, sources, resume,
                                       t0, progress)
        workdir = output.input_path(out)
        try:
            ddf = read_peaks(peaks, columns=columns, rt_unit=config.rt_unit,
                             partition_size=config.partition_size, workdir=workdir)
            return _annotate_to_folder(ddf, space, out, config, client, fmt, sources, resume,
                                       t0, progress)
        finally:
            output.remove_own_folder(workdir)


def package_versions() -> dict:
    """Versions of the packages a result depends on, for the manifest."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("dask-assign", "dask", "distributed", "pandas", "numpy", "pyarrow", "torch",
                 "molmass", "cudf-cu12", "dask-cuda"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def write_graph(plan: RunPlan, config: AssignConfig, staging, fmt):
    """One chain of named tasks per RT block: ``join_and_score`` (join and first pass) ->
    ``refine_partition`` (wider second pass) -> ``add_context`` -> ``write_partition``.
    Blocks that an interrupted run finished are not computed again: their saved summaries
    stand in.

    Returns
    -------
    summaries : list of dask.delayed.Delayed
        One-row summary frames, in partition order.
    resumed : int
        Partitions reused.
    """
    from . import output

    summaries, resumed = [], 0
    todo = []
    for i in range(len(plan.blocks)):
        done = output.finished_summary(staging, i)
        if done is not None:
            summaries.append(dask.delayed(done))
            resumed += 1
        else:
            summaries.append(None)
            todo.append(i)
    results = annotated_blocks(plan, config, todo)
    for i, result in zip(todo, results, strict=True):
        summaries[i] = dask.delayed(output.write_partition)(result, plan.space_key,
                                                            str(staging), fmt, i)
    return summaries, resumed


def _annotate_to_folder(ddf, space, out, config, client, fmt, sources, resume, t0,
                        progress=False) -> dict:
    """Calibrate (or reuse a resumed run's calibration), write every partition, commit."""
    from . import __version__, output

    inputs = {k: {"path": str(Path(v).resolve()), "sha256": output.sha256(v)}
              for k, v in sources.items() if isinstance(v, (str, Path))}
    fingerprint = {"inputs": {k: v["sha256"] for k, v in inputs.items()},
                   "config": json.loads(config.to_json()), "format": fmt,
                   "partitions": ddf.npartitions}
    staging, resumed = output.open_staging(Path(out), fingerprint, resume)
    saved_plan, saved_model = staging / "blocks.json", staging / "context.json"
    with client.as_current() if client is not None else nullcontext():
        # What the plan fitted is saved: a resumed run reuses it (and so its blocks).
        known = json.loads(saved_plan.read_text()) if resumed and saved_plan.exists() else {}
        plan = plan_run(
            ddf, space, config,
            Calibration.from_dict(known["fitted"]) if "fitted" in known else None,
            known.get("blocks"),
            ContextModel.from_dict(json.loads(saved_model.read_text()))
            if resumed and saved_model.exists() else None)
        output.write_json(saved_plan, {"blocks": plan.n_blocks, "fitted": plan.fitted.to_dict()})
        output.write_json(saved_model, plan.evidence.to_dict())
        output.write_json(staging / "calibration.json", plan.calibration.to_dict())
        t_cal = time.perf_counter()
        tables = output.TABLE_FORMAT[fmt]
        summaries, already = write_graph(plan, config, staging, tables)
        if client is not None:
            futures = client.compute(summaries)
            if progress:
                from distributed import progress as progress_bar

                progress_bar(futures)  # a text bar in a terminal, a widget in a notebook
            written = pd.concat(client.gather(futures), ignore_index=True)
        else:
            written = pd.concat(dask.compute(*summaries), ignore_index=True)
        # The mzTab reports each peak's intensity as read.
        intensity = _collect(ddf[["peak_id", "intensity"]]) if fmt == "mztab" else None
    output.combine_parts(staging, tables)
    if fmt == "mztab":
        from .mztab import write_mztab

        write_mztab(staging, intensity, plan.space, config, inputs, Path(out).name)
    t_end = time.perf_counter()
    n = int(written["peaks"].sum())
    assigned = int(written["assigned"].sum())
    summary = {
        "peaks": n, "assigned": assigned, "not_in_library": n - assigned,
        "mean_confidence": float(written["prob_sum"].sum() / max(n, 1)),
        "refined": int(written["refined"].sum()),
        "context_changed": int(written["context_changed"].sum()),
        "overflow": int(written["overflow"].sum()),
        "candidates": int(written["candidates"].sum()),
        "n_candidates_p99": float(written["n_cand_p99"].max()),
        "partitions": int(len(written)), "resumed_partitions": already,
        "ions": int(len(plan.space.mz)),
        "seconds": {"calibrate": t_cal - t0, "score_and_write": t_end - t_cal,
                    "total": t_end - t0},
    }
    manifest = {
        "dask_assign_version": __version__, "versions": package_versions(), "inputs": inputs,
        "config": json.loads(config.to_json()), "calibration": plan.calibration.to_dict(),
        "context": plan.evidence.to_dict(),
        "format": fmt, "summary": summary,
    }
    output.commit(staging, Path(out), manifest)
    return summary
