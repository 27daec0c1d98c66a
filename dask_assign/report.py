"""One self-contained HTML page about a result folder: what a user checks before trusting it.

Plots (inline PNG): mass error against m/z, RT residual against RT, the confidence histogram,
counts by adduct and isotope, and, with a truth table, the reliability diagram and the scores.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Calibration
from .evaluate import correctness, evaluate

#: Points drawn at most in a scatter plot (a sample of the calls beyond that).
MAX_POINTS = 50_000


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def read_table(folder: Path, name: str) -> pd.DataFrame:
    """A table of a result folder, Parquet or CSV."""
    parquet, csv = folder / f"{name}.parquet", folder / f"{name}.csv"
    if parquet.exists():
        return pd.read_parquet(parquet)
    if csv.exists():
        return pd.read_csv(csv, dtype={"peak_id": str, "compound_id": str})
    raise FileNotFoundError(f"{folder}: no {name}.parquet or {name}.csv (not a result folder)")


def _figures(a: pd.DataFrame, cal: Calibration, scores: dict | None, graded) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    called = a[a["compound_id"].notna()]
    shown = called.sample(MAX_POINTS, random_state=0) if len(called) > MAX_POINTS else called
    figs = {}

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter(shown["mz"], shown["ppm_error"], s=4, alpha=0.4, c=shown["prob"], cmap="viridis")
    grid = np.linspace(shown["mz"].min(), shown["mz"].max(), 200) if len(shown) else []
    if len(grid):
        ax.plot(grid, cal.mass_offset(grid), color="crimson", lw=1, label="fitted offset")
    ax.set(xlabel="m/z", ylabel="mass error (ppm)", title="Mass error of the calls")
    if len(grid):
        ax.legend(loc="upper right")
    figs["Mass error against m/z"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    lib_rt = shown["rt"] - shown["rt_error"]
    expected = cal.rt_map(lib_rt.to_numpy(dtype=np.float64))
    ax.scatter(shown["rt"], shown["rt"] - expected, s=4, alpha=0.4, c=shown["prob"],
               cmap="viridis")
    ax.axhline(0, color="crimson", lw=1)
    ax.set(xlabel="observed RT (min)", ylabel="RT residual (min)",
           title="RT after the fitted library-to-run mapping")
    figs["RT residual against RT"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0, 1, 21)
    ax.hist([called["prob"].dropna(), a.loc[a["compound_id"].isna(), "prob"].dropna()],
            bins=bins, stacked=True, label=["compound called", "not in library"])
    ax.set(xlabel="probability of the call", ylabel="peaks", title="Confidence")
    ax.legend(loc="upper left")
    figs["Confidence histogram"] = _png(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    by_adduct = called["adduct"].value_counts()
    axes[0].barh(by_adduct.index.astype(str)[::-1], by_adduct.to_numpy()[::-1])
    axes[0].set(title="Calls by adduct", xlabel="peaks")
    by_iso = called["isotope"].fillna("M+0").value_counts()
    axes[1].bar(by_iso.index.astype(str), by_iso.to_numpy())
    axes[1].set(title="Calls by isotope", ylabel="peaks")
    figs["Counts by adduct and isotope"] = _png(fig)

    if scores is not None:
        p, correct = graded["prob"].to_numpy(), graded["correct"].to_numpy(dtype=float)
        b = np.minimum((p * 10).astype(int), 9)
        rows = [(p[b == k].mean(), correct[b == k].mean(), (b == k).sum())
                for k in range(10) if (b == k).any()]
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o")
        ax.set(xlabel="predicted probability", ylabel="observed accuracy",
               title=f"Reliability (ECE {scores['ece']})", xlim=(0, 1), ylim=(0, 1))
        figs["Reliability diagram"] = _png(fig)
    return figs


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{mark}<title>dask-assign report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; cursor: pointer; }} td:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
</style></head>
<body data-ready="0">
<h1>dask-assign report</h1>
<p>{title}</p>
<h2>Summary</h2>
{summary}
{scores}
<h2>Calls by adduct <small>(click a header to sort)</small></h2>
<table id="adducts"><thead><tr><th>adduct</th><th>peaks</th><th>mean probability</th></tr>
</thead><tbody></tbody></table>
{figures}
<h2>Settings and calibration</h2>
<details><summary>settings</summary><pre>{settings}</pre></details>
<details><summary>calibration</summary><pre>{calibration}</pre></details>
<script>
const ADDUCTS = {adducts};
function fill(rows) {{
  const body = document.querySelector("#adducts tbody");
  body.replaceChildren(...rows.map(r => {{
    const tr = document.createElement("tr");
    r.forEach((v, i) => {{ const td = document.createElement("td");
      td.textContent = i === 2 ? v.toFixed(3) : v; tr.appendChild(td); }});
    return tr; }}));
}}
document.querySelectorAll("#adducts th").forEach((th, i) => th.addEventListener("click", () => {{
  ADDUCTS.sort((a, b) => (a[i] < b[i] ? 1 : a[i] > b[i] ? -1 : 0)); fill(ADDUCTS); }}));
fill(ADDUCTS);
document.body.dataset.ready = "1";
</script>
</body></html>
"""


def _table(rows: dict) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows.items())
    return f"<table>{cells}</table>"


def write_report(result_dir, out=None, truth=None) -> Path:
    """Write ``report.html`` for a result folder.

    Parameters
    ----------
    result_dir : str or Path
        A folder written by ``dask-assign run`` (assignments, calibration, manifest).
    out : str or Path, optional
        Where to write; ``RESULT_DIR/report.html`` by default. An existing file there is
        replaced only if it is an earlier report (it carries the package's mark).
    truth : str or Path, optional
        A truth table (``peak_id``, ``compound_id``) for the scores and reliability diagram.

    Returns
    -------
    Path
        The page written.
    """
    from .output import HTML_MARK, check_own_file, replace_own_file

    folder = Path(result_dir)
    target = check_own_file(Path(out) if out else folder / "report.html")  # before any work
    a = read_table(folder, "assignments")
    manifest = json.loads((folder / "manifest.json").read_text()) \
        if (folder / "manifest.json").exists() else {}
    cal = manifest.get("calibration", {})
    scores, graded = None, None
    if truth is not None:
        t = pd.read_csv(truth, dtype=str)
        scores, graded = evaluate(a, t), correctness(a, t)
    figures = _figures(a, Calibration.from_dict(cal) if cal else Calibration(), scores, graded)
    called = a[a["compound_id"].notna()]
    adducts = (called.groupby("adduct")["prob"].agg(["size", "mean"]).reset_index()
               .sort_values("size", ascending=False))
    summary = manifest.get("summary", {})
    page = PAGE.format(
        mark=HTML_MARK, title=html.escape(str(folder.resolve())),
        summary=_table({k: round(v, 4) if isinstance(v, float) else v
                        for k, v in summary.items() if not isinstance(v, dict)}
                       or {"peaks": len(a), "assigned": len(called)}),
        scores=("<h2>Against the truth</h2>" + _table(scores)) if scores else "",
        figures="\n".join(f'<h2>{html.escape(name)}</h2><figure><img alt="{html.escape(name)}" '
                          f'src="{src}"></figure>' for name, src in figures.items()),
        settings=html.escape(json.dumps(manifest.get("config", {}), indent=1)),
        calibration=html.escape(json.dumps(cal, indent=1)),
        adducts=json.dumps([[str(r.adduct), int(r.size), float(r.mean)]
                            for r in adducts.itertuples()]),
    )
    return replace_own_file(target, lambda p: p.write_text(page, encoding="utf-8"))
