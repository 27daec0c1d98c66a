import math

import numpy as np
import pytest
import torch

from dask_assign.config import Calibration, ScorerParams
from dask_assign.scoring.features import PairFeatures
from dask_assign.scoring.scorer import PeakScorer, get_scorer, logsumexp_rounds, segment_softmax


def random_segments(n_pairs=500, n_seg=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    seg = torch.sort(torch.randint(0, max(n_seg - 20, 1), (n_pairs,), generator=g)).values
    logits = torch.randn(n_pairs, generator=g, dtype=torch.float64) * 5
    return logits, seg, n_seg


def test_softmax_sums_to_one_with_null():
    logits, seg, n = random_segments()
    prob, p_null = segment_softmax(logits, seg, n)
    total = p_null.index_add(0, seg, prob)
    torch.testing.assert_close(total, torch.ones(n, dtype=torch.float64))
    assert (prob >= 0).all() and (p_null >= 0).all()


def test_no_candidates_means_null_is_certain():
    logits, seg, n = random_segments()
    _, p_null = segment_softmax(logits, seg, n)
    empty = torch.ones(n, dtype=torch.bool)
    empty[seg] = False
    assert empty.sum() >= 20
    assert (p_null[empty] == 1).all()


def test_masked_slots_get_zero_and_others_match_dense_softmax():
    # A padded [n, K+1] view: masked slots are -inf, the null slot is 0.
    logits, seg, n = random_segments(60, 30)
    prob, p_null = segment_softmax(logits, seg, n)
    k = int(torch.bincount(seg, minlength=n).max())
    dense = torch.full((n, k + 1), float("-inf"), dtype=torch.float64)
    dense[:, 0] = 0.0
    pos = torch.zeros(n, dtype=torch.int64)
    slot = []
    for s in seg.tolist():
        pos[s] += 1
        slot.append(int(pos[s]))
    dense[seg, torch.tensor(slot)] = logits
    ref = torch.softmax(dense, dim=1)
    torch.testing.assert_close(ref[:, 0], p_null)
    torch.testing.assert_close(ref[seg, torch.tensor(slot)], prob)
    masked = torch.isinf(dense)
    assert (ref[masked] == 0).all()


def test_extreme_logits_are_stable():
    prob, p_null = segment_softmax(torch.tensor([800.0, -800.0], dtype=torch.float64),
                                   torch.tensor([0, 1]), 2)
    assert prob.tolist() == [1.0, 0.0] and p_null.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("k", [1, 3, 7])
def test_rounds_give_the_exact_normaliser(k):
    logits, seg, n = random_segments()
    rank = torch.zeros_like(seg)
    for s in range(n):
        idx = torch.nonzero(seg == s).flatten()
        rank[idx] = torch.arange(idx.numel())
    log_z = logsumexp_rounds(logits, seg, n, rank // k)
    _, p_null = segment_softmax(logits, seg, n)
    torch.testing.assert_close(torch.exp(-log_z), p_null)


def test_default_scorer_prefers_small_errors_and_counts_rt_only_when_known():
    cal = Calibration(mass_sigma_ppm=2.0, rt_sigma=0.1, rt_span=10.0)
    scorer = PeakScorer(ScorerParams(), cal).requires_grad_(False)
    nan = float("nan")

    def feats(ppm, ion_rt):
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return PairFeatures(
            peak=torch.zeros(len(ppm), dtype=torch.int64),
            ion=torch.arange(len(ppm)), ppm_error=t(ppm), ppm_offset=t([0.0] * len(ppm)),
            peak_rt=t([5.0] * len(ppm)), ion_rt=t(ion_rt), expected_rt=t(ion_rt),
            log_adduct_prior=t([0.0] * len(ppm)),
            log_abundance=t([0.0] * len(ppm)), log_intensity=t([nan] * len(ppm)),
            log_count=t([0.0] * len(ppm)))

    lg = scorer(feats([0.0, 2.0, 4.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.3, nan]))
    assert lg[0] > lg[1] > lg[2]
    assert lg[0] > lg[3]
    # Unknown library RT: the RT term equals the background's, log(1 / rt_span).
    rt_term_known = -math.log(0.1) - 0.5 * math.log(2 * math.pi)
    assert float(lg[0] - lg[4]) == pytest.approx(rt_term_known + math.log(10.0))


def test_scorer_is_cached_per_settings():
    cal = Calibration()
    assert get_scorer(ScorerParams(), cal) is get_scorer(ScorerParams(), cal)
    assert get_scorer(ScorerParams(), cal) is not get_scorer(ScorerParams(), cal.replace(
        rt_sigma=0.2))


def test_the_rt_tail_is_a_student_t():
    """The broad RT component against the closed form of a t with 3 degrees of freedom: its
    density at 0 (2 / (pi sqrt 3) per scale), total mass 1, variance 3 scales squared, and a
    tail far above a normal's of the same variance; the E-step weight is the expected
    precision (4 / (3 + z^2))."""
    from dask_assign.scoring.scorer import (
        RT_TAIL_DOF,
        log_normal,
        rt_log_density,
        tail_log_density,
        tail_weight,
    )

    assert RT_TAIL_DOF == 3.0
    scale = 2.0
    r = np.linspace(-4000.0, 4000.0, 4_000_001)
    density = np.exp(tail_log_density(r, scale))
    step = r[1] - r[0]
    assert np.exp(tail_log_density(np.array([0.0]), scale))[0] == pytest.approx(
        2 / (math.pi * math.sqrt(3)) / scale)
    assert density.sum() * step == pytest.approx(1.0, abs=1e-3)
    assert (density * r * r).sum() * step == pytest.approx(3 * scale**2, rel=0.01)
    far = torch.tensor([5 * math.sqrt(3) * scale], dtype=torch.float64)  # 5 sd out
    assert tail_log_density(far, scale) > log_normal(far, math.sqrt(3) * scale) + 5
    assert tail_weight(torch.tensor([0.0, scale], dtype=torch.float64), scale).tolist() == \
        pytest.approx([4 / 3, 1.0])
    # The mixture: the core where a library RT holds, the t where it is off.
    t = torch.tensor([0.0, 8.0], dtype=torch.float64)
    mix = rt_log_density(t, 0.1, 0.5, scale)
    assert mix[1] == pytest.approx(float(tail_log_density(t[1:], scale)[0]) + math.log(0.5))
