"""One dispatch for the two backends: pandas or cudf frames, CPU or CUDA tensors.

Frames: :data:`to_pandas` and :data:`concat` are :class:`dask.utils.Dispatch` on the frame's
type (pandas objects pass through or go to pandas; cudf's are registered lazily, on first
sight, so cudf is never imported where it is not used).

Kernels: every CPU/CUDA twin (the range join, the ranking within peaks, the drift votes, the
run's curves, the context pass's isotope and sibling odds) has a compiled CPU kernel (numba)
and a torch one that also runs on CUDA. :func:`compiled` is the one rule that picks between
them, so every twin is chosen alike and every pair is tested equal by one parametrised test
(``tests/test_backends.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from dask.utils import Dispatch

#: Values of a twin's ``kernel`` argument: ``auto`` follows the tensors' device; ``numba``
#: and ``torch`` force one (the equivalence tests run both on the CPU).
KERNELS = ("auto", "numba", "torch")

#: A frame, series or index as pandas (a copy to host for cudf).
to_pandas = Dispatch("to_pandas")
#: ``pandas.concat`` or ``cudf.concat``, dispatched on the first frame (see :func:`concat`).
concat_frames = Dispatch("concat_frames")


@to_pandas.register((pd.DataFrame, pd.Series, pd.Index, np.ndarray))
def _pandas_as_is(obj):
    return obj


def concat(frames, **kwargs):
    """Frames of one backend, concatenated by that backend (keywords as ``pandas.concat``)."""
    return concat_frames(frames[0], frames, **kwargs)


@concat_frames.register(pd.DataFrame)
def _concat_pandas(first, frames, **kwargs):
    return pd.concat(frames, **kwargs)


@to_pandas.register_lazy("cudf")
@concat_frames.register_lazy("cudf")
def _register_cudf():
    import cudf

    @to_pandas.register((cudf.DataFrame, cudf.Series, cudf.Index))
    def _cudf_to_pandas(obj):
        return obj.to_pandas()

    @concat_frames.register(cudf.DataFrame)
    def _concat_cudf(first, frames, **kwargs):
        return cudf.concat(frames, **kwargs)


def compiled(*tensors, kernel: str = "auto") -> bool:
    """Whether a twin runs its compiled CPU kernel for these tensors.

    Parameters
    ----------
    *tensors : torch.Tensor
        The kernel's inputs; ``auto`` takes the compiled kernel when all are on the CPU.
    kernel : {"auto", "numba", "torch"}

    Examples
    --------
    >>> import torch
    >>> compiled(torch.zeros(2)), compiled(torch.zeros(2), kernel="torch")
    (True, False)
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    if kernel != "auto":
        return kernel == "numba"
    return all(t.device.type == "cpu" for t in tensors)
