"""dask-assign: probabilistic LC-MS peak annotation at scale on Dask.

For every peak: the most probable library compound, adduct and isotopologue, the probability
of that call, and the probability that the peak is none of the library's compounds.

The names below are imported on first use, so that ``dask-assign --help`` and the settings
need neither torch nor dask.
"""

import importlib
from importlib.metadata import version
from pathlib import Path

__version__ = version("dask-assign")
#: The shipped demo set (RepoRT 0392; CC BY-SA 4.0): peaks.csv, library.csv, truth.csv.
DEMO_DATA = Path(__file__).parent / "data" / "demo"

#: Public names and the modules that hold them.
_EXPORTS = {
    "assign": "dask_assign.graph.run", "candidates": "dask_assign.graph.run",
    "run": "dask_assign.graph.run", "read_library": "dask_assign.io.library",
    "load_peaks": "dask_assign.io.peaks", "read_peaks": "dask_assign.io.peaks",
    "AssignConfig": "dask_assign.config", "Calibration": "dask_assign.config",
    "ScorerParams": "dask_assign.config", "InputError": "dask_assign.errors",
}
__all__ = ["DEMO_DATA", "__version__", *sorted(_EXPORTS)]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dask_assign' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
