"""Connecting to a Dask cluster: a LocalCluster by default, a dask-cuda LocalCUDACluster with
``gpu=True`` (one worker per GPU), or an existing scheduler."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time

import dask
from distributed import Client, LocalCluster, WorkerPlugin

from dask_assign.startup import frozen_imports

log = logging.getLogger(__name__)


#: glibc malloc settings for worker processes. distributed's nannies set
#: ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes glibc's mmap threshold at 128 KiB: every
#: array over 128 KiB is then a fresh mmap, zeroed page by page and unmapped when freed. Our
#: tasks allocate many arrays of a few MB (torch and numpy temporaries), and ran 1.8-2.5x
#: slower in a worker than in a plain process. Arrays up to 32 MiB now reuse heap memory, and
#: free heap above 128 MiB still goes back to the OS (benchmarks/NOTES.md has the numbers).
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": "134217728", "MALLOC_MMAP_THRESHOLD_": "33554432"}


def worker_environ() -> dict:
    """The nanny's ``pre-spawn-environ`` for dask-assign's workers: distributed's own, with
    :data:`WORKER_MALLOC` in place of its malloc trim threshold."""
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.update(WORKER_MALLOC)
    return env


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


class FrozenImports(WorkerPlugin):
    """Import what the tasks run (torch, numba, pandas) when a worker starts, frozen out of
    the garbage collector's full collections (:func:`dask_assign.startup.frozen_imports`,
    as ``dask-assign``'s client does for itself)."""

    name = "dask-assign-frozen-imports"

    def setup(self, worker):
        with frozen_imports():
            import dask_assign.graph.tasks  # noqa: F401


class ReturnFreedMemory(WorkerPlugin):
    """Give the heap's free pages back to the OS after each long task (glibc ``malloc_trim``).

    With :data:`WORKER_MALLOC` a task's temporaries come from and go back to the heap, which
    is fast, but freed pages in the middle of the heap stay resident: at 1M peaks the workers'
    summed RSS doubled. Trimming between tasks keeps a worker's RSS near what it holds, and
    costs milliseconds a task. Nothing is done where libc has no ``malloc_trim``.
    """

    name = "dask-assign-malloc-trim"

    #: Tasks shorter than this (seconds) are not followed by a trim.
    min_seconds = 0.05

    def setup(self, worker):
        self._started: dict = {}
        path = ctypes.util.find_library("c")
        try:
            self._trim = ctypes.CDLL(path).malloc_trim if path else None
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
            self._trim = None

    def transition(self, key, start, finish, **kwargs):
        if self._trim is None:
            return
        if finish == "executing":
            self._started[key] = time.monotonic()
        elif start == "executing":
            began = self._started.pop(key, None)
            if began is not None and time.monotonic() - began >= self.min_seconds:
                self._trim(0)


class TorchOnRMM(WorkerPlugin):
    """Make torch allocate from the worker's RMM pool, so cudf and torch share one pool
    instead of each reserving its own (only where RAPIDS is installed)."""

    name = "dask-assign-torch-rmm"

    def setup(self, worker):
        import torch

        try:
            from rmm.allocators.torch import rmm_torch_allocator
        except ImportError:  # no RAPIDS on this worker: torch keeps its caching allocator
            return
        try:
            torch.cuda.memory.change_current_allocator(rmm_torch_allocator)
        except RuntimeError:  # torch already allocated on the device: keep its allocator
            log.warning("torch allocated before the RMM allocator could be set")


