"""Per-pair features, against values computed by hand, pair by pair."""

import math

import numpy as np
import torch

from dask_assign.scoring.features import pair_features


def small_case():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    peaks = {"mz": t(195.0877, 196.0910, 300.0), "rt": t(5.0, 5.01, 7.5),
             "intensity": t(1e6, 8.5e4, float("nan"))}
    ions = {"mz": t(195.08765, 196.09100, 300.0012), "rt": t(4.9, 4.9, float("nan")),
            "ppm_offset": t(0.5, 0.5, -1.0), "mapped_rt": t(5.02, 5.02, float("nan")),
            "log_adduct_prior": t(0.0, 0.0, math.log(0.35)),
            "log_abundance": t(0.0, math.log(0.0878), 0.0)}
    peak_idx = torch.tensor([0, 0, 1, 2])
    ion_idx = torch.tensor([0, 1, 1, 2])
    return peaks, ions, peak_idx, ion_idx


def test_features_are_the_pairs_values():
    peaks, ions, pi, ii = small_case()
    f = pair_features(pi, ii, peaks, ions)
    assert len(f) == 4
    for k, (p, i) in enumerate(zip(pi.tolist(), ii.tolist(), strict=True)):
        mz, ion_mz = float(peaks["mz"][p]), float(ions["mz"][i])
        assert math.isclose(f.ppm_error[k], (mz - ion_mz) / ion_mz * 1e6, rel_tol=1e-12)
        assert f.peak_rt[k] == peaks["rt"][p] and f.ppm_offset[k] == ions["ppm_offset"][i]
        assert f.log_adduct_prior[k] == ions["log_adduct_prior"][i]
        assert f.log_abundance[k] == ions["log_abundance"][i]
    # Hand values: 195.0877 against 195.08765 is +0.256 ppm; peak 0 has two candidates.
    assert round(float(f.ppm_error[0]), 3) == 0.256
    np.testing.assert_allclose(f.log_count.numpy(), np.log([2, 2, 1, 1]))
    # No library RT, no intensity: NaN passes through (the scorer masks it).
    assert math.isnan(f.ion_rt[3]) and math.isnan(f.expected_rt[3])
    assert math.isnan(f.log_intensity[3]) and f.log_intensity[2] == math.log(8.5e4)


def test_take_keeps_pairs_together():
    peaks, ions, pi, ii = small_case()
    f = pair_features(pi, ii, peaks, ions)
    g = f.take(torch.tensor([3, 0]))
    assert g.peak.tolist() == [2, 0] and g.ion.tolist() == [2, 0]
    assert g.ppm_error[1] == f.ppm_error[0] and len(g) == 2
