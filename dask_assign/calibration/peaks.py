"""What calibration reads of the peaks before any fit: sums and ranges (the run context,
the intensity scale and detection limit), a check of the RT units, and a deterministic
sample by peak id."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dask_assign.backends import to_pandas
from dask_assign.calibration.curves import Curve
from dask_assign.calibration.em import MASS_KNOTS, RT_KNOTS, START_TAIL_SHARE, prior_normaliser
from dask_assign.config import AssignConfig, Calibration
from dask_assign.errors import InputError
from dask_assign.filtering.space import SearchSpace, main_adduct

#: Sums over peaks that set the run context (spans, intensity scale).
#: Bins of the log10 intensity histograms (the detection limit, the isotope detection rates).
LOG10_INTENSITY_BINS = np.arange(-2.0, 14.0 + 1e-9, 0.05)


#: Quantile of the peaks' intensities taken as the detection limit.
DETECT_QUANTILE = 0.01


SUMMARY_COLUMNS = ("n", "mz_min", "mz_max", "rt_min", "rt_max", "li_n", "li_sum", "li_sq",
                   *(f"hist{k}" for k in range(LOG10_INTENSITY_BINS.size - 1)))


def peak_summary(part) -> pd.DataFrame:
    """One row of sums and ranges of a partition (combined over partitions by the caller)."""
    li = np.log(part["intensity"].to_numpy(dtype=np.float64, na_value=np.nan))
    li = li[np.isfinite(li)]
    mz = part["mz"].to_numpy(dtype=np.float64)
    rt = part["rt"].to_numpy(dtype=np.float64)
    empty = len(part) == 0
    hist = np.histogram(li / math.log(10), LOG10_INTENSITY_BINS)[0].astype(np.float64)
    return pd.DataFrame({
        "n": [float(len(part))],
        "mz_min": [np.inf if empty else mz.min()], "mz_max": [-np.inf if empty else mz.max()],
        "rt_min": [np.inf if empty else rt.min()], "rt_max": [-np.inf if empty else rt.max()],
        "li_n": [float(li.size)], "li_sum": [li.sum()], "li_sq": [(li * li).sum()],
        **{f"hist{k}": [v] for k, v in enumerate(hist)},
    })


def detection_limit(hist: np.ndarray) -> float:
    """Natural log of the intensity below which peaks are rarely detected: the
    ``DETECT_QUANTILE`` of a log10 intensity histogram (``-inf`` without intensities)."""
    if hist.sum() <= 0:
        return float("-inf")
    k = int(np.searchsorted(np.cumsum(hist) / hist.sum(), DETECT_QUANTILE))
    return float(LOG10_INTENSITY_BINS[k] * math.log(10))


#: Peak and library RT ranges further apart than this factor mean different units.
RT_UNIT_FACTOR = 4.0


def check_rt_units(peak_rt_max: float, library_rt: np.ndarray):
    """Refuse a run whose peak RTs and library RTs cannot be in the same unit.

    Seconds read as minutes (or the reverse) put every RT a factor of 60 off; an RT window
    would then match nothing, or everything, silently.

    Raises
    ------
    InputError
    """
    known = library_rt[np.isfinite(library_rt)]
    if known.size == 0 or not np.isfinite(peak_rt_max):
        return
    lib_max = float(known.max())
    if peak_rt_max > RT_UNIT_FACTOR * lib_max + 1 or lib_max > RT_UNIT_FACTOR * peak_rt_max + 1:
        raise InputError(
            "peak table", f"retention times reach {peak_rt_max:g} min while the library's "
            f"reach {lib_max:g} min: the units differ (set --rt-unit for the peaks or "
            "--library-rt-unit for the library)", column="rt")


def run_context(summary: pd.DataFrame, space: SearchSpace, config: AssignConfig) -> Calibration:
    """The default calibration of a run, from the combined peak summary and the ion table."""
    s = {
        "n": summary["n"].sum(), "mz_min": summary["mz_min"].min(),
        "mz_max": summary["mz_max"].max(), "rt_min": summary["rt_min"].min(),
        "rt_max": summary["rt_max"].max(), "li_n": summary["li_n"].sum(),
        "li_sum": summary["li_sum"].sum(), "li_sq": summary["li_sq"].sum(),
    }
    check_rt_units(s["rt_max"], space.rt)
    hist = summary[[f"hist{k}" for k in range(LOG10_INTENSITY_BINS.size - 1)]].sum().to_numpy()
    p = config.scorer
    # The background is uniform over the searched space; floors keep tiny inputs sensible.
    mz_span_ppm = max(math.log(max(s["mz_max"], 1.0) / max(s["mz_min"], 1.0)) * 1e6,
                      100 * config.ppm)
    rt_span = max(s["rt_max"] - s["rt_min"], 1.0)
    # The EM sees the main adduct's ions only: its prior is spread over them.
    log_prior_mass = prior_normaliser(space, p, space.log_adduct_prior, main_adduct(space))
    known = space.rt[np.isfinite(space.rt)]
    rt_lo, rt_hi = (float(known.min()), float(known.max())) if known.size else (0.0, 1.0)
    mass = Curve.line(p.mass_offset_ppm, 0.0, s["mz_min"] if np.isfinite(s["mz_min"]) else 0.0,
                      s["mz_max"] if np.isfinite(s["mz_max"]) else 1.0, MASS_KNOTS)
    rt_map = Curve.line(0.0, 1.0, rt_lo, rt_hi, RT_KNOTS)
    if s["li_n"] >= 2:
        center = s["li_sum"] / s["li_n"]
        scale = math.sqrt(max(s["li_sq"] / s["li_n"] - center * center, 1e-6))
    else:
        center, scale = 0.0, 1.0
    return Calibration(
        mass_knots=mass.knots, mass_offsets=mass.values, mass_sigma_ppm=p.mass_sigma_ppm,
        rt_knots=rt_map.knots, rt_values=rt_map.values, rt_sigma=p.rt_sigma,
        # Until the data say how far library RTs hold, half of them are taken to be off.
        rt_tail_share=START_TAIL_SHARE, rt_tail_sigma=rt_span / 4,
        null_prior=p.null_prior, rt_span=rt_span,
        log_volume=math.log(mz_span_ppm * rt_span), log_prior_mass=log_prior_mass,
        log_intensity_center=center, log_intensity_scale=max(scale, 0.1),
        log_detect=detection_limit(hist), iterations=0,
    )


def sampled(part, fraction: float) -> np.ndarray:
    """A deterministic sample of a partition's peaks: by a hash of the peak id, so the same
    peaks are picked however the table is partitioned."""
    if fraction >= 1:
        return np.ones(len(part), dtype=bool)
    ids = part["peak_id"]
    ids = to_pandas(ids)
    h = pd.util.hash_array(ids.to_numpy(dtype=object)) % np.uint64(1 << 20)
    return h < np.uint64(int(fraction * (1 << 20)))
