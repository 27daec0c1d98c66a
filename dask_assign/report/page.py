"""The report page: every figure of :mod:`dask_assign.report.figures`, linked, in one
self-contained HTML file (bokeh's JavaScript inlined: the page opens with no network)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import Div, TabPanel, Tabs
from bokeh.resources import INLINE

from dask_assign.report import figures as F
from dask_assign.report.data import MAX_POINTS, ReportData, load_result
from dask_assign.report.review import ReviewRule

#: The page's template (bokeh's standalone page, extended): the package's mark comes first in
#: the head, where :func:`dask_assign.files.is_marked` looks for it, before bokeh's scripts.
TEMPLATE = """
{% block preamble %}{{ mark }}
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; }
  .da { max-width: 1400px; margin: 1em auto 0; padding: 0 1em; }
  .da table { border-collapse: collapse; margin: 0.4em 1.5em 0.8em 0; display: inline-table;
              vertical-align: top; font-size: 13px; }
  .da td, .da th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
  .da td:first-child, .da th { text-align: left; background: #f6f6f6; }
  .da p, .da li { font-size: 14px; line-height: 1.4; max-width: 1300px; }
  .da pre { font-size: 12px; max-height: 30em; overflow: auto; background: #f6f6f6; }
  .da-root { margin: 0 auto; width: 1400px; }
</style>
{% endblock %}
{% block contents %}
<div class="da">{{ header }}</div>
<div class="da-root">{{ super() }}</div>
<div class="da">{{ footer }}</div>
{% endblock %}
"""


def build_layout(data: ReportData):
    """Every figure of the page, linked through one set of sources.

    Parameters
    ----------
    data : ReportData

    Returns
    -------
    bokeh.layouts.column
        The page's root: the run map beside the peak inspector, the review queue and the
        table of calls (tabs), the two error models, then the confidence histogram, the
        reliability diagram (with a truth table) and the counts by adduct and isotopologue.
    """
    src = data.sources()
    queue = F.review_table(data, src)
    calls = F.calls_table(data, src, queue=queue.children[1])
    tabs = Tabs(name="tables", tabs=[
        TabPanel(child=queue, title=f"Review queue ({len(data.queue):,})"),
        TabPanel(child=calls, title=f"All calls ({len(data.shown):,} drawn)")])
    counts = [F.confidence_histogram(data, src)]
    if data.graded is not None:
        counts.append(F.reliability_diagram(data, src))
    counts += [F.adduct_counts(data, src), F.isotope_counts(data, src)]
    note = Div(width=1380, text=(
        "<b>Linked views.</b> Select peaks in any view (click; box or lasso select with "
        "the tools on the right of each plot; shift adds), in a table row, or by tapping a "
        "bar: they are selected everywhere. Click a legend entry to hide a kind of call. "
        f"{html.escape(data.sampling_note())}"), styles={"font-size": "13px"})
    return column(note, row(F.run_map(data, src), F.peak_inspector(data, src)), tabs,
                  row(F.mass_error(data, src), F.rt_residual(data, src)), row(*counts),
                  name="report")


def _table(rows: dict) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows.items())
    return f"<table>{cells}</table>"


def _fmt(v):
    return round(v, 4) if isinstance(v, float) else v


def _calibration_words(data: ReportData) -> dict:
    cal = data.calibration
    offsets = cal.mass_offsets
    words = {
        "mass offset (ppm)": f"{min(offsets):.2f} to {max(offsets):.2f} over m/z "
                             f"{cal.mass_knots[0]:.0f}-{cal.mass_knots[-1]:.0f}",
        "mass spread sigma (ppm)": f"{cal.mass_sigma_ppm:.2f}",
        "RT map": f"library RT {cal.rt_knots[0]:.2f}-{cal.rt_knots[-1]:.2f} min to run RT "
                  f"{cal.rt_values[0]:.2f}-{cal.rt_values[-1]:.2f} min "
                  f"({len(cal.rt_knots)} knots)",
        "library RTs trusted": f"{1 - cal.rt_tail_share:.1%} within sigma "
                               f"{cal.rt_sigma:.3f} min; the rest off by a t tail of "
                               f"scale {cal.rt_tail_sigma:.2f} min",
        "prior of 'not in library'": f"{cal.null_prior:.3f}",
        "co-elution tolerance (min)": f"{data.rt_tol:.3f} ({data.rt_tol_source})",
        "EM iterations": cal.iterations,
    }
    return words


def _header(data: ReportData) -> str:
    summary = data.manifest.get("summary") or {}
    rows = {k: _fmt(v) for k, v in summary.items() if not isinstance(v, dict)} or {
        "peaks": len(data.peaks), "assigned": int(data.peaks["compound_id"].notna().sum())}
    parts = [f"<h1>dask-assign report</h1><p>{html.escape(data.title)}</p>",
             "<h3>Run</h3>" + _table(rows),
             "<h3>Fitted error models</h3>" + _table(_calibration_words(data))]
    if data.scores:
        parts.append("<h3>Against the truth</h3>" + _table(
            {k: v for k, v in data.scores.items() if not (isinstance(v, float)
                                                           and math.isnan(v))}))
    return "\n".join(parts)


def _footer(data: ReportData) -> str:
    cal = json.dumps(data.calibration.to_dict(), indent=1)
    settings = json.dumps(data.manifest.get("config", {}), indent=1, default=str)
    return ("<h3>Settings and calibration</h3>"
            f"<details><summary>settings</summary><pre>{html.escape(settings)}</pre></details>"
            f"<details><summary>calibration</summary><pre>{html.escape(cal)}</pre></details>"
            "<p>Made by dask-assign. The figures are in <code>dask_assign.report.figures</code> "
            "for notebooks.</p>")


def page_html(data: ReportData) -> str:
    """The whole page as one HTML string (bokeh's JavaScript and CSS inlined).

    Parameters
    ----------
    data : ReportData

    Returns
    -------
    str
    """
    from dask_assign.files import HTML_MARK

    return file_html(build_layout(data), resources=INLINE,
                     title=f"dask-assign report: {Path(data.title).name or 'result'}",
                     template=TEMPLATE, template_variables={
                         "mark": HTML_MARK, "header": _header(data), "footer": _footer(data)})


def write_report(result_dir, out=None, truth=None, rule: ReviewRule | None = None,
                 max_points: int = MAX_POINTS) -> Path:
    """Write the interactive report page of a result folder.

    Parameters
    ----------
    result_dir : str or Path
        A folder written by ``dask-assign run`` (assignments, candidates, calibration,
        manifest).
    out : str or Path, optional
        Where to write; ``RESULT_DIR/report.html`` by default. An existing file there is
        replaced only if it is an earlier report (it carries the package's mark).
    truth : str or Path, optional
        A truth table (``peak_id``, ``compound_id``) for the scores and reliability diagram.
    rule : ReviewRule, optional
        The review queue's thresholds (:mod:`dask_assign.report.review`'s defaults).
    max_points : int
        Peaks drawn at most; beyond, the review queue first, then a seeded sample
        (:mod:`dask_assign.report.data`).

    Returns
    -------
    Path
        The page written.
    """
    from dask_assign.files import check_own_file, replace_own_file

    folder = Path(result_dir)
    target = check_own_file(Path(out) if out else folder / "report.html")  # before any work
    data = load_result(folder, truth=truth, rule=rule or ReviewRule(), max_points=max_points)
    text = page_html(data)
    return replace_own_file(target, lambda p: p.write_text(text, encoding="utf-8"))
