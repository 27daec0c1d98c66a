"""dask-assign: probabilistic LC-MS peak annotation at scale on Dask.

For every peak: the most probable library compound, adduct and 13C isotope, the probability of
that call, and the probability that the peak is none of the library's compounds.
"""

from importlib.metadata import version
from pathlib import Path

from dask_assign.graph.run import assign, candidates, run
from dask_assign.io.library import read_library
from dask_assign.io.peaks import load_peaks, read_peaks

from .config import AssignConfig, Calibration, ScorerParams
from .errors import InputError

__version__ = version("dask-assign")
#: The shipped demo set (RepoRT 0392; CC BY-SA 4.0): peaks.csv, library.csv, truth.csv.
DEMO_DATA = Path(__file__).parent / "data" / "demo"
__all__ = ["DEMO_DATA", "AssignConfig", "Calibration", "InputError", "ScorerParams", "assign",
           "candidates", "load_peaks", "read_library", "read_peaks", "run", "__version__"]
