"""The report page of a real run: what it holds (read back from the page's own JSON, against
the Parquet tables and rules re-derived with pandas), and how it behaves in headless Chromium
cut off from the network."""

import base64
import gzip
import io
import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from dask_assign.config import AssignConfig
from dask_assign.files import is_marked
from dask_assign.graph.run import run
from dask_assign.report import (
    ReviewRule,
    figures,
    load_result,
    prepare,
    review_queue,
    write_report,
)
from dask_assign.report.review import (
    DOUBT_HIGH,
    DOUBT_LOW,
    ISOMER_TIE,
    MAX_PARTNERS,
    coeluting_partners,
)
from tests.browser import CHROMIUM, Browser
from tests.conftest import DEMO

# In CI the browser is part of the set-up (make test installs it): never skip there.
needs_browser = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                   reason="Debian's chromium is not installed")
FIGURES = ["run_map", "mass_error", "rt_residual", "confidence", "reliability", "adducts",
           "isotopes", "calls_table", "review_queue", "candidates_table", "partners_table",
           "inspector"]
CANDIDATE_COLUMNS = ["peak_id", "rank", "compound_id", "adduct", "isotope", "ppm_error",
                     "rt_error", "prob"]


@pytest.fixture(scope="module")
def result(local_client, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    run(DEMO / "peaks.csv", DEMO / "library.csv", out, AssignConfig(partition_size=400),
        client=local_client)
    return out


@pytest.fixture(scope="module")
def page(result, tmp_path_factory):
    return write_report(result, tmp_path_factory.mktemp("page") / "r.html",
                        truth=DEMO / "truth.csv")


# Reading the page back: bokeh's document JSON, its models and their data. ------------------

def _value(v):
    if isinstance(v, dict) and v.get("type") == "ndarray":
        raw = base64.b64decode(v["array"]["data"])
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return np.frombuffer(raw, dtype=np.dtype(v["dtype"]).newbyteorder(
            "<" if v["order"] == "little" else ">"))
    if isinstance(v, dict) and v.get("type") == "number":
        return float(v["value"])
    if isinstance(v, list):
        return [_value(x) for x in v]
    return v


def page_models(text: str) -> dict:
    """Every model defined in the page's document, by name (those without one left out)."""
    m = re.search(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', text,
                  re.S)
    doc = next(iter(json.loads(m.group(1)).values()))
    found = {}

    def walk(x):
        if isinstance(x, dict):
            if x.get("type") == "object" and "attributes" in x:
                found.setdefault(x["id"], x)
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc["roots"])
    by_name = {}
    for obj in found.values():
        name = obj["attributes"].get("name")
        if name:
            by_name[name] = (obj, found)
    return by_name


def source_data(models: dict, name: str) -> pd.DataFrame:
    obj, _ = models[name]
    entries = obj["attributes"]["data"]["entries"]
    return pd.DataFrame({k: _value(v) for k, v in entries})


def table_rows(models: dict, name: str) -> list[int]:
    """The rows of its source that a DataTable's view filter lets through."""
    obj, found = models[name]
    view = obj["attributes"]["view"]
    view = found.get(view["id"], view)
    flt = view["attributes"]["filter"]
    flt = found.get(flt["id"], flt)
    return list(_value(flt["attributes"]["indices"]))


# The page's content. -------------------------------------------------------------------------

def test_page_is_self_contained_and_marked(page, result, tmp_path):
    text = page.read_text()
    assert is_marked(page)  # replaced later only because it is the package's own
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)\s*=\s*["']?(https?:)?//""",
                         text, re.I)  # nothing fetched at view time: bokeh's JS is inlined
    assert "cdn.bokeh.org" not in text and text.count("<script") >= 3
    models = page_models(text)
    assert set(FIGURES) <= set(models)
    assert models["run_map"][0]["name"] == "Figure" and models["calls_table"][0]["name"] \
        == "DataTable"
    no_truth = page_models(write_report(result, tmp_path / "n.html").read_text())
    assert "reliability" not in no_truth and set(FIGURES) - {"reliability"} <= set(no_truth)


def _oracle_queue(a: pd.DataFrame, low=DOUBT_LOW, high=DOUBT_HIGH, tie=ISOMER_TIE) -> set:
    """The review rule, re-derived from the table with pandas."""
    prob, p_formula = a["prob"].astype(float), a["p_formula"].astype(float)
    doubtful = (prob >= low) & (prob < high)
    isomers = a["compound_id"].notna() & ((p_formula - prob) >= tie * prob)
    return set(a.loc[doubtful | isomers.fillna(False) | a["overflow"], "peak_id"])


