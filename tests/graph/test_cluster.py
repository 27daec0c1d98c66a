"""The clusters dask-assign starts: the dashboard served or not, the workers' frozen imports."""

import gc
import sys
import urllib.error
import urllib.request

import pytest

from dask_assign.graph.cluster import connect


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as page:
            return page.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("dashboard", [True, False])
def test_dashboard_is_served_only_when_asked(dashboard):
    client, cluster = connect(workers=1, processes=False, dashboard=dashboard)
    try:
        status = client.dashboard_link
        assert _status(status) == (200 if dashboard else 404)
        # The scheduler's HTTP endpoints stay up either way (health checks, Prometheus).
        assert _status(status.replace("/status", "/health")) == 200
        assert ("distributed.dashboard.scheduler" in sys.modules) or not dashboard
    finally:
        client.close()
        cluster.close()


def _frozen() -> tuple:
    return gc.get_freeze_count(), "torch" in sys.modules, "numba" in sys.modules


def test_workers_import_the_task_stack_once_and_freeze_it(local_client):
    """Every worker process has imported torch and numba before its first task, and keeps
    those objects out of the garbage collector's full collections."""
    for count, torch, numba in local_client.run(_frozen).values():
        assert count > 10_000 and torch and numba
