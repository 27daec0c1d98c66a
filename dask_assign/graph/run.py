"""The dask graph: read -> summarise -> sample -> calibrate (EM) -> plan RT blocks -> score
-> refine -> context -> write.

Peaks are a dask DataFrame (pandas or cudf partitions); the library is small and becomes one
:class:`~dask_assign.filtering.space.SearchSpace` that every task shares (one graph key, so each
worker receives it once). After calibration the peaks are regrouped into blocks of retention
time, as many as memory asks for, each with a halo of its neighbours ``max_coelution`` wide,
so that the context pass sees every co-eluting partner of its peaks: results do not depend on
the number of blocks. Task names say what they do, so the dashboard's task stream reads as
the pipeline: ``read_parquet``, ``summarize_peaks``, ``sample_peaks``, ``drift_search``,
``em_fit`` (or ``em_step``), ``kept_pairs``, ``rt_sketch``, ``split_by_rt``, ``rt_block``,
``context_stats``, ``join_and_score``, ``refine_partition``, ``add_context``,
``write_partition``.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import dask
import dask.dataframe as dd
import pandas as pd

from dask_assign.config import AssignConfig, Calibration
from dask_assign.context.model import ContextModel
from dask_assign.files import FORMATS, claim, input_path, remove_own_folder, sha256, write_json
from dask_assign.filtering.space import prepare_library
from dask_assign.graph.plan import RunPlan, _collect, annotated_blocks, plan_run
from dask_assign.graph.tasks import _to_backend_of, block_table
from dask_assign.io.peaks import read_peaks
from dask_assign.output.tables import (
    TABLE_FORMAT,
    combine_parts,
    commit,
    finished_summary,
    open_staging,
    write_partition,
)
from dask_assign.scoring.tables import ASSIGNMENT_DTYPES, CANDIDATE_DTYPES

log = logging.getLogger(__name__)


def as_dask_frame(peaks, config: AssignConfig) -> dd.DataFrame:
    """Peaks as a dask dataframe: a file is read and checked
    (:func:`~dask_assign.io.peaks.read_peaks`),
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
    library : str, Path, pandas.DataFrame or SearchSpace
        A compound library (file, or frame from :func:`~dask_assign.io.library.read_library`),
        or its search space from :func:`prepare_library` (built once for many calls; with
        ``cache=`` it is kept on disk for the next session too).
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
    is in ``dask_assign/data/demo``. ``tests/graph/test_run.py`` runs it on a LocalCluster.
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
        Peak table file, or peaks already read with :func:`~dask_assign.io.peaks.read_peaks`.
    library : str, Path or SearchSpace
        Library file, or a search space from :func:`prepare_library` (which can keep it in
        the ion cache: :mod:`~dask_assign.filtering.ion_cache`).
    out : str or Path
        Output folder: ``assignments.<fmt>``, ``candidates.<fmt>``, ``calibration.json``,
        ``manifest.json`` (it lists these files) and ``_SUCCESS`` (``fmt="mztab"``: the
        Parquet tables and ``results.mzTab``; ``fmt="parquet-dataset"``: each table a folder
        of the workers' part files, ``assignments.parquet/part.00000.parquet``, ...).
        Nothing is written there unless the run
        succeeds. It must be absent, empty, or (with ``overwrite``) an earlier result;
        anything else is refused before any work (:func:`dask_assign.files.claim`).
    config : AssignConfig, optional
    client : distributed.Client, optional
        The cluster to run on; the current client (or scheduler) when omitted.
    fmt : {"parquet", "csv", "mztab", "parquet-dataset"}
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

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    config = config or AssignConfig()
    t0 = time.perf_counter()
    sources = dict(sources or {})
    for key, value in (("peaks", peaks), ("library", library)):
        if isinstance(value, (str, Path)):
            sources.setdefault(key, value)
    space = prepare_library(library, config)
    with claim(out, overwrite=overwrite):
        if isinstance(peaks, dd.DataFrame):
            return _annotate_to_folder(peaks, space, out, config, client, fmt, sources, resume,
                                       t0, progress)
        workdir = input_path(out)
        try:
            ddf = read_peaks(peaks, columns=columns, rt_unit=config.rt_unit,
                             partition_size=config.partition_size, workdir=workdir)
            return _annotate_to_folder(ddf, space, out, config, client, fmt, sources, resume,
                                       t0, progress)
        finally:
            remove_own_folder(workdir)


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

    summaries, resumed = [], 0
    todo = []
    for i in range(len(plan.blocks)):
        done = finished_summary(staging, i)
        if done is not None:
            summaries.append(dask.delayed(done))
            resumed += 1
        else:
            summaries.append(None)
            todo.append(i)
    results = annotated_blocks(plan, config, todo)
    for i, result in zip(todo, results, strict=True):
        summaries[i] = dask.delayed(write_partition)(result, plan.space_key,
                                                            str(staging), fmt, i)
    return summaries, resumed


def _annotate_to_folder(ddf, space, out, config, client, fmt, sources, resume, t0,
                        progress=False) -> dict:
    """Calibrate (or reuse a resumed run's calibration), write every partition, commit."""
    from dask_assign import __version__

    inputs = {k: {"path": str(Path(v).resolve()), "sha256": sha256(v)}
              for k, v in sources.items() if isinstance(v, (str, Path))}
    fingerprint = {"inputs": {k: v["sha256"] for k, v in inputs.items()},
                   "config": json.loads(config.to_json()), "format": fmt,
                   "partitions": ddf.npartitions}
    staging, resumed = open_staging(Path(out), fingerprint, resume)
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
        write_json(saved_plan, {"blocks": plan.n_blocks, "fitted": plan.fitted.to_dict()})
        write_json(saved_model, plan.evidence.to_dict())
        write_json(staging / "calibration.json", plan.calibration.to_dict())
        t_cal = time.perf_counter()
        tables = TABLE_FORMAT[fmt]
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
    t_written = time.perf_counter()
    combine_parts(staging, fmt)
    t_combined = time.perf_counter()
    if fmt == "mztab":
        from dask_assign.output.mztab import write_mztab

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
                    "combine": t_combined - t_written, "total": t_end - t0},
    }
    manifest = {
        "dask_assign_version": __version__, "versions": package_versions(), "inputs": inputs,
        "config": json.loads(config.to_json()), "calibration": plan.calibration.to_dict(),
        "context": plan.evidence.to_dict(),
        "format": fmt, "summary": summary,
    }
    commit(staging, Path(out), manifest)
    return summary
