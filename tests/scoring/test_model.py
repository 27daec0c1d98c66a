"""Scorer model files: a save/load round trip scores identically; a bad file is named."""

import json
import os

import numpy as np
import pytest
import torch

from dask_assign.config import AssignConfig, ScorerParams
from dask_assign.errors import InputError
from dask_assign.scoring.model import (
    MODEL_FIELDS,
    WEIGHTS_FILE,
    load_model,
    model_info,
    save_model,
    scorer_params,
)
from tests.conftest import DEMO

TRAINED = ScorerParams(mass_weight=1.3, rt_weight=1.7, adduct_weight=1.5, isotope_weight=0.4,
                       intensity_weight=0.7, count_weight=-0.4, bias=-1.1,
                       unlisted_prior=0.033)


def test_round_trip_gives_identical_probabilities(tmp_path, local_client):
    from dask_assign.graph.run import assign

    path = save_model(TRAINED, tmp_path / "model", {"note": "hand-set weights"})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private folder
    assert (path / WEIGHTS_FILE).stat().st_mode & 0o777 == 0o666 & ~umask
    loaded = load_model(path)
    assert loaded == TRAINED
    assert model_info(path)["training"] == {"note": "hand-set weights"}
    results = []
    for params in (TRAINED, loaded):
        ddf = assign(DEMO / "peaks.csv", DEMO / "library.csv", AssignConfig(scorer=params),
                     client=local_client)
        with local_client.as_current():
            results.append(ddf.compute())
    np.testing.assert_array_equal(results[0]["prob"], results[1]["prob"])
    np.testing.assert_array_equal(results[0]["p_null"], results[1]["p_null"])
    # And the weights matter: the generative scorer scores the same run differently.
    ddf = assign(DEMO / "peaks.csv", DEMO / "library.csv", AssignConfig(scorer=ScorerParams()),
                 client=local_client)
    with local_client.as_current():
        assert not np.allclose(ddf.compute()["prob"], results[0]["prob"])


def test_the_default_is_the_generative_scorer():
    """No trained model ships (one trained on real and simulated runs lost on every held-out
    real run): ``--model default`` and ``none`` name the generative scorer, and building a
    configuration reads no file."""
    assert AssignConfig().scorer == ScorerParams() == scorer_params("default")
    assert scorer_params("none") == ScorerParams()


def _write(path, **tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(path / WEIGHTS_FILE))


@pytest.mark.parametrize("damage,expect", [
    (lambda p: (p / "model.json").unlink(), "model.json is missing"),
    (lambda p: (p / "model.json").write_text("{"), "not valid JSON"),
    (lambda p: (p / "model.json").write_text(json.dumps({"format": "x", "version": 1})),
     "not a dask-assign scorer model"),
    (lambda p: (p / WEIGHTS_FILE).write_bytes(b"\x00" * 12), "not a safetensors file"),
    (lambda p: _write(p, **{n: torch.ones(1, dtype=torch.float64) for n in MODEL_FIELDS
                            if n != "bias"}), "column 'bias': weight missing"),
    (lambda p: _write(p, **{n: torch.full((1,), float("nan"), dtype=torch.float64)
                            for n in MODEL_FIELDS}), "weight is nan"),
    (lambda p: _write(p, **{n: torch.ones(3, dtype=torch.float64) for n in MODEL_FIELDS}),
     "expected one float"),
])
def test_a_bad_model_file_is_named(tmp_path, damage, expect):
    path = save_model(TRAINED, tmp_path / "model")
    damage(path)
    with pytest.raises(InputError, match="model") as err:
        load_model(path)
    assert expect in str(err.value)


def test_saving_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the old model in place and no staging folder."""
    path = save_model(TRAINED, tmp_path / "model")
    import dask_assign.scoring.model as model

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model.json, "dumps", broken)
    with pytest.raises(OSError):
        save_model(ScorerParams(), path, overwrite=True)
    assert load_model(path) == TRAINED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
