import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def pytest_configure(config):
    """The commands the tests start keep their ion cache in a folder of this session, never
    in the user's own cache; removed when the session ends."""
    import tempfile

    from dask_assign.filtering.ion_cache import CACHE_ENV

    config._ion_cache = tempfile.TemporaryDirectory(prefix="dask-assign-test-cache-")
    os.environ[CACHE_ENV] = config._ion_cache.name


def pytest_unconfigure(config):
    held = getattr(config, "_ion_cache", None)
    if held is not None:
        held.cleanup()

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEMO = Path(__file__).resolve().parents[1] / "dask_assign" / "data" / "demo"
SETS = ["repoRT_0392_rp_pos", "repoRT_0228_hilic_pos"]


def library_frame(rows):
    """A library frame as read_library returns it, from (id, formula, rt) tuples."""
    from dask_assign.chemistry.formulas import parse_formula

    out = []
    for cid, formula, rt in rows:
        f = parse_formula(formula)
        out.append({"compound_id": cid, "name": cid, "formula": f.formula,
                    "monoisotopic_mass": f.mass, "rt": rt, "charge": f.charge,
                    **{f"n_{el}": f.count(el) for el in "CHNOSP"},
                    **{f"n_{el}": k for el, k in f.elements.items() if el.isalpha()}})
    frame = pd.DataFrame(out).fillna({c: 0 for c in {k for r in out for k in r}
                                      if c.startswith("n_")})
    counts = [c for c in frame.columns if c.startswith("n_")]
    return frame.astype({"compound_id": "string", "name": "string", "formula": "string",
                         **{c: "int64" for c in counts}})


@pytest.fixture(scope="session")
def local_client():
    """A real LocalCluster of two worker processes, shared by the tests that need one."""
    from dask_assign.graph.cluster import connect

    client, cluster = connect(workers=2)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _big_config():
    from dask_assign.config import AssignConfig

    return AssignConfig(partition_size=3000)


#: Settings of the runs on the big peak table (56 partitions).
BIG_CONFIG = _big_config()


def read(out, name="assignments"):
    return pd.read_parquet(Path(out) / f"{name}.parquet")


@pytest.fixture(scope="session")
def big_peaks(tmp_path_factory):
    """The demo peaks 150 times over (168k peaks), RT jittered, unique ids."""
    demo = pd.read_csv(DEMO / "peaks.csv")
    rng = np.random.default_rng(3)
    copies = []
    for k in range(150):
        c = demo.copy()
        c["peak_id"] = c["peak_id"] + f"_{k:03d}"
        c["rt"] = (c["rt"] + rng.normal(0, 0.01, len(c))).clip(lower=0)
        copies.append(c)
    path = tmp_path_factory.mktemp("big") / "peaks.parquet"
    pd.concat(copies, ignore_index=True).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def undisturbed(big_peaks, tmp_path_factory, local_client):
    """The reference run on the big peak table: a LocalCluster, nothing going wrong."""
    from dask_assign.graph.run import run

    out = tmp_path_factory.mktemp("ref") / "out"
    run(big_peaks, DEMO / "library.csv", out, BIG_CONFIG, client=local_client)
    return out


@pytest.fixture
def cli_main(capsys, monkeypatch):
    """The CLI's own entry point run in this process: ``cli_main(argv) -> (exit code,
    stderr)``. For refusals, which come before any cluster starts."""
    from dask_assign.cli import main

    # main sets this for its worker processes: leave the environment as it was.
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED",
                       os.environ.get("DASK_LOGGING__DISTRIBUTED", "warning"))

    def call(argv):
        code = main([str(a) for a in argv])
        return code, capsys.readouterr().err

    return call
