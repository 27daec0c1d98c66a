"""The scorer: a torch module giving each candidate a logit against a null slot, and the
segment (ragged) softmax that turns a peak's logits into probabilities that sum to 1.

The default parameters make it a generative model of one peak (a Gaussian mass error, a
Gaussian RT error around the fitted RT mapping, adduct and isotope priors, a null hypothesis of
uniform background), so it works with no training. Probabilities are computed over ragged
segments (one per peak) instead of a padded ``[n, K + 1]`` tensor: candidate counts are very
uneven and padding is mostly empty.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .config import Calibration, ScorerParams
from .features import PairFeatures

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
#: The scorer's weights that a model file holds (fields of ScorerParams); everything else
#: the scorer uses comes from the run's calibration.
LEARNED_WEIGHTS = ("mass_weight", "rt_weight", "adduct_weight", "isotope_weight",
                   "intensity_weight", "count_weight", "bias")


class PeakScorer(torch.nn.Module):
    """Logits of candidate pairs, relative to the null hypothesis (logit 0).

    Parameters
    ----------
    params : ScorerParams
        Weights of the terms (``LEARNED_WEIGHTS``).
    calibration : Calibration
        Mass and RT error models, null prior and the prior normaliser of this run.
    """

    def __init__(self, params: ScorerParams, calibration: Calibration):
        super().__init__()
        c = calibration
        f64 = torch.float64

        def p(x):
            return torch.nn.Parameter(torch.tensor(float(x), dtype=f64))

        # The run's fitted error models: fixed here; a learned scorer weighs their terms.
        self.mass_sigma = float(c.mass_sigma_ppm)
        self.rt_sigma = float(c.rt_sigma)
        for name in LEARNED_WEIGHTS:
            setattr(self, name, p(getattr(params, name)))
        # Log odds of "this library ion" against "background", before the likelihoods:
        # log((1 - pi0) / pi0) - log(sum of ion prior weights) + log(search space volume).
        self.prior_odds = float(math.log((1 - c.null_prior) / c.null_prior) + c.log_volume
                                - c.log_prior_mass)
        self.log_rt_span = float(math.log(c.rt_span))
        self.intensity_center = float(c.log_intensity_center)
        self.intensity_scale = float(c.log_intensity_scale)

    def forward(self, f: PairFeatures) -> torch.Tensor:
        """Logit of each pair against the null slot of its peak."""
        dtype = f.ppm_error.dtype
        z = (f.ppm_error - f.ppm_offset) / self.mass_sigma
        mass_term = -0.5 * z * z - math.log(self.mass_sigma) - _LOG_SQRT_2PI
        zr = (f.peak_rt - f.expected_rt) / self.rt_sigma
        rt_term = -0.5 * zr * zr - math.log(self.rt_sigma) - _LOG_SQRT_2PI
        # Without a library RT the RT says nothing: the same density as the background's.
        rt_term = torch.where(torch.isnan(f.ion_rt), -self.log_rt_span,
                              self.rt_weight.to(dtype) * rt_term)
        logit = self.mass_weight.to(dtype) * mass_term + rt_term
        logit = logit + self.adduct_weight.to(dtype) * f.log_adduct_prior
        logit = logit + self.isotope_weight.to(dtype) * f.log_abundance
        # Intensity: an isotope peak should be weaker than its monoisotopic one by the predicted
        # abundance (log-normal intensities); relative to the background's intensity density.
        li = (f.log_intensity - self.intensity_center) / self.intensity_scale
        shifted = li - f.log_abundance / self.intensity_scale
        inten = 0.5 * (li * li - shifted * shifted)
        logit = logit + self.intensity_weight.to(dtype) * torch.nan_to_num(inten, nan=0.0)
        logit = logit + self.count_weight.to(dtype) * f.log_count
        return logit + self.prior_odds + self.bias.to(dtype)


def segment_softmax(logits: torch.Tensor, segment: torch.Tensor, n_segments: int,
                    null_logit: float = 0.0):
    """Softmax within segments, each with one extra null slot.

    Parameters
    ----------
    logits : torch.Tensor
        One logit per candidate.
    segment : torch.Tensor (int64)
        Segment (peak) of each candidate.
    n_segments : int
        Number of segments; a segment with no candidate gets p_null = 1.
    null_logit : float
        Logit of every null slot.

    Returns
    -------
    prob : torch.Tensor
        Probability of each candidate.
    p_null : torch.Tensor
        Probability of each segment's null slot; ``p_null + sum(prob of segment) == 1``.

    Examples
    --------
    >>> p, p0 = segment_softmax(torch.tensor([0.0, 0.0]), torch.tensor([1, 1]), 3)
    >>> [round(x, 4) for x in p.tolist()], [round(x, 4) for x in p0.tolist()]
    ([0.3333, 0.3333], [1.0, 0.3333, 1.0])
    """
    dtype, device = logits.dtype, logits.device
    top = torch.full((n_segments,), float(null_logit), dtype=dtype, device=device)
    top = top.scatter_reduce(0, segment, logits, reduce="amax", include_self=True)
    e = torch.exp(logits - top[segment])
    e_null = torch.exp(null_logit - top)
    total = e_null.index_add(0, segment, e)
    return e / total[segment], e_null / total


def logsumexp_rounds(logits, segment, n_segments, rounds, null_logit: float = 0.0):
    """Per-segment log-normaliser (null included), accumulated over rounds of candidates.

    Each round holds at most K candidates per peak; rounds are folded in one at a time with a
    running maximum, so no step needs more than one round in memory at full width.

    Parameters
    ----------
    logits, segment : torch.Tensor
        Candidates of all rounds.
    n_segments : int
    rounds : torch.Tensor (int64)
        Round of each candidate (rank // K).
    null_logit : float

    Returns
    -------
    torch.Tensor
        ``log(exp(null_logit) + sum(exp(logits)))`` per segment.
    """
    dtype, device = logits.dtype, logits.device
    top = torch.full((n_segments,), float(null_logit), dtype=dtype, device=device)
    acc = torch.ones(n_segments, dtype=dtype, device=device)  # the null slot, scaled by top
    for r in range(int(rounds.max()) + 1 if rounds.numel() else 0):
        sel = rounds == r
        lg, sg = logits[sel], segment[sel]
        new_top = top.scatter_reduce(0, sg, lg, reduce="amax", include_self=True)
        acc = acc * torch.exp(top - new_top)
        acc = acc.index_add(0, sg, torch.exp(lg - new_top[sg]))
        top = new_top
    return top + torch.log(acc)


@lru_cache(maxsize=8)
def get_scorer(params: ScorerParams, calibration: Calibration, device: str = "cpu") -> PeakScorer:
    """The scorer for these settings, built once per worker process and then reused.

    Tasks receive only the small frozen settings; the module is built on first use in each
    worker and cached, never pickled with the tasks.
    """
    return PeakScorer(params, calibration).to(device).eval().requires_grad_(False)