@pytest.mark.parametrize("rule", [None, (0.4, 0.8)], ids=["default", "0.4-0.8"])
def test_review_queue_holds_exactly_the_rows_its_rule_selects(result, page, tmp_path, rule):
    a = pd.read_parquet(result / "assignments.parquet")
    if rule is None:
        text, want = page.read_text(), _oracle_queue(a)
        queue = review_queue(a)
    else:
        text = write_report(result, tmp_path / "q.html", rule=ReviewRule(*rule)).read_text()
        want, queue = _oracle_queue(a, *rule), review_queue(a, ReviewRule(*rule))
    assert 20 < len(want) < len(a) / 2  # a queue a curator can go through
    models = page_models(text)
    peaks = source_data(models, "peaks")
    shown = peaks["peak_id"].iloc[table_rows(models, "review_queue")]
    assert set(shown) == want and shown.is_unique
    assert set(queue["peak_id"]) == want
    probs = queue["prob"].fillna(-1).to_numpy()
    assert (np.diff(probs) >= 0).all()  # the least certain first
    assert list(shown) == list(queue["peak_id"])  # and so on the page
    assert set(peaks.loc[peaks["in_queue"].astype(bool), "peak_id"]) == want


def test_candidates_on_the_page_equal_candidates_parquet(result, page):
    models = page_models(page.read_text())
    peaks, cands = source_data(models, "peaks"), source_data(models, "candidates")
    truth = pd.read_parquet(result / "candidates.parquet")
    assert len(peaks) == len(pd.read_parquet(result / "assignments.parquet"))  # all drawn
    start, stop = peaks["cand_start"].to_numpy(int), peaks["cand_stop"].to_numpy(int)
    rows = np.concatenate([np.arange(a, b) for a, b in zip(start, stop, strict=True)])
    got = cands.iloc[rows].reset_index(drop=True)
    # Each peak's slice holds its own candidates...
    assert list(got["peak_id"]) == list(np.repeat(peaks["peak_id"].to_numpy(), stop - start))
    # ...and they are its rows of candidates.parquet, value for value, in rank order.
    place = pd.Series(np.arange(len(peaks)), index=peaks["peak_id"])
    want = (truth.assign(place=place.reindex(truth["peak_id"]).to_numpy())
            .sort_values(["place", "rank"], kind="stable").reset_index(drop=True))
    assert len(got) == len(want) == len(truth)
    for col in CANDIDATE_COLUMNS:
        w = want[col].astype(object).where(want[col].notna(), "")  # the page writes "" for null
        g = got[col].astype(object).where(got[col].notna(), "")
        assert g.tolist() == w.tolist(), col


def test_coeluting_partners_match_a_brute_force_search(result, page):
    data = load_result(result)
    a = data.peaks
    c = pd.read_parquet(result / "candidates.parquet")
    top = c[c["rank"] == 0].set_index("peak_id")["compound_id"]
    molecule = a["compound_id"].astype(object).where(a["compound_id"].notna(),
                                                     top.reindex(a["peak_id"]).to_numpy())
    got = coeluting_partners(a, c, data.rt_tol, limit=10_000)
    want = set()
    calls = a[a["compound_id"].notna()]
    for i, (mol, rt) in enumerate(zip(molecule, a["rt"], strict=True)):
        if pd.isna(mol):
            continue
        same = calls[(calls["compound_id"] == mol) & ((calls["rt"] - rt).abs() <= data.rt_tol)]
        want |= {(i, j) for j in same.index if j != i}
    assert set(zip(got["peak"], got["partner"], strict=True)) == want and len(want) > 100
    # The wider of the fitted isotope and adduct partners' tolerances.
    fitted = json.loads((result / "context.json").read_text())
    assert data.rt_tol == pytest.approx(max(fitted["rt_tol"], fitted["adduct_rt_tol"]))
    # On the page: each peak's slice holds its partners, the nearest MAX_PARTNERS in RT.
    models = page_models(page.read_text())
    peaks, partners = source_data(models, "peaks"), source_data(models, "partners")
    ids = a["peak_id"].to_numpy()
    per_peak = pd.Series([j for i, j in want]).groupby([i for i, j in want]).agg(list)
    for pid, start, stop in zip(peaks["peak_id"], peaks["part_start"], peaks["part_stop"],
                                strict=True):
        rows = partners.iloc[int(start):int(stop)]
        assert (rows["of"] == pid).all()
        i = int(np.flatnonzero(ids == pid)[0])
        near = sorted(per_peak.get(i, []), key=lambda j: abs(a["rt"][j] - a["rt"][i]))
        assert len(rows) == min(MAX_PARTNERS, len(near))
        assert set(rows["partner"]) <= {ids[j] for j in near}
        assert (np.diff(rows["drt"].abs()) >= 0).all()


