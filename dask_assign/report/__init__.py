"""The report: one interactive, self-contained HTML page per run, for checking and curating
the calls, and its figures for notebooks.

``write_report(result_dir)`` writes the page (:mod:`.page`); ``load_result`` and ``prepare``
read a result for the figures (:mod:`.data`), which are one function each in
:mod:`.figures`; the review queue's rule is :mod:`.review`.
"""

from dask_assign.report.data import (
    MAX_POINTS,
    QUEUE_SHARE,
    ReportData,
    load_result,
    prepare,
    read_table,
)
from dask_assign.report.figures import (
    Sources,
    adduct_counts,
    calls_table,
    confidence_histogram,
    isotope_counts,
    mass_error,
    peak_inspector,
    reliability_diagram,
    review_table,
    rt_residual,
    run_map,
)
from dask_assign.report.page import build_layout, page_html, write_report
from dask_assign.report.review import ReviewRule, coeluting_partners, review_queue

__all__ = ["MAX_POINTS", "QUEUE_SHARE", "ReportData", "ReviewRule", "Sources", "adduct_counts",
           "build_layout", "calls_table", "coeluting_partners", "confidence_histogram",
           "isotope_counts", "load_result", "mass_error", "page_html", "peak_inspector",
           "prepare", "read_table", "reliability_diagram", "review_queue", "review_table",
           "rt_residual", "run_map", "write_report"]
