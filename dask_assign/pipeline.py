"""The dask graph: read -> summarise -> calibrate (EM) -> score -> refine -> write.

Peaks are a dask DataFrame (pandas or cudf partitions); the library is small and becomes one
:class:`~dask_assign.annotate.SearchSpace` that every task shares (one graph key, so each
worker receives it once). Task names say what they do, so the dashboard's task stream reads
as the pipeline: ``read_parquet``, ``summarize_peaks``, ``drift_search``, ``em_step``,
``join_and_score``, ``refine_partition``, ``write_partition``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from .adducts import select_adducts
from .annotate import (
    ASSIGNMENT_DTYPES,
    CANDIDATE_DTYPES,
    SearchSpace,
    annotate_partition,
    first_pass,
    second_pass,
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
    peak_summary,
    run_context,
    sampled,
)
from .config import AssignConfig, Calibration
from .io import read_library, read_peaks
from .ions import build_ions

log = logging.getLogger(__name__)


def prepare_library(library, config: AssignConfig) -> SearchSpace:
    """Library (path or frame from :func:`~dask_assign.io.read_library`) -> search space."""
    if not isinstance(library, pd.DataFrame):
        library = read_library(library, rt_unit=config.library_rt_unit)
    adducts = select_adducts(config.mode, config.adducts, config.adduct_table)
    table = build_ions(library, adducts, config.max_isotope)
    log.info("library: %d compounds, %d ions (%d adducts, up to 13C%d)", len(library),
             len(table), len(adducts), config.max_isotope)
    return SearchSpace.build(table, config.ppm * config.refine_widen)


def summarize_peaks(part):
    """Task: sums and ranges of one partition (for the run context)."""
    return peak_summary(part)


def drift_search(part, space, config, fraction):
    """Task: mass-only votes of one partition for the library-to-run RT map."""
    return drift_votes(part, space, config, fraction)


def sample_peaks(part, fraction):
    """Task: the peaks of a partition that calibration looks at (a sample by peak id)."""
    return part[sampled(part, fraction)]


def em_step(part, space, config, calibration):
    """Task: the E-step of calibration on one partition."""
    return em_statistics(part, space, config, calibration)


def join_and_score(part, space, config, calibration):
    """Task: the candidate join and first-pass scores of one partition."""
    return first_pass(part, space, config, calibration)


def refine_partition(result, space, config, calibration):
    """Task: the second pass over the low-confidence peaks of one partition."""
    return second_pass(result, space, config, calibration)


def assign_partition(part, space, config, calibration):
    """Task: join, score and refine one partition -> its assignments (for :func:`assign`)."""
    assignments, _ = annotate_partition(part, space, config, calibration)
    return _to_backend_of(part, assignments)


def candidates_partition(part, space, config, calibration):
    """Task: as :func:`assign_partition`, the long candidates table."""
    _, candidates = annotate_partition(part, space, config, calibration)
    return _to_backend_of(part, candidates)


def _to_backend_of(part, frame: pd.DataFrame):
    if isinstance(part, pd.DataFrame):
        return frame
    import cudf  # a cudf partition came in: hand one back

    return cudf.from_pandas(frame)


def _collect(frames: dd.DataFrame) -> pd.DataFrame:
    """Compute small per-partition summaries into one pandas frame."""
    total = frames.compute()
    return total.to_pandas() if hasattr(total, "to_pandas") else total


def calibrate(peaks: dd.DataFrame, space: SearchSpace, config: AssignConfig) -> Calibration:
    """The run's calibration: defaults from the data's ranges, then EM if ``config.calibrate``.

    Runs on whatever scheduler is active (a distributed client when one is connected).
    """
    space_key = dask.delayed(space, pure=True)
    summary = _collect(peaks.map_partitions(summarize_peaks,
                                        meta={c: "float64" for c in SUMMARY_COLUMNS}))
    start = run_context(summary, space, config)
    if not config.calibrate:
        return start
    if config.max_drift > 0 and np.isfinite(space.rt).any():
        fraction = min(1.0, DRIFT_SAMPLE / max(float(summary["n"].sum()), 1.0))
        votes = _collect(peaks.map_partitions(drift_search, space_key, config, fraction,
                                              meta=dict(VOTE_COLUMNS)))
        votes = votes.groupby(["slope", "shift"], as_index=False)["w"].sum()
        found = drift_from_votes(votes, config)
        if found is not None:
            # Start EM from the voted map, with an RT spread as wide as one vote bin allows.
            start = start.replace(rt_intercept=found[0], rt_slope=found[1],
                                  rt_sigma=max(start.rt_sigma, 2 * DRIFT_BIN))
            log.info("RT drift search: run RT = %.3f + %.3f x library RT", *found)

    fraction = min(1.0, EM_SAMPLE / max(float(summary["n"].sum()), 1.0))
    # The EM steps share one sample of the peaks, read and kept in memory once.
    em_peaks = peaks if fraction >= 1 else peaks.map_partitions(
        sample_peaks, fraction, meta=peaks._meta).persist()

    def stats_of(calibration):
        parts = em_peaks.map_partitions(em_step, space_key, config, calibration,
                                        meta={c: "float64" for c in em_columns(space)})
        return _collect(parts).sum().to_dict()

    return fit_calibration(stats_of, start, config, space)


def _as_ddf(peaks, config: AssignConfig) -> dd.DataFrame:
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
        Lazy; one row per peak with the columns of ``ASSIGNMENT_DTYPES``. Calibration (if on)
        has already run, since the scores depend on it.

    Notes
    -----
    In a notebook: ``dask_assign.assign("peaks.csv", "library.csv").compute()``; the demo data
    is in ``dask_assign/data/demo``. ``tests/test_pipeline.py`` runs it on a LocalCluster.
    """
    config = config or AssignConfig()
    ddf = _as_ddf(peaks, config)
    space = prepare_library(library, config)
    if calibration is None:
        with client.as_current() if client is not None else nullcontext():
            calibration = calibrate(ddf, space, config)
    return ddf.map_partitions(assign_partition, dask.delayed(space, pure=True), config,
                              calibration, meta=dict(ASSIGNMENT_DTYPES))


