"""The report's figures, one function each, returning a bokeh model.

Every function takes a :class:`~dask_assign.report.data.ReportData` (from
:func:`~dask_assign.report.load_result` or :func:`~dask_assign.report.prepare`) and, to link
views, the :class:`Sources` they share: figures built from one ``Sources`` select together
(a peak selected in one is selected in all; tapping a bar selects its peaks). Without
``sources`` a figure gets sources of its own. In a notebook::

    from bokeh.io import output_notebook, show
    from bokeh.layouts import column
    from dask_assign.report import figures, load_result

    data = load_result("out")
    src = data.sources()
    show(column(figures.run_map(data, src), figures.peak_inspector(data, src)))

Scatter views draw the peaks ``data.shown`` (all of them up to ``data.max_points``; see
:mod:`dask_assign.report.data`), with a grey 2-D histogram of all peaks underneath when some
are not drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from bokeh.layouts import column, row
from bokeh.models import (
    BooleanFilter,
    Button,
    CDSView,
    ColumnDataSource,
    CustomJS,
    DataTable,
    Div,
    GroupFilter,
    HoverTool,
    IndexFilter,
    LinearColorMapper,
    NumberFormatter,
    NumeralTickFormatter,
    Select,
    Span,
    StringFormatter,
    TableColumn,
    TextInput,
)
from bokeh.palettes import Greys256
from bokeh.plotting import figure

from dask_assign.report.data import CATEGORIES, COLOURS, ReportData
from dask_assign.report.review import REASONS

#: Bins of the confidence histogram.
CONFIDENCE_BINS = 20
#: Bins (x, y) of the grey density drawn under a scatter view of a sampled run.
DENSITY_BINS = (240, 160)
#: Peaks whose candidates and partners the inspector lists at once.
INSPECT_AT_MOST = 25
#: A curator's verdicts on a call (set on the page, downloaded with the queue as CSV).
VERDICTS = ("", "confirmed", "rejected", "other candidate", "not in library")
TOOLS = "pan,wheel_zoom,box_zoom,box_select,lasso_select,tap,reset,save"
_DENSITY = list(Greys256[215:60:-1])  # light grey (few peaks) to dark grey (many)
_TEXT_COLUMNS = ("peak_id", "compound_id", "name", "formula", "adduct", "isotope", "call",
                 "category", "runner_up", "reason", "truth", "correct")
_NUMBER_COLUMNS = ("mz", "rt", "intensity", "size", "prob", "p_null", "p_formula", "ppm_error",
                   "rt_error", "lib_rt", "rt_fit", "runner_prob", "n_candidates", "n_partners")


def _strings(values) -> list:
    """Strings for the browser: missing values as ``""``."""
    s = pd.Series(values, dtype=object)
    return s.where(s.notna(), "").astype(str).tolist()


@dataclass
class Sources:
    """The bokeh data sources that linked figures share.

    Attributes
    ----------
    peaks : ColumnDataSource
        One row per drawn peak (``data.shown``, in that order): the columns of the
        assignments table and the views' (``category``, ``call``, ``runner_up``, ...), and
        ``cand_start``/``cand_stop``, ``part_start``/``part_stop``: the peak's rows in the two
        sources below.
    candidates : ColumnDataSource
        The drawn peaks' candidates: the columns of ``candidates.parquet``, grouped by peak.
    partners : ColumnDataSource
        Their co-eluting partners (``of``: the peak, ``partner``: the partner's id, ...).
    """

    peaks: ColumnDataSource
    candidates: ColumnDataSource
    partners: ColumnDataSource

    @classmethod
    def of(cls, data: ReportData) -> Sources:
        """New sources holding ``data``'s drawn peaks."""
        shown = data.drawn
        cols = {}
        for c in _TEXT_COLUMNS:
            if c in shown:
                cols[c] = _strings(shown[c])
        for c in _NUMBER_COLUMNS:
            if c in shown:
                cols[c] = shown[c].to_numpy(dtype=np.float64, na_value=np.nan)
        if "intensity" not in cols:  # a result written before the tables carried it
            cols["intensity"] = np.full(len(shown), np.nan)
        for c in ("overflow", "refined", "context_changed", "in_queue"):
            cols[c] = shown[c].to_numpy(dtype=bool, na_value=False)
        cols["iso"] = np.where(shown["compound_id"].notna(), shown["isotope"].astype(object)
                               .fillna("M+0").to_numpy(), "").tolist()
        cols["row"] = data.shown.astype(np.int64)
        # Each peak's rows in the candidates and partners sources (both grouped by peak).
        for name, table in (("cand", data.candidates), ("part", data.partners)):
            counts = np.bincount(table["row"].to_numpy(dtype=np.int64),
                                 minlength=len(shown))[:len(shown)]
            stop = np.cumsum(counts)
            cols[f"{name}_start"], cols[f"{name}_stop"] = stop - counts, stop
        cols["verdict"] = [""] * len(shown)
        cols["note"] = [""] * len(shown)
        peaks = ColumnDataSource(cols, name="peaks")
        c = data.candidates
        candidates = ColumnDataSource({
            "peak_id": _strings(c["peak_id"]), "rank": c["rank"].to_numpy(dtype=np.int64),
            "compound_id": _strings(c["compound_id"]), "adduct": _strings(c["adduct"]),
            "isotope": _strings(c["isotope"]),
            **{k: c[k].to_numpy(dtype=np.float64, na_value=np.nan)
               for k in ("ppm_error", "rt_error", "prob")}}, name="candidates")
        p = data.partners
        other = data.peaks.iloc[p["partner"].to_numpy()]
        partners = ColumnDataSource({
            "of": _strings(shown["peak_id"].to_numpy()[p["row"].to_numpy()]),
            "partner": _strings(other["peak_id"]), "mz": other["mz"].to_numpy(np.float64),
            "rt": other["rt"].to_numpy(np.float64), "drt": p["drt"].to_numpy(np.float64),
            "adduct": _strings(other["adduct"]), "isotope": _strings(other["isotope"]),
            "prob": other["prob"].to_numpy(dtype=np.float64, na_value=np.nan)},
            name="partners")
        return cls(peaks, candidates, partners)


def _sources(data: ReportData, sources: Sources | None) -> Sources:
    return sources if sources is not None else Sources.of(data)


def _hover(data: ReportData, renderers) -> HoverTool:
    truth = ("<div>truth: @truth (@correct)</div>" if data.graded is not None else "")
    return HoverTool(renderers=renderers, tooltips=f"""
<div style="font-size:12px;max-width:380px">
<div><b>@peak_id</b> &nbsp; m/z @mz{{0.0000}} &nbsp; RT @rt{{0.000}} min</div>
<div>call: <b>@call</b></div>
<div>probability @prob{{0.000}} &nbsp; p_null @p_null{{0.000}}</div>
<div>runner-up: @runner_up (@runner_prob{{0.000}})</div>
<div>@category &nbsp; @reason</div>{truth}
</div>""")


def _density(fig, x, y, x_range=None, y_range=None):
    """A grey 2-D histogram of all peaks, under a view that draws only some of them."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    x, y = x[ok], y[ok]
    lo_x, hi_x = x_range or (x.min(), x.max())
    lo_y, hi_y = y_range or (y.min(), y.max())
    hi_x, hi_y = max(hi_x, lo_x + 1e-9), max(hi_y, lo_y + 1e-9)
    counts, _, _ = np.histogram2d(x, y, bins=DENSITY_BINS, range=[[lo_x, hi_x], [lo_y, hi_y]])
    image = np.where(counts > 0, np.log10(np.maximum(counts, 1)) + 1, np.nan).T
    mapper = LinearColorMapper(palette=_DENSITY, low=1, high=float(np.nanmax(image)),
                               nan_color=(0, 0, 0, 0))
    return fig.image(image=[image.astype(np.float32)], x=lo_x, y=lo_y, dw=hi_x - lo_x,
                     dh=hi_y - lo_y, color_mapper=mapper, level="image",
                     legend_label="all peaks (density)")


def _by_category(fig, src: Sources, x: str, y: str, mask=None, size="size") -> list:
    """One scatter renderer per kind of call (the legend hides or mutes each)."""
    present = set(src.peaks.data["category"])
    out = []
    # "Not in library" first: the calls are drawn over it.
    for k in (2, 0, 1, 3):
        cat, colour = CATEGORIES[k], COLOURS[k]
        if cat not in present:
            continue
        flt = GroupFilter(column_name="category", group=cat)
        if mask is not None:
            flt = flt & BooleanFilter(booleans=[bool(m) for m in mask])
        out.append(fig.scatter(
            x, y, source=src.peaks, view=CDSView(filter=flt), size=size, color=colour,
            alpha=0.75, line_color="white", line_width=0.4, legend_label=cat,
            selection_color=colour, selection_alpha=1.0, selection_line_color="black",
            selection_line_width=1.2, nonselection_alpha=0.12, nonselection_line_alpha=0.0))
    return out


def _finish(fig, renderers, data, outside=False):
    fig.add_tools(_hover(data, renderers))
    fig.toolbar.logo = None
    if not fig.legend:  # nothing drawn (a run without calls)
        return fig
    fig.legend.click_policy = "hide"
    fig.legend.location = "top_left"
    fig.legend.background_fill_alpha = 0.7
    fig.legend.label_text_font_size = "9pt"
    if outside:  # the residual clouds fill their views: the legend goes below them
        fig.add_layout(fig.legend[0], "below")
        fig.legend.orientation = "horizontal"
        fig.legend.ncols = 3
    return fig


def run_map(data: ReportData, sources: Sources | None = None):
    """The run map: m/z against RT of every peak, coloured by call, sized by intensity.

    Parameters
    ----------
    data : ReportData
    sources : Sources, optional
        Shared with the other figures to link them.

    Returns
    -------
    bokeh.plotting.figure
        Named ``run_map``. Hover shows peak id, m/z, RT, the call, its probability, p_null and
        the runner-up; the legend hides a kind of call when clicked.
    """
    src = _sources(data, sources)
    fig = figure(name="run_map", title="Run map: m/z against RT, coloured by call, sized by "
                 "intensity", width=900, height=540, tools=TOOLS, active_drag="box_select",
                 x_axis_label="RT (min)", y_axis_label="m/z", output_backend="canvas")
    if data.sampled:
        _density(fig, data.peaks["rt"], data.peaks["mz"])
    return _finish(fig, _by_category(fig, src, "rt", "mz"), data)


def mass_error(data: ReportData, sources: Sources | None = None):
    """Mass error of the calls against m/z, with the fitted offset curve and its spread.

    Parameters
    ----------
    data : ReportData
    sources : Sources, optional

    Returns
    -------
    bokeh.plotting.figure
        Named ``mass_error``: the calls' ppm error, the fitted systematic offset (a curve of
        m/z) and the band offset +/- 2 sigma of the fitted spread.
    """
    src = _sources(data, sources)
    cal = data.calibration
    called = data.peaks[data.peaks["compound_id"].notna()]
    sigma = cal.mass_sigma_ppm
    fig = figure(name="mass_error", title=f"Mass error against m/z (fitted spread sigma "
                 f"{sigma:.2f} ppm)", width=690, height=440, tools=TOOLS,
                 x_axis_label="m/z", y_axis_label="mass error (ppm)")
    if len(called):
        grid = np.linspace(called["mz"].min(), called["mz"].max(), 300)
        offset = np.asarray(cal.mass_offset(grid), dtype=np.float64)
        if data.sampled:
            _density(fig, called["mz"], called["ppm_error"])
        fig.varea(x=grid, y1=offset - 2 * sigma, y2=offset + 2 * sigma, color="#0072B2",
                  alpha=0.12, legend_label=f"+/- 2 x {sigma:.2f} ppm")
        fig.line(grid, offset, color="black", line_width=2, legend_label="fitted offset")
    mask = np.asarray(src.peaks.data["compound_id"], dtype=object) != ""
    return _finish(fig, _by_category(fig, src, "mz", "ppm_error", mask=mask, size=5), data,
                   outside=True)


def rt_residual(data: ReportData, sources: Sources | None = None):
    """RT residual (observed minus library RT) against library RT, with the fitted map.

    Parameters
    ----------
    data : ReportData
    sources : Sources, optional

    Returns
    -------
    bokeh.plotting.figure
        Named ``rt_residual``: the calls' residuals, the fitted library-to-run map (drawn as
        its shift, map(x) - x), and two bands: +/- 2 sigma of the library RTs that hold, and
        +/- 2 scales of the broad t tail (the share of library RTs the run does not trust).
    """
    src = _sources(data, sources)
    cal = data.calibration
    has = data.peaks[np.isfinite(data.peaks["lib_rt"])]
    share = cal.rt_tail_share
    fig = figure(name="rt_residual", title="RT residual against library RT, and the fitted "
                 "map", width=690, height=440, tools=TOOLS,
                 x_axis_label="library RT (min)", y_axis_label="observed - library RT (min)")
    if len(has):
        grid = np.linspace(has["lib_rt"].min(), has["lib_rt"].max(), 300)
        shift = np.asarray(cal.rt_map(grid), dtype=np.float64) - grid
        if data.sampled:
            _density(fig, has["lib_rt"], has["rt_error"])
        if share > 0:
            fig.varea(x=grid, y1=shift - 2 * cal.rt_tail_sigma, y2=shift + 2 * cal.rt_tail_sigma,
                      color="#D55E00", alpha=0.06, legend_label=f"RTs not trusted ({share:.1%}): "
                      f"+/- 2 x scale {cal.rt_tail_sigma:.2f} min")
        fig.varea(x=grid, y1=shift - 2 * cal.rt_sigma, y2=shift + 2 * cal.rt_sigma,
                  color="#0072B2", alpha=0.15, legend_label=f"RTs trusted ({1 - share:.1%}): "
                  f"+/- 2 x {cal.rt_sigma:.3f} min")
        fig.line(grid, shift, color="black", line_width=2, legend_label="fitted map")
        lo = float(np.nanpercentile(has["rt_error"], 0.5))
        hi = float(np.nanpercentile(has["rt_error"], 99.5))
        pad = max(hi - lo, 6 * cal.rt_sigma) * 0.15
        fig.y_range.start, fig.y_range.end = lo - pad, hi + pad  # outliers stay reachable
    mask = np.isfinite(np.asarray(src.peaks.data["lib_rt"], dtype=np.float64))
    return _finish(fig, _by_category(fig, src, "lib_rt", "rt_error", mask=mask, size=5), data,
                   outside=True)


_SELECT_RANGE = """
const i = bars.selected.indices;
if (i.length === 0) { return; }
const p = peaks.data[field];
const out = [];
for (let r = 0; r < p.length; r++) {
  for (const k of i) {
    const lo = bars.data.lo[k], hi = bars.data.hi[k];
    if (p[r] >= lo && (p[r] < hi || (hi >= 1 && p[r] <= hi))) { out.push(r); break; }
  }
}
peaks.selected.indices = out;
"""
_SELECT_VALUE = """
const i = bars.selected.indices;
if (i.length === 0) { return; }
const keys = new Set(i.map(k => bars.data.key[k]));
const v = peaks.data[field];
const out = [];
for (let r = 0; r < v.length; r++) { if (keys.has(v[r])) { out.push(r); } }
peaks.selected.indices = out;
"""


def confidence_histogram(data: ReportData, sources: Sources | None = None):
    """Histogram of the probability of the calls, stacked by kind of call (all peaks).

    Parameters
    ----------
    data : ReportData
    sources : Sources, optional

    Returns
    -------
    bokeh.plotting.figure
        Named ``confidence``. Dashed lines mark the review queue's thresholds; tapping a bar
        selects its drawn peaks in the linked views.
    """
    src = _sources(data, sources)
    edges = np.linspace(0, 1, CONFIDENCE_BINS + 1)
    prob = data.peaks["prob"].to_numpy(dtype=np.float64, na_value=np.nan)
    cols = {"lo": edges[:-1], "hi": edges[1:], "mid": (edges[:-1] + edges[1:]) / 2}
    total = np.zeros(CONFIDENCE_BINS)
    for cat in CATEGORIES:
        p = prob[(data.peaks["category"] == cat).to_numpy()]
        cols[cat] = np.histogram(p[np.isfinite(p)], bins=edges)[0].astype(np.float64)
        total += cols[cat]
    cols["total"] = total
    bars = ColumnDataSource(cols, name="confidence_bins")
    fig = figure(name="confidence", title="Confidence: probability of the call (all peaks)",
                 width=460, height=340, tools="tap,reset,save", x_range=(0, 1),
                 x_axis_label="probability of the call", y_axis_label="peaks")
    fig.vbar_stack(list(CATEGORIES), x="mid", width=1 / CONFIDENCE_BINS * 0.92, source=bars,
                   color=list(COLOURS), legend_label=list(CATEGORIES),
                   nonselection_fill_alpha=0.35)
    for t in (data.rule.low, data.rule.high):
        fig.add_layout(Span(location=t, dimension="height", line_dash="dashed",
                            line_color="#444444"))
    fig.add_tools(HoverTool(tooltips="[@lo{0.00}, @hi{0.00}): @total{0,0} peaks"))
    fig.yaxis.formatter = NumeralTickFormatter(format="0,0")
    fig.legend.location = "top_left"
    fig.legend.label_text_font_size = "8pt"
    fig.toolbar.logo = None
    bars.selected.js_on_change("indices", CustomJS(
        args={"bars": bars, "peaks": src.peaks, "field": "prob"}, code=_SELECT_RANGE))
    return fig


def reliability_diagram(data: ReportData, sources: Sources | None = None):
    """Observed accuracy against predicted probability, against the truth.

    The bins are :func:`dask_assign.report.evaluate.reliability_table`'s (those of the ECE).

    Parameters
    ----------
    data : ReportData
        Built with a truth table.
    sources : Sources, optional

    Returns
    -------
    bokeh.plotting.figure
        Named ``reliability``: one point per bin (area by peaks), the diagonal; tapping a
        point selects the bin's drawn peaks.

    Raises
    ------
    ValueError
        Without a truth table.
    """
    from dask_assign.report.evaluate import reliability_table

    if data.graded is None:
        raise ValueError("the reliability diagram needs a truth table (load_result(truth=...))")
    src = _sources(data, sources)
    table = reliability_table(data.graded)
    table["radius"] = 4 + 14 * np.sqrt(table["n"] / max(table["n"].max(), 1))
    bins = ColumnDataSource(table, name="reliability_bins")
    fig = figure(name="reliability", title=f"Reliability against the truth (ECE "
                 f"{data.scores['ece']})", width=400, height=340, tools="tap,reset,save",
                 x_range=(0, 1), y_range=(0, 1.02), x_axis_label="predicted probability",
                 y_axis_label="observed accuracy")
    fig.line([0, 1], [0, 1], color="#888888", line_dash="dashed")
    fig.line("mean_prob", "accuracy", source=bins, color="#0072B2", line_width=2)
    fig.scatter("mean_prob", "accuracy", size="radius", source=bins, color="#0072B2",
                alpha=0.8, nonselection_alpha=0.3)
    fig.add_tools(HoverTool(tooltips="[@lo{0.0}, @hi{0.0}]: @n peaks, mean probability "
                            "@mean_prob{0.000}, accuracy @accuracy{0.000}"))
    fig.toolbar.logo = None
    bins.selected.js_on_change("indices", CustomJS(
        args={"bars": bins, "peaks": src.peaks, "field": "prob"}, code=_SELECT_RANGE))
    return fig


def _counts(data: ReportData, src: Sources, key: pd.Series, field: str, name: str,
            title: str, horizontal: bool):
    called = data.peaks["compound_id"].notna()
    g = (data.peaks.loc[called].assign(key=key[called].to_numpy())
         .groupby("key")["prob"].agg(["size", "mean"]).sort_values("size", ascending=False))
    labels = [str(k) for k in g.index]
    bars = ColumnDataSource({"key": labels, "n": g["size"].to_numpy(np.float64),
                             "mean": g["mean"].to_numpy(np.float64)}, name=f"{name}_bars")
    kw = dict(width=400, height=max(260, 22 * len(labels) + 80) if horizontal else 300,
              tools="tap,reset,save", title=title)
    if horizontal:
        fig = figure(name=name, y_range=labels[::-1], x_axis_label="calls", **kw)
        fig.hbar(y="key", right="n", height=0.8, source=bars, color="#0072B2",
                 nonselection_fill_alpha=0.35)
    else:
        fig = figure(name=name, x_range=labels, y_axis_label="calls", **kw)
        fig.vbar(x="key", top="n", width=0.8, source=bars, color="#E69F00",
                 nonselection_fill_alpha=0.35)
        fig.xaxis.major_label_orientation = 0.8
    fig.add_tools(HoverTool(tooltips="@key: @n{0,0} calls, mean probability @mean{0.000}"))
    (fig.xaxis if horizontal else fig.yaxis).formatter = NumeralTickFormatter(format="0,0")
    fig.toolbar.logo = None
    bars.selected.js_on_change("indices", CustomJS(
        args={"bars": bars, "peaks": src.peaks, "field": field}, code=_SELECT_VALUE))
    return fig


def adduct_counts(data: ReportData, sources: Sources | None = None):
    """Calls by adduct (all peaks); tapping a bar selects its drawn peaks.

    Parameters
    ----------
    data : ReportData
    sources : Sources, optional

    Returns
    -------
    bokeh.plotting.figure
        Named ``adducts``.
    """
    return _counts(data, _sources(data, sources), data.peaks["adduct"].astype(object),
                   "adduct", "adducts", "Calls by adduct", horizontal=True)


def isotope_counts(data: ReportData, sources: Sources | None = None):
    """Calls by isotopologue (``M+0``: the monoisotopic ion); tapping a bar selects its peaks.

    Parameters
    ----------
    data : ReportData
    sources : Sources, optional

    Returns
    -------
    bokeh.plotting.figure
        Named ``isotopes``.
    """
    return _counts(data, _sources(data, sources),
                   data.peaks["isotope"].astype(object).fillna("M+0"), "iso", "isotopes",
                   "Calls by isotopologue", horizontal=False)


def _num(field, title, fmt="0.000", width=70):
    return TableColumn(field=field, title=title, width=width,
                       formatter=NumberFormatter(format=fmt, nan_format="", text_align="right"))


def _txt(field, title, width=90):
    return TableColumn(field=field, title=title, width=width, formatter=StringFormatter())


def _peak_columns(data: ReportData) -> list:
    cols = [_txt("peak_id", "peak", 80), _num("mz", "m/z", "0.0000", 80), _num("rt", "RT"),
            _txt("call", "call", 260), _txt("formula", "formula", 100),
            _num("prob", "prob"), _num("p_null", "p_null"), _num("p_formula", "p_formula"),
            _num("ppm_error", "ppm", "0.00", 55), _num("rt_error", "RT error", "0.000", 65),
            _num("n_candidates", "cands", "0", 45), _num("n_partners", "partners", "0", 55),
            _txt("runner_up", "runner-up", 200), _num("runner_prob", "runner-up prob"),
            _txt("category", "kind", 100), _txt("reason", "review", 140)]
    if data.graded is not None:
        cols += [_txt("truth", "truth", 100), _txt("correct", "right?", 55)]
    return cols


_SEARCH = """
const q = input.value_input.trim().toLowerCase();
const d = peaks.data, n = d.peak_id.length, cols = %s;
const rows = [], queued = [];
for (let r = 0; r < n; r++) {
  let hit = q.length === 0;
  for (const c of cols) {
    if (!hit && d[c] && String(d[c][r]).toLowerCase().includes(q)) { hit = true; }
  }
  if (hit) { rows.push(r); if (d.in_queue[r]) { queued.push(r); } }
}
calls.filter.indices = rows;
queue.filter.indices = queued;
count.text = q.length === 0 ? "" :
  `${rows.length} drawn peaks match "${q}" (${queued.length} in the queue)`;
