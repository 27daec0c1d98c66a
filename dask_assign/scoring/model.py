"""Scorer model files: the learned weights as safetensors, their provenance as JSON.

A model is a folder with two files: ``weights.safetensors`` (one float64 scalar per weight of
:data:`~dask_assign.scoring.scorer.LEARNED_WEIGHTS`, plus ``unlisted_prior``) and ``model.json``
(format, version, what it was trained on, how well it did). Never pickle: a model file can
come from anywhere, and loading it must not run code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from pathlib import Path

import torch

from dask_assign.config import DEFAULT_MODEL, NO_MODEL, ScorerParams
from dask_assign.errors import InputError
from dask_assign.files import (
    Kind,
    claim,
    fresh_own_folder,
    remove_own_folder,
    staging_path,
    swap_in,
)
from dask_assign.scoring.scorer import LEARNED_WEIGHTS

FORMAT = "dask-assign scorer"


VERSION = 1


WEIGHTS_FILE = "weights.safetensors"


CONFIG_FILE = "model.json"


#: What a model file sets: the learned weights and the unlisted-isomer share.
MODEL_FIELDS = (*LEARNED_WEIGHTS, "unlisted_prior")


def save_model(params: ScorerParams, path, info: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write a model folder atomically (a complete folder appears, or none).

    Parameters
    ----------
    params : ScorerParams
        Only the ``MODEL_FIELDS`` are written.
    path : str or Path
        The model folder: absent, empty, or (with ``overwrite``) an earlier model, of which
        only the two model files are replaced; other files in it are kept. Anything else is
        refused (see :func:`dask_assign.files.claim`).
    info : dict, optional
        Provenance and scores, stored in ``model.json`` under ``training``.
    overwrite : bool
        Replace an earlier model at ``path``.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        When ``path`` may not be written.
    """
    from safetensors.torch import save_file

    with claim(path, MODEL, overwrite) as target:
        staging = fresh_own_folder(staging_path(target))
        try:
            save_file({name: torch.tensor([float(getattr(params, name))], dtype=torch.float64)
                       for name in MODEL_FIELDS}, str(staging / WEIGHTS_FILE),
                      metadata={"format": FORMAT, "version": str(VERSION)})
            config = {"format": FORMAT, "version": VERSION, "weights": list(MODEL_FIELDS),
                      "values": {name: float(getattr(params, name)) for name in MODEL_FIELDS},
                      "training": info or {}}
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True)
                                               + "\n")
            # safetensors writes a private file: give it the modes of any new file, so that
            # workers running as another user can read it.
            umask = os.umask(0)
            os.umask(umask)
            (staging / WEIGHTS_FILE).chmod(0o666 & ~umask)
            swap_in(staging, target, MODEL)
        except BaseException:
            remove_own_folder(staging)
            raise
    return Path(path)


def model_files(folder) -> set[str] | None:
    """The files of a model folder that the package wrote, or ``None`` when ``folder`` is not
    a model (its ``model.json`` names the format)."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        return None
    return {WEIGHTS_FILE, CONFIG_FILE}


#: A model folder of ``train``: recognised by its ``model.json``.
MODEL = Kind("model", CONFIG_FILE, frozenset({WEIGHTS_FILE, CONFIG_FILE}), model_files)


def load_model(path, base: ScorerParams | None = None) -> ScorerParams:
    """Read a model folder into scorer parameters.

    Parameters
    ----------
    path : str or Path
        A folder written by :func:`save_model`.
    base : ScorerParams, optional
        Parameters the model does not set are taken from here (the defaults otherwise).

    Returns
    -------
    ScorerParams

    Raises
    ------
    InputError
        Naming the file and the weight that is missing, malformed or not finite.

    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    weights_file, config_file = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    for f in (weights_file, config_file):
        if not f.is_file():
            raise InputError(str(folder), f"not a model folder: {f.name} is missing")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(str(config_file), f"not valid JSON ({e})") from None
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise InputError(str(config_file), f"not a {FORMAT} model of version {VERSION} "
                         f"(format {config.get('format')!r}, version {config.get('version')!r})")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(str(weights_file), f"not a safetensors file ({e})") from None
    values = {}
    for name in MODEL_FIELDS:
        t = tensors.get(name)
        if t is None:
            raise InputError(str(weights_file), "weight missing", column=name)
        if t.numel() != 1 or not t.dtype.is_floating_point:
            raise InputError(str(weights_file), f"expected one float, found shape "
                             f"{tuple(t.shape)} of {t.dtype}", column=name)
        v = float(t.reshape(()))
        if not math.isfinite(v):
            raise InputError(str(weights_file), f"weight is {v}", column=name)
        values[name] = v
    if not 0 <= values["unlisted_prior"] < 1:
        raise InputError(str(weights_file), "must lie in [0, 1)", column="unlisted_prior")
    base = base or ScorerParams()
    known = {f.name for f in fields(ScorerParams)}
    return ScorerParams(**{**{k: getattr(base, k) for k in known}, **values})


def scorer_params(model) -> ScorerParams:
    """The scorer a ``--model`` value names: ``"default"`` (or ``"none"``) the generative
    scorer, anything else a model folder (see :func:`load_model`).

    >>> scorer_params("default") == ScorerParams()
    True
    """
    return ScorerParams() if str(model) in (DEFAULT_MODEL, NO_MODEL) else load_model(model)


def model_info(path) -> dict:
    """The ``model.json`` of a model folder."""
    return json.loads((Path(path) / CONFIG_FILE).read_text())