def cuda_devices() -> int:
    """How many CUDA devices this process can use: a device query, not an import check (a
    cudf that imports does not mean a GPU is there)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver reads as no device
        return 0


def require_cuda() -> int:
    """The number of CUDA devices, or a ValueError saying there is none."""
    n = cuda_devices()
    if n == 0:
        raise ValueError("--gpu: no CUDA device found (torch.cuda.device_count() is 0)")
    return n


def gpu_cluster(workers: int | None, security=None, rmm_pool_size: str | None = "auto"):
    """A dask-cuda ``LocalCUDACluster``: one worker per GPU (or ``workers``), bound to
    127.0.0.1, with an RMM pool where RAPIDS is installed.

    Raises
    ------
    ValueError
        When no CUDA device is found or dask-cuda is missing (the ``gpu`` extra).
    """
    n = require_cuda()
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise ValueError("--gpu needs dask-cuda: pip install 'dask-assign[gpu]'") from None
    kwargs = {}
    try:
        import rmm  # noqa: F401

        if rmm_pool_size:
            # Most of each GPU as one pool, shared by cudf and (through the plugin) torch.
            kwargs["rmm_pool_size"] = "0.8" if rmm_pool_size == "auto" else rmm_pool_size
    except ImportError:
        pass
    visible = ",".join(str(i) for i in range(min(workers or n, n)))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=visible, threads_per_worker=1,
                                host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                security=security, **kwargs)


def connect(scheduler: str | None = None, workers: int | None = None,
            threads_per_worker: int = 1, memory_limit="auto", security=None,
            gpu: bool = False, processes: bool = True, dashboard: bool = True):
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
    gpu : bool
        Start a dask-cuda ``LocalCUDACluster`` (one worker per GPU, at most ``workers``)
        instead of a LocalCluster; see :func:`gpu_cluster`.
    processes : bool
        ``False``: a LocalCluster in this process (one worker, a thread per core, each task
        with ``threads_per_worker`` torch threads): it starts in a fraction of a second,
        where each worker process would import torch again; for small runs.
    dashboard : bool
        Serve the Dask dashboard of a new LocalCluster. ``False`` spares the import of bokeh
        (about 0.5 s) where a run ends before anyone could open it; the scheduler's HTTP
        endpoints (``/health``, ``/metrics``) are served either way.

    Returns
    -------
    client : distributed.Client
    cluster : LocalCluster or None
        The cluster started here (close it when done), ``None`` for an existing scheduler.

    Notes
    -----
    The LocalCluster and its dashboard listen on 127.0.0.1 only. Its workers get
    :func:`worker_environ`'s malloc settings (an existing cluster keeps its own: see
    ``deploy/dask.yaml``).
    """
    if security is None and scheduler and scheduler.startswith("tls://"):
        from distributed.security import Security

        # Certificates from dask's configuration (distributed.comm.tls.*, or the matching
        # DASK_DISTRIBUTED__COMM__TLS__* variables).
        security = Security()
    if scheduler:
        client = Client(scheduler, security=security)
        cluster = None
    elif gpu:
        cluster = gpu_cluster(workers, security)
        client = Client(cluster, security=security)
        client.register_plugin(TorchOnRMM())
    else:
        n = workers or max(1, min(os.cpu_count() or 1, 4))
        local = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
                 "memory_limit": memory_limit, "security": security,
                 "scheduler_kwargs": {"dashboard": dashboard}}
        if processes:
            with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
                cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                                       processes=True, **local)
        else:  # one worker in this process, a thread per core
            cluster = LocalCluster(n_workers=1, threads_per_worker=n, processes=False,
                                   protocol="tcp://", **local)
        client = Client(cluster, security=security)
    client.register_plugin(FrozenImports())
    client.register_plugin(TorchThreads(threads_per_worker))
    client.register_plugin(ReturnFreedMemory())
    try:
        from dask_assign.output.metrics import RunMetrics

        client.register_plugin(RunMetrics())
    except Exception as err:  # a scheduler without dask-assign installed: no live metrics
        log.warning("live metrics unavailable on this scheduler: %s", err)
    log.info("dashboard: %s",
             client.dashboard_link if serves_dashboard(scheduler, gpu, dashboard) else "off")
    return client, cluster


def serves_dashboard(scheduler: str | None, gpu: bool, dashboard: bool) -> bool:
    """Whether :func:`connect` with these arguments gives a client whose cluster serves the
    dashboard: ``dashboard=False`` turns it off only on a LocalCluster started here (a
    running scheduler and a LocalCUDACluster keep theirs)."""
    return bool(dashboard or scheduler or gpu)