"""
_SELECT_MATCHES = "peaks.selected.indices = Array.from(calls.filter.indices);"


def calls_table(data: ReportData, sources: Sources | None = None, queue=None):
    """The searchable, sortable table of calls (the drawn peaks).

    Parameters
    ----------
    data : ReportData
    sources : Sources, optional
    queue : bokeh.models.DataTable, optional
        The review queue's table (:func:`review_table`), filtered by the same search.

    Returns
    -------
    bokeh.layouts.column
        A search box (peak id, compound, name, formula, adduct, isotope, kind, review
        reason, truth), a button that selects the rows found, and the ``DataTable`` named
        ``calls_table`` (click a header to sort; a row selects the peak in every view).
    """
    src = _sources(data, sources)
    n = len(data.shown)
    view = CDSView(filter=IndexFilter(indices=list(range(n))))
    table = DataTable(name="calls_table", source=src.peaks, view=view,
                      columns=_peak_columns(data), width=1380, height=380, index_position=None,
                      reorderable=False, sortable=True, selectable=True, scroll_to_selection=True)
    search = TextInput(name="search", title="Search (peak, compound, name, formula, adduct, "
                       "isotope, kind, review reason, truth):", width=520)
    count = Div(text="", width=420)
    pick = Button(name="select_found", label="Select the rows found", width=200)
    fields = [c for c in ("peak_id", "call", "formula", "iso", "category", "reason", "truth")
              if c in src.peaks.data]
    queue_view = queue.view if queue is not None else CDSView(filter=IndexFilter(indices=[]))
    search.js_on_change("value_input", CustomJS(
        args={"input": search, "peaks": src.peaks, "calls": view, "queue": queue_view,
              "count": count}, code=_SEARCH % list(fields)))
    pick.js_on_event("button_click", CustomJS(args={"peaks": src.peaks, "calls": view},
                                              code=_SELECT_MATCHES))
    return column(row(search, pick, count), table)


_DOWNLOAD = """
const d = peaks.data, cols = ["peak_id", "mz", "rt", "compound_id", "name", "adduct", "isotope",
  "prob", "p_null", "reason", "verdict", "note"];
