"""The tasks of a run's graph: small functions of one partition or RT block, named so the
dashboard shows what runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dask_assign.backends import concat
from dask_assign.calibration import mass_search as mass_search_module
from dask_assign.calibration.drift import (
    drift_votes,
)
from dask_assign.calibration.em import (
    em_statistics,
    fit_calibration,
)
from dask_assign.calibration.peaks import peak_summary, sampled
from dask_assign.context.evidence import apply_context
from dask_assign.scoring.passes import first_pass, second_pass
from dask_assign.scoring.tables import to_tables

#: RT values per partition in the sketch that places the block edges.
EDGE_SAMPLE = 2000



def summarize_peaks(part):
    """Task: sums and ranges of one partition (for the run context)."""
    return peak_summary(part)


def drift_search(part, space, config, fraction, calibration):
    """Task: mass-only votes of one partition for the library-to-run RT map."""
    return drift_votes(part, space, config, fraction, calibration)


def mass_search(part, space, config, fraction, edges):
    """Task: RT-free votes of one partition for the run's mass-offset curve."""
    return mass_search_module.mass_search(part, space, config, fraction, edges)


def sample_peaks(part, fraction):
    """Task: the peaks of a partition that calibration looks at (a sample by peak id)."""
    return part[sampled(part, fraction)]


def em_step(part, space, config, calibration):
    """Task: the E-step of calibration on one partition."""
    return em_statistics(part, space, config, calibration)


def em_fit(part, space, config, start):
    """Task: the whole EM of calibration on a sample that is one partition: the same E- and
    M-steps as a graph per step, without a round trip to the client between them."""
    return fit_calibration(lambda c: em_statistics(part, space, config, c).sum().to_dict(),
                           start, config, space)


def rt_sketch(part) -> pd.DataFrame:
    """Task: evenly spaced order statistics of a partition's RTs, each weighing the peaks it
    stands for."""
    rt = np.sort(part["rt"].to_numpy(dtype=np.float64))
    if rt.size > EDGE_SAMPLE:
        rt = rt[np.linspace(0, rt.size - 1, EDGE_SAMPLE).round().astype(np.int64)]
    return pd.DataFrame({"rt": rt, "w": np.full(rt.size, len(part) / max(rt.size, 1))})


def split_by_rt(part, edges: np.ndarray, halo: float):
    """Task: the rows of a partition for each RT block, halo included (a row near an edge
    goes to both blocks)."""
    rt = part["rt"].to_numpy(dtype=np.float64)
    lo = np.r_[-np.inf, edges] - halo
    hi = np.r_[edges, np.inf] + halo
    return tuple(part[(rt >= a) & (rt < b)] for a, b in zip(lo, hi, strict=True))


def rt_block(pieces, edges: np.ndarray, k: int):
    """Task: block ``k``: its pieces from every partition, in one canonical order (RT, m/z,
    peak id), with ``core`` marking the peaks that belong to it (not to its halo)."""
    block = concat(list(pieces), ignore_index=True)
    # Peak ids are unique, so this order is total: the same rows, the same order, whatever
    # the blocks (pandas and cudf alike).
    block = block.sort_values(["rt", "mz", "peak_id"], ignore_index=True) if len(block) \
        else block
    rt = block["rt"].to_numpy(dtype=np.float64)
    lo = -np.inf if k == 0 else edges[k - 1]
    hi = np.inf if k == len(edges) else edges[k]
    block["core"] = (rt >= lo) & (rt < hi)
    return block


def kept_pairs(part, space, config, calibration) -> pd.DataFrame:
    """Task: peaks and kept candidate pairs (first pass, then refinement) of a partition."""
    result = second_pass(first_pass(part.reset_index(drop=True), space, config, calibration),
                         space, config, calibration)
    return pd.DataFrame({"n": [float(len(part))], "kept": [float(len(result.scored.features))]})


def join_and_score(block, space, config, calibration):
    """Task: the candidate join and first-pass scores of the own peaks of a block."""
    core = block[block["core"]].drop(columns="core") if "core" in block.columns else block
    return first_pass(core.reset_index(drop=True), space, config, calibration)


def refine_partition(result, space, config, calibration):
    """Task: the second pass over the low-confidence peaks of one block."""
    return second_pass(result, space, config, calibration)


def add_context(result, block, space, config, calibration, model):
    """Task: the context pass of one block (its own peaks; the halo only as partners)."""
    if model is None:
        return result
    core_rows = np.flatnonzero(block["core"].to_numpy(dtype=bool))
    return apply_context(result, block, core_rows, space, config, calibration, model)


def block_table(result, space, which: int):
    """Task: the assignments (``which=0``) or candidates (``1``) table of an annotated block,
    in the backend of its peaks."""
    return _to_backend_of(result.part, to_tables(result, space)[which])


def _to_backend_of(part, frame: pd.DataFrame):
    if isinstance(part, pd.DataFrame):
        return frame
    import cudf  # a cudf partition came in: hand one back

    return cudf.from_pandas(frame)
