import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEMO = Path(__file__).resolve().parents[1] / "dask_assign" / "data" / "demo"
SETS = ["repoRT_0392_rp_pos", "repoRT_0228_hilic_pos"]


def library_frame(rows):
    """A library frame as read_library returns it, from (id, formula, rt) tuples."""
    from dask_assign.chem import parse_formula

    out = []
    for cid, formula, rt in rows:
        f = parse_formula(formula)
        out.append({"compound_id": cid, "name": cid, "formula": f.formula,
                    "monoisotopic_mass": f.mass, "rt": rt, "charge": f.charge,
                    **{f"n_{el}": f.count(el) for el in "CHNOSP"}})
    return pd.DataFrame(out).astype({"compound_id": "string", "name": "string",
                                     "formula": "string"})


@pytest.fixture(scope="session")
def local_client():
    """A real LocalCluster of two worker processes, shared by the tests that need one."""
    from dask_assign.cluster import connect

    client, cluster = connect(workers=2)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def rng():
    return np.random.default_rng(7)
