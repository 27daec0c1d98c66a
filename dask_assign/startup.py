"""What a process does once when it starts to annotate: import the stack (torch, numba,
pandas, dask, distributed) out of the garbage collector's way. Stdlib only, so that the
command line can use it before importing anything heavy."""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def frozen_imports():
    """Import inside this block with the collector off, then freeze what was made.

    Imports make long-lived objects, yet every full collection walked all of them again (six
    in a small run, 0.7 s in all: ``benchmarks/NOTES.md``). Garbage made later is collected as
    usual; the collector's earlier state (on or off) is restored.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