def candidates(peaks, library, config: AssignConfig, calibration: Calibration) -> dd.DataFrame:
    """The long candidates table (lazy), for the same settings and calibration as
    :func:`assign`."""
    ddf = _as_ddf(peaks, config)
    space = prepare_library(library, config)
    return ddf.map_partitions(candidates_partition, dask.delayed(space, pure=True), config,
                              calibration, meta=dict(CANDIDATE_DTYPES))




def run(peaks, library, out, config: AssignConfig | None = None, client=None,
        fmt: str = "parquet", columns=None, sources: dict | None = None,
        resume: bool = False, progress: bool = False) -> dict:
    """Annotate a peak table and write the results to a folder, atomically.

    Parameters
    ----------
    peaks : str, Path or dask.dataframe.DataFrame
        Peak table file, or peaks already read with :func:`~dask_assign.io.read_peaks`.
    library : str, Path or SearchSpace
        Library file, or a search space from :func:`prepare_library`.
    out : str or Path
        Output folder: ``assignments.<fmt>``, ``candidates.<fmt>``, ``calibration.json``,
        ``manifest.json`` and ``_SUCCESS``. Nothing is written there unless the run succeeds.
    config : AssignConfig, optional
    client : distributed.Client, optional
        The cluster to run on; the current client (or scheduler) when omitted.
    fmt : {"parquet", "csv"}
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
    if isinstance(peaks, dd.DataFrame):
        return _annotate_to_folder(peaks, space, out, config, client, fmt, sources, resume, t0,
                                   progress)
    workdir = output.input_path(out)
    try:
        ddf = read_peaks(peaks, columns=columns, rt_unit=config.rt_unit,
                         partition_size=config.partition_size, workdir=workdir)
        return _annotate_to_folder(ddf, space, out, config, client, fmt, sources, resume, t0,
                                   progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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


def write_graph(ddf, space, config, calibration, staging, fmt):
    """One chain of named tasks per partition: ``join_and_score`` (join and first pass) ->
    ``refine_partition`` (second pass) -> ``write_partition``. Partitions that an interrupted
    run finished are not computed again: their saved summaries stand in.

    Returns
    -------
    summaries : list of dask.delayed.Delayed
        One-row summary frames, in partition order.
    resumed : int
        Partitions reused.
    """
    from . import output

    space_key = dask.delayed(space, pure=True)
    summaries, resumed = [], 0
    for i, part in enumerate(ddf.to_delayed()):
        done = output.finished_summary(staging, i)
        if done is not None:
            summaries.append(dask.delayed(done))
            resumed += 1
            continue
        scored = dask.delayed(join_and_score)(part, space_key, config, calibration)
        refined = dask.delayed(refine_partition)(scored, space_key, config, calibration)
        summaries.append(dask.delayed(output.write_partition)(refined, space_key, str(staging),
                                                              fmt, i))
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
    saved = staging / "calibration.json"
    with client.as_current() if client is not None else nullcontext():
        if resumed and saved.exists():
            calibration = Calibration.from_dict(json.loads(saved.read_text()))
        else:
            calibration = calibrate(ddf, space, config)
            output.write_json(saved, calibration.to_dict())
        t_cal = time.perf_counter()
        summaries, already = write_graph(ddf, space, config, calibration, staging, fmt)
        if client is not None:
            futures = client.compute(summaries)
            if progress:
                from distributed import progress as progress_bar

                progress_bar(futures)  # a text bar in a terminal, a widget in a notebook
            written = pd.concat(client.gather(futures), ignore_index=True)
        else:
            written = pd.concat(dask.compute(*summaries), ignore_index=True)
    output.combine_parts(staging, fmt)
    t_end = time.perf_counter()
    n = int(written["peaks"].sum())
    assigned = int(written["assigned"].sum())
    summary = {
        "peaks": n, "assigned": assigned, "not_in_library": n - assigned,
        "mean_confidence": float(written["prob_sum"].sum() / max(n, 1)),
        "refined": int(written["refined"].sum()),
        "overflow": int(written["overflow"].sum()),
        "candidates": int(written["candidates"].sum()),
        "n_candidates_p99": float(written["n_cand_p99"].max()),
        "partitions": int(len(written)), "resumed_partitions": already,
        "ions": int(len(space.mz)),
        "seconds": {"calibrate": t_cal - t0, "score_and_write": t_end - t_cal,
                    "total": t_end - t0},
    }
    manifest = {
        "dask_assign_version": __version__, "versions": package_versions(), "inputs": inputs,
        "config": json.loads(config.to_json()), "calibration": calibration.to_dict(),
        "format": fmt, "summary": summary,
    }
    output.commit(staging, Path(out), manifest)
    return summary