def test_a_large_run_is_sampled_the_queue_first_and_the_same_every_time(result):
    a = pd.read_parquet(result / "assignments.parquet")
    c = pd.read_parquet(result / "candidates.parquet")
    copies = 25
    big_a = pd.concat([a.assign(peak_id=a["peak_id"] + f"_{k}") for k in range(copies)],
                      ignore_index=True)
    big_c = pd.concat([c.assign(peak_id=c["peak_id"] + f"_{k}") for k in range(copies)],
                      ignore_index=True)
    one = prepare(big_a, big_c, max_points=8000)
    two = prepare(big_a, big_c, max_points=8000)
    queue = one.queue.index.to_numpy()
    assert len(queue) > 4000 and one.sampled and len(one.shown) == 8000
    np.testing.assert_array_equal(one.shown, two.shown)  # seeded
    # Half the page for the queue's least certain peaks, in queue order...
    np.testing.assert_array_equal(one.shown[:4000], queue[:4000])
    assert len(set(one.shown)) == 8000
    # ...half a sample of all the others: as many queue peaks as chance puts there.
    sampled_queue = np.isin(one.shown[4000:], queue).mean()
    assert sampled_queue == pytest.approx((len(queue) - 4000) / (len(big_a) - 4000), abs=0.03)
    src = one.sources()
    fig = figures.run_map(one, src)
    assert any(type(r.glyph).__name__ == "Image" for r in fig.renderers)  # all peaks' density
    assert f"first 4,000 of the {len(queue):,} peaks of the review queue" in one.sampling_note()
    assert "random sample (seed 0)" in one.sampling_note()
    hist = figures.confidence_histogram(one, src)
    bars = hist.select_one({"name": "confidence_bins"})
    assert sum(bars.data["total"]) == big_a["prob"].notna().sum()  # counts all peaks
    small = prepare(a, c)
    assert not small.sampled and not any(type(r.glyph).__name__ == "Image"
                                         for r in figures.run_map(small).renderers)


@pytest.mark.parametrize("keep", ["none", "not called"])
def test_a_run_without_peaks_or_calls_still_gets_every_figure(result, keep):
    from dask_assign.report import page_html

    a = pd.read_parquet(result / "assignments.parquet")
    c = pd.read_parquet(result / "candidates.parquet")
    a = a.iloc[:0] if keep == "none" else a[a["compound_id"].isna()]
    models = page_models(page_html(prepare(a, c[c["peak_id"].isin(a["peak_id"])])))
    assert set(FIGURES) - {"reliability"} <= set(models)
    assert len(source_data(models, "peaks")) == len(a)


def test_every_figure_is_reachable_from_python(result):
    from bokeh.model import Model

    data = load_result(result, truth=DEMO / "truth.csv")
    for name in ("run_map", "mass_error", "rt_residual", "confidence_histogram",
                 "reliability_diagram", "adduct_counts", "isotope_counts", "calls_table",
                 "review_table", "peak_inspector"):
        made = getattr(figures, name)(data)  # sources of its own
        assert isinstance(made, Model), name
    src = data.sources()
    a, b = figures.run_map(data, src), figures.mass_error(data, src)
    assert {r.data_source for r in a.renderers if hasattr(r, "view")} & {
        r.data_source for r in b.renderers if hasattr(r, "view")} == {src.peaks}  # linked
    with pytest.raises(ValueError, match="truth"):
        figures.reliability_diagram(load_result(result))
    with pytest.raises(ValueError, match="low < high"):
        ReviewRule(0.9, 0.5)


