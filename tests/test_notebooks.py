"""The notebooks run top to bottom (nbclient, a real kernel and LocalCluster), and are kept in
git without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "gpu_cluster.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "dashboard: http://127.0.0.1:" in text
    assert "'overall'" in text  # the evaluation cell printed its scores
    if path.stem == "quickstart":  # the report's figures, shown, and its page written
        kinds = {k for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 for k in o.get("data", {})}
        assert "application/vnd.bokehjs_exec.v0+json" in kinds, kinds
        assert "report page: " in text and "calls to review" in text
