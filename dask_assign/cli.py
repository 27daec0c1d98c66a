"""Command line: ``dask-assign run`` (annotate), ``submit`` (a job spec), ``train`` (a scorer
model), ``evaluate``, ``report`` and ``demo`` (the shipped demo)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from dask_assign.config import settings
from dask_assign.files import FORMATS

from . import DEMO_DATA
from .errors import InputError

log = logging.getLogger("dask_assign")



def _columns(text):
    if not text:
        return None
    try:
        return dict(item.split("=", 1) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            "--columns takes NAME=COLUMN,... e.g. mz=MZ,rt=RT") from None


def _comma_list(text):
    return tuple(a.strip() for a in text.split(",")) if text else None


def _add_settings(p: argparse.ArgumentParser):
    """One option per :class:`~dask_assign.config.AssignConfig` field, made from the field:
    its name (``--k-max``), default, choices and help (:func:`~dask_assign.config.settings`)."""
    for s in settings():
        if s.kind is bool:
            p.add_argument(s.flag, action=argparse.BooleanOptionalAction, default=s.default,
                           help=f"{s.help} (default: {s.default})")
        elif s.kind is tuple:
            p.add_argument(s.flag, type=_comma_list, default=s.default, metavar="NAME,...",
                           help=f"{s.help} (default: {s.default})")
        else:
            p.add_argument(s.flag, type=s.kind, default=s.default, choices=s.choices,
                           help=f"{s.help} (default: {s.default})")


def _add_run_options(p: argparse.ArgumentParser):
    settings_group = p.add_argument_group(
        "settings", "the fields of AssignConfig (the same keys under 'settings:' in a job spec)")
    _add_settings(settings_group)
    p.add_argument("--columns", type=_columns, help="peak columns, e.g. mz=MZ,rt=RT,peak_id=ID")
    p.add_argument("--format", choices=FORMATS, default="parquet",
                   help="tables as Parquet or CSV; mztab: an mzTab-M 2.0 file beside the "
                        "Parquet tables; parquet-dataset: each table a folder of the "
                        "workers' part files (no combine on the client: large runs)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (default: "
                   "$DASK_SCHEDULER_ADDRESS, else a new local cluster)")
    p.add_argument("--workers", type=int, help="worker processes of the local cluster (default: "
                   "one per core, at most 4; small runs: one in-process worker)")
    _add_dashboard_option(p)
    _add_ion_cache_option(p)
    p.add_argument("--gpu", action="store_true",
                   help="run on the GPUs: a dask-cuda LocalCUDACluster (one worker per GPU), "
                        "CUDA kernels (--device cuda), cudf partitions where RAPIDS is "
                        "installed")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run with the same inputs and settings")
    _add_overwrite_option(p)
    _add_tls_options(p)
    p.add_argument("-v", "--verbose", action="store_true")


def _add_ion_cache_option(p):
    p.add_argument("--ion-cache", metavar="DIR",
                   help="folder where a library's ion table is kept once built, for the next "
                        "run with the same library file and table settings (default: "
                        "$DASK_ASSIGN_CACHE_DIR, else $XDG_CACHE_HOME/dask-assign or "
                        "~/.cache/dask-assign; 'off': build it every run)")


def _add_dashboard_option(p):
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction,
                   help="serve the Dask dashboard of the local cluster (default: yes, but for "
                        "a table under 1 MiB, annotated in seconds in this process)")


def _add_overwrite_option(p):
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier dask-assign output in --out: only the files it "
                        "wrote there; files of yours in the folder are kept")


def _add_tls_options(p):
    p.add_argument("--tls-ca-file", help="CA certificate (PEM) for TLS to the cluster")
    p.add_argument("--tls-cert", help="client certificate (PEM)")
    p.add_argument("--tls-key", help="client private key (PEM)")


def _config(args):
    from .config import DEFAULT_MODEL, NO_MODEL, AssignConfig, ScorerParams, SettingError

    kwargs = {s.name: getattr(args, s.name) for s in settings()}
    model = kwargs.pop("model")
    if model in (DEFAULT_MODEL, NO_MODEL):  # checked without importing torch
        kwargs["scorer"] = ScorerParams()
    else:
        from dask_assign.scoring.model import scorer_params

        kwargs["scorer"] = scorer_params(model)
    first = next(s for s in settings() if s.name == "k_first").default
    if kwargs["k_first"] == first:  # not given: the first pass keeps at most k_max too
        kwargs["k_first"] = min(first, kwargs["k_max"])
    if getattr(args, "gpu", False):
        kwargs["device"] = "cuda"
    try:
        return AssignConfig(**kwargs)
    except SettingError as err:
        raise InputError(_flag(args, err.name), err.reason) from None


def _flag(args, name: str) -> str:
    """The option that sets the field ``name``: options are named after the fields they set
    (``k_max`` -> ``--k-max``)."""
    return "--" + name.replace("_", "-") if name in vars(args) else f"setting {name!r}"


def _check_workers(workers):
    if workers is not None and workers < 1:
        raise InputError("--workers", f"must be at least 1, not {workers}")


def _readable(path):
    """Refuse, naming it, an input file that is missing, a folder or unreadable."""
    from .errors import reading

    with reading(path):
        open(path, "rb").close()


def _run(args, peaks, library, out, config=None, columns=None, fmt=None, scheduler=None,
         workers=None) -> dict:
    from dask_assign.files import claim

    # Settings, inputs and the output folder are checked before any cluster starts.
    config = config or _config(args)
    _check_workers(args.workers)
    with claim(out, overwrite=args.overwrite):
        return _run_claimed(args, peaks, library, out, config, columns, fmt, scheduler, workers)


def _run_claimed(args, peaks, library, out, config, columns, fmt, scheduler, workers) -> dict:
    from .startup import frozen_imports

    with frozen_imports():
        from dask_assign.files import input_path, remove_own_folder
        from dask_assign.filtering.ion_cache import cache_dir
        from dask_assign.filtering.space import prepare_library
        from dask_assign.graph.cluster import connect, serves_dashboard
        from dask_assign.graph.run import run
        from dask_assign.io.peaks import read_peaks

    columns = columns if columns is not None else args.columns
    space = prepare_library(library, config, cache=cache_dir(args.ion_cache))
    gpu = config.device.startswith("cuda")
    if gpu:
        from dask_assign.graph.cluster import require_cuda

        require_cuda()  # before any work
    workdir = input_path(out)
    try:
        ddf = read_peaks(peaks, columns=columns, rt_unit=config.rt_unit,
                         partition_size=config.partition_size, workdir=workdir)
        if gpu and _cudf_usable():
            ddf = ddf.to_backend("cudf")  # else pandas partitions, moved to the GPU by torch
        # The dask-kubernetes operator tells a DaskJob pod its scheduler this way.
        address = args.scheduler or scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
        n_workers = args.workers or workers
        local = not (address or gpu or n_workers)
        size = _input_bytes(peaks)
        dashboard = args.dashboard if args.dashboard is not None \
            else not (local and size < DASHBOARD_BYTES)
        client, cluster = connect(address, n_workers, security=_security(args),
                                  gpu=gpu and not address,
                                  processes=not (local and size < SMALL_RUN_BYTES),
                                  dashboard=dashboard)
        link = client.dashboard_link if serves_dashboard(address, gpu, dashboard) \
            else "off (a small run; --dashboard serves it)"
        try:
            print(f"dashboard: {link}", flush=True)
            summary = run(ddf, space, out, config, client=client, fmt=fmt or args.format,
                          sources={"peaks": peaks, "library": library}, resume=args.resume,
                          progress=sys.stdout.isatty() and not getattr(args, "quiet", False),
                          overwrite=args.overwrite)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    finally:
        remove_own_folder(workdir)
    summary["dashboard"] = link
    return summary


#: Peak tables smaller than this (bytes on disk; about 250k peaks of CSV) run on a cluster in
#: the client's process unless ``--workers`` asks for processes: starting worker processes
#: (each imports torch) takes longer than annotating them (benchmarks/NOTES.md).
SMALL_RUN_BYTES = 16 * 2**20


#: Peak tables smaller than this (about 15k peaks of CSV) run without the dashboard unless
#: ``--dashboard`` asks for it: they are annotated in a few seconds, and importing the
#: dashboard's bokeh takes about 0.5 s of them (benchmarks/NOTES.md).
DASHBOARD_BYTES = 2**20


def _input_bytes(path) -> int:
    path = Path(path)
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file())


def _cudf_usable() -> bool:
    """Whether cudf imports (checked only once a CUDA device was found)."""
    try:
        import cudf  # noqa: F401
        import dask_cudf  # noqa: F401
    except ImportError:
        return False
    return True


def _security(args):
    """TLS settings from --tls-* (all three together), else None (dask's configuration)."""
    files = (getattr(args, "tls_ca_file", None), getattr(args, "tls_cert", None),
             getattr(args, "tls_key", None))
    if not any(files):
        return None
    if not all(files):
        raise ValueError("--tls-ca-file, --tls-cert and --tls-key go together")
    from distributed.security import Security

    return Security(tls_ca_file=files[0], tls_client_cert=files[1], tls_client_key=files[2],
                    tls_worker_cert=files[1], tls_worker_key=files[2],
                    tls_scheduler_cert=files[1], tls_scheduler_key=files[2],
                    require_encryption=True)


def _print_summary(summary: dict, out):
    print(f"peaks            {summary['peaks']}")
    print(f"assigned         {summary['assigned']}")
    print(f"not in library   {summary['not_in_library']}")
    print(f"mean confidence  {summary['mean_confidence']:.3f}")
    print(f"refined          {summary['refined']}   overflow {summary['overflow']}")
    print(f"context changed  {summary.get('context_changed', 0)}")
    print(f"time             {summary['seconds']['total']:.1f} s")
    print(f"dashboard        {summary['dashboard']}")
    print(f"output           {out}")


def cmd_run(args) -> int:
    summary = _run(args, args.peaks, args.library, args.out)
    _print_summary(summary, args.out)
    return 0


def cmd_submit(args) -> int:
    from dask_assign.graph.jobs import load_job

    job = load_job(args.job, allow=args.allow or ())
    summary = _run(args, job.peaks, job.library, job.out, config=job.config,
                   columns=job.columns, fmt=job.format, scheduler=job.scheduler,
                   workers=job.workers)
    _print_summary(summary, job.out)
    return 0


def cmd_demo(args) -> int:
    from dask_assign.files import claim

    with claim(args.out, overwrite=args.overwrite):  # the run and its report, together
        return _demo(args)


def _demo(args) -> int:
    import pandas as pd

    from dask_assign.report.evaluate import evaluate

    from .report import read_table

    out = Path(args.out)
    t0 = time.perf_counter()
    summary = _run(args, DEMO_DATA / "peaks.csv", DEMO_DATA / "library.csv", out)
    print("dask-assign demo: RepoRT 0392 (reversed phase, positive mode; CC BY-SA 4.0)")
    _print_summary(summary, out)
    result = read_table(out, "assignments")
    scores = evaluate(result, pd.read_csv(DEMO_DATA / "truth.csv", dtype=str))
    print("accuracy against the shipped truth:")
    print("  " + "  ".join(f"{k}={v}" for k, v in scores.items()))
    print(f"wall time        {time.perf_counter() - t0:.1f} s (cluster start included)")
    from .report import write_report

    page = write_report(out, truth=DEMO_DATA / "truth.csv").resolve()
    print(f"report page      {page}")
    print(f"                 open it in a browser: {page.as_uri()} (it needs no network)")
    return 0


def _training_sets(args) -> list[tuple]:
    """(peaks, library, truth, name) of each labeled run named on the command line."""
    sets = []
    for folder in args.sets or ():
        d = Path(folder)
        files = {}
        for kind in ("peaks", "library", "truth"):
            found = [d / f"{kind}{ext}" for ext in (".csv", ".tsv", ".parquet")
                     if (d / f"{kind}{ext}").exists()]
            if not found:
                raise InputError(str(d), f"no {kind}.csv, {kind}.tsv or {kind}.parquet in the "
                                 "training set folder")
            files[kind] = found[0]
        sets.append((files["peaks"], files["library"], files["truth"], d.name))
    triples = [args.peaks or [], args.library or [], args.truth or []]
    if len({len(x) for x in triples}) != 1:
        raise ValueError("--peaks, --library and --truth come in groups of three")
    sets += [(p, lib, t, Path(p).stem) for p, lib, t in zip(*triples, strict=True)]
    if not sets:
        raise ValueError("no training data: give --set DIR or --peaks/--library/--truth")
    return sets


def cmd_train(args) -> int:
    from dask_assign.files import claim
    from dask_assign.scoring.model import MODEL

    config = _config(args)
    sets = _training_sets(args)
    _check_workers(args.workers)
    with claim(args.out, MODEL, overwrite=args.overwrite):  # before any work
        return _train(args, config, sets)


def _train(args, config, sets) -> int:
    import datetime

    from dask_assign.filtering.ion_cache import cache_dir
    from dask_assign.filtering.space import prepare_library
    from dask_assign.graph.cluster import connect, serves_dashboard
    from dask_assign.scoring.model import MODEL_FIELDS, save_model
    from dask_assign.training.fit import label_run, train

    from . import __version__

    address = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    dashboard = args.dashboard is not False
    client, cluster = connect(address, args.workers, security=_security(args),
                              dashboard=dashboard)
    try:
        served = serves_dashboard(address, False, dashboard)
        print(f"dashboard: {client.dashboard_link if served else 'off'}", flush=True)
        cache = cache_dir(args.ion_cache)
        with client.as_current():
            runs = [label_run(p, prepare_library(lib, config, cache=cache), t, config, name)
                    for p, lib, t, name in sets]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    params, report = train(runs, start=config.scorer)
    info = {"trained_on": [{"name": n, "peaks": str(p), "library": str(lib), "truth": str(t)}
                           for p, lib, t, n in sets],
            "report": report, "created": datetime.datetime.now(datetime.UTC).isoformat(),
            "dask_assign": __version__, "settings": json.loads(config.to_json())}
    path = save_model(params, args.out, info, overwrite=args.overwrite)
    print(f"{'run':<24}{'peaks':>8}{'log loss before':>17}{'after':>9}")
    for name, r in report["runs"].items():
        print(f"{name:<24}{r['peaks']:>8}{r['log_loss_before']:>17.4f}"
              f"{r['log_loss_after']:>9.4f}")
    print(f"{'all':<24}{report['peaks']:>8}{report['log_loss_before']:>17.4f}"
          f"{report['log_loss_after']:>9.4f}")
    print("weights: " + ", ".join(f"{k}={getattr(params, k):.4g}" for k in MODEL_FIELDS))
    print(f"model: {path}")
    return 0


def cmd_report(args) -> int:
    from .report import MAX_POINTS, ReviewRule, write_report

    rule = ReviewRule(*args.review) if args.review else ReviewRule()  # checked before any work
    max_points = MAX_POINTS if args.max_points is None else args.max_points
    if max_points < 1:
        raise ValueError(f"--max-points: must be at least 1, not {max_points}")
    if args.truth:
        _readable(args.truth)
    path = write_report(args.result, args.out, args.truth, rule=rule, max_points=max_points)
    print(f"report: {path}")
    return 0


def cmd_evaluate(args) -> int:
    import pandas as pd

    from dask_assign.files import check_own_file
    from dask_assign.report.evaluate import breakdown, evaluate, reliability_png

    from .report import read_table

    plot = check_own_file(Path(args.plot) if args.plot else Path(args.result) / "reliability.png")
    _readable(args.truth)
    result = read_table(Path(args.result), "assignments")
    truth = pd.read_csv(args.truth, dtype=str)
    scores = evaluate(result, truth)
    parts = breakdown(result, truth)
    reliability_png(result, truth, plot)
    if args.json:
        print(json.dumps({**scores, **{k: v.reset_index().to_dict(orient="records")
                                       for k, v in parts.items()}}))
        return 0
    print("  ".join(f"{k}={v}" for k, v in scores.items()))
    for name, table in parts.items():
        print(f"\n{name.replace('_', ' ')}:\n{table.to_string()}")
    print(f"\nreliability diagram: {plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dask-assign",
        description="Probabilistic LC-MS peak annotation on Dask: compound, adduct, isotope, "
                    "with a calibrated probability and a 'not in library' probability.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="annotate a peak table against a library")
    p.add_argument("peaks", help="peak table: CSV, TSV or Parquet")
    p.add_argument("library", help="compound library: CSV, TSV or Parquet")
    p.add_argument("--out", required=True, help="output folder")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)
    j = sub.add_parser("submit", help="run a job spec (YAML) on a cluster")
    j.add_argument("job", help="job spec (YAML); its paths are relative to its folder")
    j.add_argument("--allow", action="append",
                   help="a folder besides the spec's own that its paths may name (repeatable)")
    j.add_argument("--scheduler", help="address of a running Dask scheduler (overrides the job)")
    j.add_argument("--workers", type=int, help="worker processes of the local cluster")
    j.add_argument("--resume", action="store_true")
    _add_ion_cache_option(j)
    _add_dashboard_option(j)
    _add_overwrite_option(j)
    _add_tls_options(j)
    j.add_argument("-v", "--verbose", action="store_true")
    j.set_defaults(func=cmd_submit, format=None, columns=None)
    r = sub.add_parser("report", help="write a self-contained HTML report of a result folder")
    r.add_argument("result", help="output folder of a run")
    r.add_argument("--truth", help="truth table (peak_id, compound_id) for scores")
    r.add_argument("--out", help="HTML file (default RESULT/report.html)")
    r.add_argument("--review", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="the review queue takes calls with LOW <= probability < HIGH "
                        "(default 0.2 0.9), besides isomer ties and overflow")
    r.add_argument("--max-points", type=int,
                   help="peaks drawn at most; beyond, the review queue's least certain (up "
                        "to half), then a seeded sample of the rest (default 20000: "
                        "dask_assign.report.MAX_POINTS)")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=cmd_report)
    e = sub.add_parser("evaluate", help="score a result folder against a truth table")
    e.add_argument("result", help="output folder of a run")
    e.add_argument("--truth", required=True, help="truth table (peak_id, compound_id)")
    e.add_argument("--json", action="store_true")
    e.add_argument("--plot", help="reliability diagram PNG (default RESULT/reliability.png)")
    e.add_argument("-v", "--verbose", action="store_true")
    e.set_defaults(func=cmd_evaluate)
    t = sub.add_parser("train", help="fit the scorer's weights on labeled runs")
    t.add_argument("--set", dest="sets", action="append",
                   help="a folder holding peaks, library and truth tables (repeatable)")
    t.add_argument("--peaks", action="append", help="peak table of a labeled run (repeatable)")
    t.add_argument("--library", action="append", help="its library (repeatable, in order)")
    t.add_argument("--truth", action="append",
                   help="its truth: peak_id, compound_id[, adduct, isotope] (repeatable)")
    t.add_argument("--out", required=True, help="model folder to write")
    _add_run_options(t)
    t.set_defaults(func=cmd_train)
    d = sub.add_parser("demo", help="annotate the shipped demo data and score it")
    d.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    _add_run_options(d)
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``dask-assign`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    level = logging.INFO if args.verbose else logging.WARNING
    for handler in logging.root.handlers:
        handler.setLevel(level)  # distributed's loggers carry their own INFO level
    if not args.verbose:
        # Worker processes read this when they start: keep their start-up chatter quiet too.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    try:
        return args.func(args)
    except (InputError, ValueError, FileNotFoundError) as err:
        print(f"dask-assign: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a failure mid-run: finished partitions stay for --resume
        print(f"dask-assign: run failed: {type(err).__name__}: {err}; finished partitions are "
              "kept beside the output folder (.partial): rerun with --resume", file=sys.stderr)
        return 1


def console() -> None:
    """The ``dask-assign`` command: :func:`main`, then exit without the interpreter's
    teardown of torch, numba and distributed (1.5 s after a small run, measured in
    ``benchmarks/startup.py``): every result is committed, every stream flushed and every
    cluster closed by then, so nothing is left for the teardown to do."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


if __name__ == "__main__":
    console()