def test_report_cli(result, tmp_path, capsys, monkeypatch):
    from dask_assign.cli import main

    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED",  # main sets it; leave it as it was
                       os.environ.get("DASK_LOGGING__DISTRIBUTED", "warning"))
    out = tmp_path / "x.html"
    assert main(["report", str(result), "--truth", str(DEMO / "truth.csv"), "--out", str(out),
                 "--review", "0.5", "0.95", "--max-points", "300"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out}"
    models = page_models(out.read_text())
    assert len(source_data(models, "peaks")) == 300
    assert main(["report", str(result), "--out", str(tmp_path / "y.html"), "--review", "0.9",
                 "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "low < high" in err and not (tmp_path / "y.html").exists()
    assert main(["evaluate", str(result), "--truth", str(DEMO / "truth.csv"), "--json"]) == 0
    assert '"overall": 0.93' in capsys.readouterr().out


# In the browser. ---------------------------------------------------------------------------

FIND_VIEWS = """
const doc = Bokeh.documents[0], views = {};
const walk = v => { if (v.model.name) { views[v.model.name] = v; }
                    for (const c of (v.child_views || [])) { walk(c); } };
for (const r of Bokeh.index.roots) { walk(r); }
const sleep = ms => new Promise(r => setTimeout(r, ms));
const peaks = doc.get_model_by_name("peaks");
const grid = name => { const g = views[name].grid, out = [];
  for (let i = 0; i < g.getDataLength(); i++) { out.push(g.getDataItem(i)); } return out; };
const click = async name => { const b = doc.get_model_by_name(name);  // CustomJS may be async
  for (const cb of b.js_event_callbacks["button_click"]) { await cb.execute(b); } };
"""
READY = ("window.Bokeh && Bokeh.documents.length > 0 && Bokeh.index.roots.length > 0 && "
         "Bokeh.index.roots.every(v => v.has_finished())")


def in_page(browser, body: str):
    return browser.evaluate(f"(async () => {{ {FIND_VIEWS}\n{body} }})()")


@needs_browser
def test_page_renders_offline_in_headless_chromium(result, page, tmp_path):
    from PIL import Image

    cands = pd.read_parquet(result / "candidates.parquet")
    assign = pd.read_parquet(result / "assignments.parquet")
    busiest = cands.groupby("peak_id").size().idxmax()
    with Browser(tmp_path / "profile") as b:
        b.open(page.as_uri(), READY)
        finished = in_page(b, f"return {json.dumps(FIGURES)}.map(n => "
                              "[n, Boolean(views[n]) && views[n].has_finished()]);")
        assert all(ok for _, ok in finished), finished  # every figure drawn, by its model
        # A peak selected: the inspector lists exactly its rows of candidates.parquet.
        rows = in_page(b, f"""peaks.selected.indices = [peaks.data.peak_id.indexOf("{busiest}")];
            await sleep(300);
            return [grid("candidates_table").map(c => [c.peak_id, c.rank, c.compound_id,
                                                        c.prob]),
                    grid("calls_table").filter((c, i) =>
                        views.calls_table.grid.getSelectedRows().includes(i))
                        .map(c => c.peak_id),
                    doc.get_model_by_name("inspector").text,
                    grid("partners_table").map(c => c.of)];""")
        want = cands[cands["peak_id"] == busiest].sort_values("rank")
        assert [r[:3] for r in rows[0]] == [[p, int(k), c] for p, k, c in zip(
            want["peak_id"], want["rank"], want["compound_id"], strict=True)]
        np.testing.assert_allclose([r[3] for r in rows[0]], want["prob"], rtol=0, atol=0)
        assert rows[1] == [busiest] and f"<b>{busiest}</b>" in rows[2]  # the table follows
        assert set(rows[3]) <= {busiest}  # its co-eluting partners, no other peak's
        # Tapping a bar selects its peaks in every view.
        na = in_page(b, """const bars = doc.get_model_by_name("adducts_bars");
            bars.selected.indices = [bars.data.key.indexOf("[M+Na]+")];
            await sleep(200);
            return peaks.selected.indices.map(i => peaks.data.peak_id[i]);""")
        assert sorted(na) == sorted(assign.loc[assign["adduct"] == "[M+Na]+", "peak_id"])
        # The search filters both tables; a verdict set on the selection is downloaded.
        found = in_page(b, """doc.get_model_by_name("search").value_input = "isomer tie";
            await sleep(300);
            const calls = grid("calls_table").map(c => c.peak_id);
            const queue = grid("review_queue").map(c => c.peak_id);
            await click("select_found");
            doc.get_model_by_name("verdict").value = "rejected";
            await click("set_verdict");
            let blob = null;
            URL.createObjectURL = x => { blob = x; return "about:blank"; };
            HTMLAnchorElement.prototype.click = function () {};
            await click("download_queue");
            return [calls, queue, await blob.text()];""")
        ties = assign.loc[(assign["p_formula"] - assign["prob"] >= ISOMER_TIE * assign["prob"])
                          & assign["compound_id"].notna(), "peak_id"]
        assert sorted(found[0]) == sorted(found[1]) == sorted(ties)
        csv = pd.read_csv(io.StringIO(found[2]), dtype=str, keep_default_na=False)
        assert set(csv["peak_id"]) == _oracle_queue(assign)
        assert sorted(csv.loc[csv["verdict"] == "rejected", "peak_id"]) == sorted(ties)
        in_page(b, "peaks.selected.indices = []; doc.get_model_by_name('search').value_input"
                   " = ''; await sleep(300); return 0;")
        shot = Image.open(io.BytesIO(b.screenshot())).convert("RGB")
        assert b.console == [], b.console  # no error, no warning, no exception
        outside = [u for u in b.requests if not u.startswith(("file://", "data:"))]
        assert outside == [], outside  # asked for nothing but the page itself
    pixels = np.asarray(shot.resize((shot.width // 4, shot.height // 4)))
    assert shot.height > 2000 and (pixels.min(axis=2) < 200).mean() > 0.05  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # drawn, in colour
    full = np.asarray(shot).astype(int)
    for colour in ((0, 114, 178), (230, 159, 0)):  # the calls' colours, not pale yellow
        assert (np.abs(full - colour).sum(axis=2) < 60).sum() > 2000, colour
