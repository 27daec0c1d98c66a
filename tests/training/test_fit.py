"""Training the scorer: labels checked against the truth's own ion masses, the fit against
its optimality condition, and the command line end to end."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from dask_assign.config import AssignConfig, ScorerParams
from dask_assign.errors import InputError
from dask_assign.filtering.space import candidate_rt_window
from dask_assign.scoring.scorer import LEARNED_WEIGHTS
from dask_assign.training.fit import L2_PULL, label_run, read_truth, run_nll, train
from tests.conftest import DEMO, SHARED

HILIC = SHARED / "repoRT_0228_hilic_pos"
BASE = AssignConfig(scorer=ScorerParams())


@pytest.fixture(scope="module")
def hilic_run():
    if not HILIC.exists():
        pytest.skip("needs ../shared (the evaluation sets)")
    return label_run(HILIC / "peaks.csv", HILIC / "library.csv", HILIC / "truth.csv", BASE,
                     "0228")


def test_labels_match_the_truths_ion_masses(hilic_run):
    """A peak has a right candidate exactly when its true ion (the truth's own m/z, computed
    by the set's generator) lies in the search windows; never more than one."""
    run = hilic_run
    peaks = pd.read_csv(HILIC / "peaks.csv")
    truth = pd.read_csv(HILIC / "truth.csv", dtype={"peak_id": str}).set_index("peak_id")
    lib = pd.read_csv(HILIC / "library.csv").set_index("compound_id")
    t = truth.loc[peaks["peak_id"]]
    in_lib = t["compound_id"].notna().to_numpy()
    ppm = (peaks["mz"].to_numpy() - t["mz_theoretical"].to_numpy()) \
        / t["mz_theoretical"].to_numpy() * 1e6
    lib_rt = lib["rt"].reindex(t["compound_id"]).to_numpy()
    window = candidate_rt_window(BASE, run.calibration)
    rt_ok = np.abs(peaks["rt"].to_numpy() - run.calibration.rt_map(lib_rt)) <= window
    # The windows are centred on the run's fitted mass offset, and span the tolerance or 4
    # fitted spreads, whichever is wider.
    centred = ppm - run.calibration.mass_offset(t["mz_theoretical"].to_numpy())
    half = max(BASE.ppm, 4 * run.calibration.mass_sigma_ppm)
    expected = in_lib & (np.abs(centred) <= half) & rt_ok
    f = run.features
    n_right = np.bincount(f.peak[run.right].numpy(), minlength=len(peaks))
    assert n_right.max() == 1
    # Away from the window's edge (merged isotopologues sit a few tenths of a ppm from the
    # pure 13C ones the generator computes), the labels are the truth's.
    clear = np.abs(np.abs(centred) - half) > 1.0
    assert ((n_right == 1) == expected)[clear].mean() > 0.999
    assert expected.sum() > 0.6 * len(peaks)


def test_training_finds_the_maximum_likelihood(hilic_run):
    """At the returned weights the training objective is flat (its gradient vanishes), and
    its loss is below the generative scorer's; a run given twice trains the same weights."""
    params, report = train([hilic_run])
    assert report["log_loss_after"] < report["log_loss_before"]
    from dask_assign.training.fit import _tied_scorers

    scorer = _tied_scorers([hilic_run], params)[0]
    raw = torch.tensor(np.log(params.unlisted_prior / (1 - params.unlisted_prior)),
                       dtype=torch.float64, requires_grad=True)
    weights = [getattr(scorer, n) for n in LEARNED_WEIGHTS]
    anchor = torch.tensor([getattr(ScorerParams(), n) for n in LEARNED_WEIGHTS],
                          dtype=torch.float64)
    n = int(hilic_run.labeled.sum())
    loss = run_nll(scorer, hilic_run, torch.sigmoid(raw)) / n \
        + L2_PULL * ((torch.stack(weights) - anchor) ** 2).sum()
    grads = torch.autograd.grad(loss, [*weights, raw])
    assert max(abs(float(g)) for g in grads) < 1e-4
    twice, _ = train([hilic_run, hilic_run])
    for name in (*LEARNED_WEIGHTS, "unlisted_prior"):
        assert getattr(twice, name) == pytest.approx(getattr(params, name), rel=1e-3, abs=1e-4)


def test_truth_without_its_columns_is_named(tmp_path):
    path = tmp_path / "truth.csv"
    pd.DataFrame({"peak_id": ["a"], "compound": ["x"]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="truth.csv: column 'compound_id'"):
        read_truth(path)
    pd.DataFrame({"peak_id": ["a", "b", "a"], "compound_id": ["x", "y", "z"]}).to_csv(
        path, index=False)
    with pytest.raises(InputError, match=r"peak id appears more than once \(rows 2: 'a'"):
        read_truth(path)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "dask_assign.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_train_then_run_with_the_model(tmp_path):
    model = tmp_path / "model"
    res = cli("train", "--set", DEMO, "--out", model, "--workers", "2", "--model", "none")
    assert res.returncode == 0, res.stderr
    assert "log loss before" in res.stdout and (model / "weights.safetensors").exists()
    from dask_assign.scoring.model import load_model, model_info

    info = model_info(model)
    assert info["training"]["trained_on"][0]["name"] == "demo"
    assert info["training"]["report"]["log_loss_after"] < info["training"]["report"][
        "log_loss_before"]
    assert load_model(model) != ScorerParams()
    out = tmp_path / "result"
    res = cli("run", DEMO / "peaks.csv", DEMO / "library.csv", "--out", out, "--workers", "2",
              "--model", model)
    assert res.returncode == 0, res.stderr
    manifest = (out / "manifest.json").read_text()
    assert f"{load_model(model).bias}"[:8] in manifest  # the model's weights ran
    bad = cli("run", DEMO / "peaks.csv", DEMO / "library.csv", "--out", tmp_path / "x",
              "--model", tmp_path / "nowhere")
    assert bad.returncode == 2 and "not a model folder" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_leave_one_out_never_trains_on_the_scored_run(hilic_run):
    """Each fold's training runs exclude the held-out run, also when the same peaks come
    again under another name; each run is held out once."""
    import dataclasses

    from dask_assign.training.fit import leave_one_out

    twin = dataclasses.replace(hilic_run, name="0228 again")
    other = dataclasses.replace(hilic_run, name="other", data_key="another table")
    folds = list(leave_one_out([hilic_run, twin, other]))
    assert [h.name for h, _ in folds] == ["0228", "0228 again", "other"]
    for held, training in folds:
        assert held not in training
        assert all(r.data_key != held.data_key for r in training)
    assert [r.name for r in folds[2][1]] == ["0228", "0228 again"]
    assert list(leave_one_out([hilic_run, other], held_out_only={"other"}))[0][0] is other
