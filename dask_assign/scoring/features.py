"""Per-candidate features: what the scorer sees of each (peak, ion) pair."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PairFeatures:
    """Features of candidate pairs, one entry per pair (1-D tensors on one device).

    Attributes
    ----------
    peak : torch.Tensor (int64)
        Peak of the pair (row within the partition).
    ion : torch.Tensor (int64)
        Ion of the pair (row of the ion table).
    ppm_error : torch.Tensor
        ``(peak_mz - ion_mz) / ion_mz * 1e6``.
    ppm_offset : torch.Tensor
        The run's systematic mass error (ppm) expected at the ion's m/z (its calibration).
    peak_rt, ion_rt : torch.Tensor
        Observed RT and library RT (minutes); ``ion_rt`` is NaN where the library has none.
    expected_rt : torch.Tensor
        The library RT mapped to this run (its calibration); NaN where the library has none.
    log_adduct_prior, log_abundance : torch.Tensor
        Of the ion (the adduct's prior share; the isotope peak against the monoisotopic one).
    log_intensity : torch.Tensor
        Of the peak (NaN where the table has no intensity).
    log_count : torch.Tensor
        log of the number of candidates of the peak.
    """

    peak: torch.Tensor
    ion: torch.Tensor
    ppm_error: torch.Tensor
    ppm_offset: torch.Tensor
    peak_rt: torch.Tensor
    ion_rt: torch.Tensor
    expected_rt: torch.Tensor
    log_adduct_prior: torch.Tensor
    log_abundance: torch.Tensor
    log_intensity: torch.Tensor
    log_count: torch.Tensor

    def take(self, index: torch.Tensor) -> PairFeatures:
        """The pairs at ``index`` (a permutation or a subset)."""
        return PairFeatures(**{k: v[index] for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return int(self.peak.shape[0])


def pair_features(peak_idx, ion_idx, peaks: dict, ions: dict) -> PairFeatures:
    """Gather the features of candidate pairs.

    Parameters
    ----------
    peak_idx, ion_idx : torch.Tensor (int64)
        Pairs, as returned by :func:`dask_assign.filtering.join.range_join`.
    peaks : dict of torch.Tensor
        ``mz``, ``rt``, ``intensity`` of the partition's peaks.
    ions : dict of torch.Tensor
        ``mz``, ``rt``, ``log_adduct_prior``, ``log_abundance`` of the ion table, and its
        calibration: ``ppm_offset`` and ``mapped_rt`` (from
        :func:`~dask_assign.filtering.space.calibrated_ions`).

    Returns
    -------
    PairFeatures
    """
    ion_mz = ions["mz"][ion_idx]
    n_peaks = peaks["mz"].shape[0]
    count = torch.bincount(peak_idx, minlength=n_peaks).to(ion_mz.dtype)
    return PairFeatures(
        peak=peak_idx,
        ion=ion_idx,
        ppm_error=(peaks["mz"][peak_idx] - ion_mz) / ion_mz * 1e6,
        ppm_offset=ions["ppm_offset"][ion_idx],
        peak_rt=peaks["rt"][peak_idx],
        ion_rt=ions["rt"][ion_idx],
        expected_rt=ions["mapped_rt"][ion_idx],
        log_adduct_prior=ions["log_adduct_prior"][ion_idx],
        log_abundance=ions["log_abundance"][ion_idx],
        log_intensity=torch.log(peaks["intensity"][peak_idx]),
        log_count=torch.log(count[peak_idx]),
    )