const esc = v => { const s = (v === undefined || v === null || Number.isNaN(v)) ? "" : String(v);
  return /[",\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; };
const lines = [cols.join(",")];
for (const r of rows) { lines.push(cols.map(c => esc(d[c] ? d[c][r] : "")).join(",")); }
const blob = new Blob([lines.join("\\n") + "\\n"], {type: "text/csv"});
const a = document.createElement("a");
a.href = URL.createObjectURL(blob); a.download = "review.csv";
document.body.appendChild(a); a.click(); a.remove();
"""
_VERDICT = """
const sel = peaks.selected.indices;
if (sel.length === 0) { return; }
peaks.patch({verdict: sel.map(r => [r, verdict.value]), note: sel.map(r => [r, note.value])});
"""


def review_table(data: ReportData, sources: Sources | None = None):
    """The review queue: the doubtful calls (:func:`~dask_assign.report.review.review_queue`).

    Parameters
    ----------
    data : ReportData
    sources : Sources, optional

    Returns
    -------
    bokeh.layouts.column
        A note on the rule, the ``DataTable`` named ``review_queue`` (least certain first),
        a verdict and a note to set on the selected peaks, and a button that downloads the
        queue with the verdicts as CSV (made in the browser: nothing leaves the machine).
    """
    src = _sources(data, sources)
    rows = np.flatnonzero(np.asarray(src.peaks.data["in_queue"], dtype=bool))
    rows = rows[np.argsort(_queue_rank(data)[rows], kind="stable")]
    view = CDSView(filter=IndexFilter(indices=rows.tolist()))
    table = DataTable(name="review_queue", source=src.peaks, view=view,
                      columns=[_txt("verdict", "verdict", 95), _txt("note", "note", 120)]
                      + _peak_columns(data), width=1380, height=380, index_position=None,
                      reorderable=False, sortable=True, selectable=True, scroll_to_selection=True)
    kinds = {r: int(data.queue["reason"].str.contains(r, regex=False).sum()) for r in REASONS}
    more = (f" The page holds {len(rows):,} of them (the least certain first, then those "
            "of the sample of the run); <code>dask_assign.report.review_queue</code> gives "
            "them all." if len(rows) < len(data.queue) else "")
    note = Div(width=1380, text=(
        f"<b>{len(data.queue):,} peaks to review</b> ("
        + ", ".join(f"{k}: {v:,}" for k, v in kinds.items())
        + f"). Rule: {data.rule.describe()}.{more} Select a row to see the peak's candidates "
        "and co-eluting partners above; give the selected peaks a verdict, then download the "
        "queue."))
    verdict = Select(name="verdict", title="verdict", value=VERDICTS[1],
                     options=list(VERDICTS), width=160)
    remark = TextInput(title="note", width=300)
    apply = Button(name="set_verdict", label="Set on the selected peaks", width=200,
                   align="end")
    apply.js_on_event("button_click", CustomJS(
        args={"peaks": src.peaks, "verdict": verdict, "note": remark}, code=_VERDICT))
    download = Button(name="download_queue", label="Download the queue with verdicts (CSV)",
                      width=300, align="end")
    download.js_on_event("button_click", CustomJS(
        args={"peaks": src.peaks, "rows": rows.tolist()}, code=_DOWNLOAD))
    return column(note, table, row(verdict, remark, apply, download))


def _queue_rank(data: ReportData) -> np.ndarray:
    """Position in the queue of each drawn peak (queue length for the others)."""
    rank = np.full(len(data.peaks), len(data.queue), dtype=np.int64)
    rank[data.queue.index.to_numpy()] = np.arange(len(data.queue))
    return rank[data.shown]


_INSPECT = """
const sel = peaks.selected.indices.slice(0, %d);
const d = peaks.data, c = [], p = [];
for (const r of sel) {
  for (let k = d.cand_start[r]; k < d.cand_stop[r]; k++) { c.push(k); }
  for (let k = d.part_start[r]; k < d.part_stop[r]; k++) { p.push(k); }
}
cand_view.filter.indices = c;
part_view.filter.indices = p;
const f = (v, n) => (v === null || v === undefined || Number.isNaN(v)) ? "-" : Number(v).toFixed(n);
const e = s => String(s).replace(/[&<>"]/g,
  ch => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[ch]));
const all = peaks.selected.indices.length;
if (all === 0) {
  info.text = "Select a peak (click it in a view, or a row of a table) to see its candidates " +
              "and co-eluting partners.";
} else if (all === 1) {
  const r = sel[0];
  info.text = `<b>${e(d.peak_id[r])}</b>: m/z ${f(d.mz[r], 4)}, RT ${f(d.rt[r], 3)} min, ` +
    `intensity ${f(d.intensity[r], 0)}<br>call: <b>${e(d.call[r])}</b> (${e(d.category[r])})<br>` +
    `probability ${f(d.prob[r], 3)}, p_null ${f(d.p_null[r], 3)}, ` +
    `p_formula ${f(d.p_formula[r], 3)}, ` +
    `runner-up ${e(d.runner_up[r])} (${f(d.runner_prob[r], 3)})<br>` +
    `${d.n_candidates[r]} candidates, ${d.n_partners[r]} partners in the context pass` +
    (d.reason[r] ? `; <b>review</b>: ${e(d.reason[r])}` : "") +
    (d.truth ? `<br>truth: ${e(d.truth[r])} (${e(d.correct[r])})` : "");
} else {
  info.text = `<b>${all} peaks selected</b>` + (all > sel.length ?
    `; the candidates and partners of the first ${sel.length} below.` : ".");
}
"""


def peak_inspector(data: ReportData, sources: Sources | None = None):
    """The selected peak, its candidates and its co-eluting partners.

    Parameters
    ----------
    data : ReportData
    sources : Sources, optional
        Selecting a peak in any view linked by these sources fills the inspector.

    Returns
    -------
    bokeh.layouts.column
        A text panel (named ``inspector``), the ``DataTable`` named ``candidates_table``
        (the rows of ``candidates.parquet`` of the selected peaks: compound, adduct,
        isotopologue, ppm and RT errors, probability) and the ``DataTable`` named
        ``partners_table`` (peaks called as the same compound within the co-elution
        tolerance, ``data.rt_tol``).
    """
    src = _sources(data, sources)
    cand_view = CDSView(filter=IndexFilter(indices=[]))
    part_view = CDSView(filter=IndexFilter(indices=[]))
    cands = DataTable(name="candidates_table", source=src.candidates, view=cand_view,
                      columns=[_txt("peak_id", "peak", 75), _num("rank", "rank", "0", 40),
                               _txt("compound_id", "compound", 110), _txt("adduct", "adduct", 95),
                               _txt("isotope", "isotope", 65),
                               _num("ppm_error", "ppm", "0.00", 55),
                               _num("rt_error", "RT error", "0.000", 65),
                               _num("prob", "prob", "0.0000", 65)],
                      width=470, height=230, index_position=None, reorderable=False, sortable=True)
    parts = DataTable(name="partners_table", source=src.partners, view=part_view,
                      columns=[_txt("of", "of peak", 75), _txt("partner", "partner", 75),
                               _num("mz", "m/z", "0.0000", 80), _num("rt", "RT", "0.000", 55),
                               _num("drt", "dRT", "0.000", 55), _txt("adduct", "adduct", 95),
                               _txt("isotope", "isotope", 60), _num("prob", "prob", "0.000", 50)],
                      width=470, height=150, index_position=None, reorderable=False, sortable=True)
    info = Div(name="inspector", width=470, height=120, text=(
        "Select a peak (click it in a view, or a row of a table) to see its candidates and "
        "co-eluting partners."), styles={"font-size": "12px", "overflow-y": "auto"})
    src.peaks.selected.js_on_change("indices", CustomJS(
        args={"peaks": src.peaks, "cand_view": cand_view, "part_view": part_view,
              "info": info}, code=_INSPECT % INSPECT_AT_MOST))
    return column(info, Div(text="<b>Candidates</b> (candidates.parquet)", width=470), cands,
                  Div(text=f"<b>Co-eluting partners</b>: peaks called as the same compound "
                      f"within {data.rt_tol:.3f} min ({data.rt_tol_source})", width=470), parts)
