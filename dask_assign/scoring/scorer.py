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

import numpy as np
import torch

from dask_assign.config import Calibration, ScorerParams
from dask_assign.scoring.features import PairFeatures

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
        self.unlisted_prior = float(params.unlisted_prior)
        self.mass_sigma = float(c.mass_sigma_ppm)
        self.rt_sigma = float(c.rt_sigma)
        self.rt_tail_share = float(c.rt_tail_share)
        self.rt_tail_sigma = float(c.rt_tail_sigma)
        for name in LEARNED_WEIGHTS:
            setattr(self, name, p(getattr(params, name)))
        # Log odds of "this library ion" against "background", before the likelihoods:
        # log((1 - pi0) / pi0) - log(sum of ion prior weights) + log(search space volume).
        self.prior_odds = float(math.log((1 - c.null_prior) / c.null_prior) + c.log_volume
                                - c.log_enrichment - c.log_prior_mass)
        self.log_rt_span = float(math.log(c.rt_span))
        self.isomer_rt = c.isomer_rt
        self.intensity_center = float(c.log_intensity_center)
        self.intensity_scale = float(c.log_intensity_scale)

    def rt_term(self, f: PairFeatures) -> torch.Tensor:
        """The RT's part of each pair's logit: log density of its residual under the run's RT
        model (the background's density where the library has no RT: it says nothing)."""
        dtype = f.ppm_error.dtype
        term = rt_log_density(f.peak_rt - f.expected_rt, self.rt_sigma, self.rt_tail_share,
                              self.rt_tail_sigma)
        return torch.where(torch.isnan(f.ion_rt), -self.log_rt_span,
                           self.rt_weight.to(dtype) * term)

    def isomer_rt_term(self, f: PairFeatures) -> torch.Tensor:
        """log density of each pair's RT residual for an unlisted isomer of the candidate:
        the library's isomer model (:mod:`dask_assign.calibration.isomer_rt`), else uniform over the
        run, which is also what it is where the library has no RT."""
        uniform = torch.full_like(f.peak_rt, -self.log_rt_span)
        if self.isomer_rt is None:
            return uniform
        lo, hi = self.isomer_rt.knots[0], self.isomer_rt.knots[-1]
        residual = (f.peak_rt - f.expected_rt).clamp(lo, hi)
        return torch.where(torch.isnan(f.ion_rt), uniform,
                           self.isomer_rt(residual.nan_to_num(0.0)))

    def isomer_odds(self, f: PairFeatures, rt_term: torch.Tensor | None = None,
                    unlisted_prior=None) -> torch.Tensor:
        """log odds of "a compound of the same formula missing from the library" against
        "this library compound", for each pair: the two explain the m/z alike, but the
        library compound is tied to its library RT, while the isomer elutes where the
        library's own isomers say isomers elute (:meth:`isomer_rt_term`). Where the library
        has no RT the odds are ``unlisted_prior / (1 - unlisted_prior)``."""
        rt = self.rt_term(f) if rt_term is None else rt_term
        share = self.unlisted_prior if unlisted_prior is None else unlisted_prior
        log_odds = torch.log(torch.as_tensor(share, dtype=rt.dtype, device=rt.device)) \
            - torch.log1p(-torch.as_tensor(share, dtype=rt.dtype, device=rt.device))
        return log_odds + self.isomer_rt_term(f) - rt

    def forward(self, f: PairFeatures) -> torch.Tensor:
        """Logit of each pair against the null slot of its peak."""
        dtype = f.ppm_error.dtype
        mass_term = mass_log_density(f.ppm_error - f.ppm_offset, self.mass_sigma)
        logit = self.mass_weight.to(dtype) * mass_term + self.rt_term(f)
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


def with_isomers(logit: torch.Tensor, isomer: torch.Tensor):
    """A candidate and its unlisted isomer share one slot of the softmax: the slot's logit,
    and the compound's share of the slot (``isomer``: :meth:`PeakScorer.isomer_odds`)."""
    return logit + torch.nn.functional.softplus(isomer), torch.sigmoid(-isomer)


#: Share of true matches whose mass error is far beyond the run's spread (a weak peak, an
#: interference, the edge of the calibrated range), and how much wider they spread.
MASS_OUTLIERS = 0.02


MASS_OUTLIER_WIDTH = 5.0


def mass_log_density(error, sigma: float):
    """log density of a mass error (ppm, after the run's offset): the run's Gaussian spread,
    with a thin wide tail so that a true match a few spreads off is unlikely, not impossible."""
    return torch.logaddexp(log_normal(error, sigma) + math.log1p(-MASS_OUTLIERS),
                           log_normal(error, MASS_OUTLIER_WIDTH * sigma)
                           + math.log(MASS_OUTLIERS))


def log_normal(x, sigma: float):
    """log density of N(0, sigma) at ``x`` (tensor)."""
    z = x / sigma
    return -0.5 * z * z - math.log(sigma) - _LOG_SQRT_2PI


#: Degrees of freedom of the RT error model's broad component, a Student t: library RTs
#: measured on another day are off by minutes with a tail heavier than a normal one (NetID:
#: 5.1% of its known [M-H]- peaks more than 8 min off, where a normal of the fitted spread
#: puts 0.8%). Three: the heaviest tail with a finite variance, the usual robust choice.
RT_TAIL_DOF = 3.0


def rt_log_density(residual, sigma: float, tail_share: float, tail_sigma: float):
    """log density of an RT residual under the run's RT error model: a share
    ``1 - tail_share`` of library RTs holds (normal, spread ``sigma``), the rest is off
    (:func:`tail_log_density`, scale ``tail_sigma``)."""
    core = log_normal(residual, sigma)
    if tail_share <= 0:
        return core
    return torch.logaddexp(core + math.log1p(-tail_share),
                           tail_log_density(residual, tail_sigma) + math.log(tail_share))


def tail_log_density(residual, scale: float):
    """log density of an RT residual of a library RT that is off: Student t with
    :data:`RT_TAIL_DOF` degrees of freedom and ``scale`` (a tensor or an array)."""
    nu = RT_TAIL_DOF
    log1p = torch.log1p if isinstance(residual, torch.Tensor) else np.log1p
    z = residual / scale
    return (math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
            - math.log(scale) - (nu + 1) / 2 * log1p(z * z / nu))


def tail_weight(residual, scale: float):
    """The E-step's weight of a residual in the broad component's scale (a Student t is a
    normal whose precision is drawn from a gamma: this is its expected precision, in units
    of ``1 / scale**2``); the scale's M-step is ``sqrt(sum(w r^2) / sum(responsibility))``."""
    nu = RT_TAIL_DOF
    return (nu + 1) / (nu + (residual / scale) ** 2)


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
