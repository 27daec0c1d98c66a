"""Job specs: a YAML file naming the inputs, the settings and the output of one run.

Paths in a job spec are relative to the spec's own folder and must stay inside it (or inside
folders allowed explicitly), so a spec handed around cannot read or write elsewhere. Inputs may
also name the package's own data as ``package:PATH`` (``package:demo/peaks.csv`` is the shipped
demo set), read-only and only inside the package's data folder. Settings are plain values
checked against :class:`~dask_assign.config.AssignConfig`; nothing in a spec is evaluated.

Example (``jobs/demo.yaml``)::

    peaks: package:demo/peaks.csv
    library: package:demo/library.csv
    out: demo-output
    format: parquet
    settings:
      mode: positive
      ppm: 10
      model: default    # or none (the untrained scorer), or a model folder
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dask_assign.config import DEFAULT_MODEL, NO_MODEL, AssignConfig, SettingError, settings
from dask_assign.errors import InputError
from dask_assign.files import FORMATS
from dask_assign.scoring.model import scorer_params

#: Prefix of a path to the package's own data (inputs only).
PACKAGE_PREFIX = "package:"


JOB_KEYS = {"peaks", "library", "out", "format", "scheduler", "workers", "columns", "settings",
            "name"}


#: Settings a job may give under ``settings:``, one per AssignConfig field
#: (:func:`~dask_assign.config.settings`); the rest keep their defaults.
SETTING_TYPES = {s.name: list if s.kind is tuple else s.kind for s in settings()}


@dataclass(frozen=True)
class Job:
    """A checked job spec: absolute paths, a config, where to run."""

    peaks: Path
    library: Path
    out: Path
    config: AssignConfig
    format: str = "parquet"
    scheduler: str | None = None
    workers: int | None = None
    columns: dict | None = None
    name: str | None = None
    source: Path = field(default=Path("job.yaml"))


def _inside(path: Path, roots) -> bool:
    return any(path == r or r in path.parents for r in roots)


def package_data() -> Path:
    """The package's data folder, which ``package:`` paths name."""
    from importlib.resources import files

    return Path(str(files("dask_assign").joinpath("data"))).resolve()


def _path(spec: dict, key: str, source: Path, roots, must_exist: bool) -> Path:
    value = spec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(str(source), f"'{key}' must be a path (text)")
    package = value.startswith(PACKAGE_PREFIX)
    if package and not must_exist:  # outputs never go into the package
        raise InputError(str(source), f"'{key}' cannot be package data: {value!r}")
    base = package_data() if package else source.parent
    allowed = [base] if package else roots
    # resolve() follows symlinks, so a link cannot smuggle a path out of the folder.
    path = (base / value.removeprefix(PACKAGE_PREFIX)).resolve()
    if not _inside(path, allowed):
        where = "the package's data" if package else "the allowed folders"
        raise InputError(str(source), f"'{key}' points outside {where}: {value!r} "
                         f"(allowed: {', '.join(str(r) for r in allowed)})")
    if must_exist and not path.exists():
        raise InputError(str(source), f"'{key}' file not found: {value!r}")
    return path


def load_job(path, allow=()) -> Job:
    """Read and check a job spec.

    Parameters
    ----------
    path : str or Path
        The YAML file.
    allow : sequence of str or Path
        Folders besides the spec's own that its paths may name.

    Returns
    -------
    Job

    Raises
    ------
    InputError
        For unknown keys, wrong types, unsafe or missing paths, bad settings.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(str(source), "job spec not found")
    try:
        spec = yaml.safe_load(source.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as err:
        raise InputError(str(source), f"not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise InputError(str(source), "a job spec is a mapping of keys to values")
    unknown = sorted(set(spec) - JOB_KEYS)
    if unknown:
        raise InputError(str(source), f"unknown key(s) {unknown}; known: {sorted(JOB_KEYS)}")
    roots = [source.parent.resolve(), *(Path(a).resolve() for a in allow)]
    settings = spec.get("settings") or {}
    if not isinstance(settings, dict):
        raise InputError(str(source), "'settings' must be a mapping")
    bad = sorted(set(settings) - set(SETTING_TYPES))
    if bad:
        raise InputError(str(source), f"unknown setting(s) {bad}; known: {sorted(SETTING_TYPES)}")
    kwargs = {}
    for key, value in settings.items():
        want = SETTING_TYPES[key]
        ok = isinstance(value, want) or (want is float and isinstance(value, int))
        if not ok or (want is not bool and isinstance(value, bool)):
            raise InputError(str(source), f"setting '{key}' must be {want.__name__}, "
                             f"not {value!r}")
        kwargs[key] = tuple(value) if want is list else value
    if "adduct_table" in kwargs:
        kwargs["adduct_table"] = str(_path(settings, "adduct_table", source, roots, True))
    model = kwargs.pop("model", DEFAULT_MODEL)
    if model not in (DEFAULT_MODEL, NO_MODEL):  # a folder: checked like any other path
        model = _path(settings, "model", source, roots, True)
    try:
        kwargs["scorer"] = scorer_params(model)
    except InputError as err:
        raise InputError(str(source), f"'model': {err}") from None
    try:
        config = AssignConfig(**kwargs)
    except SettingError as err:  # named as the spec names it: the key under 'settings'
        raise InputError(str(source), f"setting '{err.name}': {err.reason}") from None
    except (TypeError, ValueError) as err:
        raise InputError(str(source), f"bad settings: {err}") from None
    fmt = spec.get("format", "parquet")
    if fmt not in FORMATS:
        raise InputError(str(source), f"'format' must be one of {', '.join(FORMATS)}, "
                         f"not {fmt!r}")
    workers = spec.get("workers")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InputError(str(source), "'workers' must be a positive integer")
    columns = spec.get("columns")
    if columns is not None and not (isinstance(columns, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in columns.items())):
        raise InputError(str(source), "'columns' must map names to column names")
    return Job(peaks=_path(spec, "peaks", source, roots, True),
               library=_path(spec, "library", source, roots, True),
               out=_path(spec, "out", source, roots, False), config=config, format=fmt,
               scheduler=spec.get("scheduler"), workers=workers, columns=columns,
               name=spec.get("name"), source=source.resolve())
