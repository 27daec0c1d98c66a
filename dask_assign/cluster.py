"""Connecting to a Dask cluster: a LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import logging
import os

from distributed import Client, LocalCluster, WorkerPlugin

log = logging.getLogger(__name__)


class TorchThreads(WorkerPlugin):
    """Set torch's thread count in each worker on purpose.

    Nanny workers start with ``OMP_NUM_THREADS=1``; a worker with several threads per task
    slot should say so explicitly, and torch's OpenMP threads should not spin while idle.
    """

    name = "dask-assign-torch-threads"

    def __init__(self, threads: int = 1):
        self.threads = threads

    def setup(self, worker):
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        import torch

        torch.set_num_threads(self.threads)


def connect(scheduler: str | None = None, workers: int | None = None,
            threads_per_worker: int = 1, memory_limit="auto", security=None):
    """A client on an existing scheduler, or on a new LocalCluster of worker processes.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``); a LocalCluster when omitted.
    workers : int, optional
        Worker processes of the LocalCluster (default: one per core, at most 4).
    threads_per_worker : int
        Threads of each worker (and torch threads of each task).
    memory_limit : str or float
        Per worker, as distributed understands it.
    security : distributed.Security, optional
        TLS settings for both cases.

    Returns
    -------
    client : distributed.Client
    cluster : LocalCluster or None
        The cluster started here (close it when done), ``None`` for an existing scheduler.

    Notes
    -----
    The LocalCluster and its dashboard listen on 127.0.0.1 only.
    """
    if security is None and scheduler and scheduler.startswith("tls://"):
        from distributed.security import Security

        # Certificates from dask's configuration (distributed.comm.tls.*, or the matching
        # DASK_DISTRIBUTED__COMM__TLS__* variables).
        security = Security()
    if scheduler:
        client = Client(scheduler, security=security)
        cluster = None
    else:
        n = workers or max(1, min(os.cpu_count() or 1, 4))
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                               processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", memory_limit=memory_limit,
                               security=security)
        client = Client(cluster, security=security)
    client.register_plugin(TorchThreads(threads_per_worker))
    try:
        from .metrics import RunMetrics

        client.register_plugin(RunMetrics())
    except Exception as err:  # a scheduler without dask-assign installed: no live metrics
        log.warning("live metrics unavailable on this scheduler: %s", err)
    log.info("dashboard: %s", client.dashboard_link)
    return client, cluster
