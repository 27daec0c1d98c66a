"""Live counts of a run as Prometheus metrics on the scheduler's ``/metrics`` page.

Each ``write_partition`` task logs one small event (peaks, calls, a histogram of the call
probabilities); :class:`RunMetrics`, a scheduler plugin, adds the events up into counters
beside distributed's own metrics, so a Prometheus server (or ``curl``) sees peaks assigned and
the confidence distribution while a run goes on.
"""

from __future__ import annotations

import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin

TOPIC = "dask-assign"


#: Upper edges of the confidence histogram's bins.
BUCKETS = tuple(round(0.1 * k, 1) for k in range(1, 11))


def partition_event(assignments) -> dict:
    """The event a written partition reports: counts and a confidence histogram."""
    prob = assignments["prob"].to_numpy(dtype=np.float64, na_value=np.nan)
    prob = prob[np.isfinite(prob)]
    counts = np.histogram(prob, bins=np.linspace(0, 1, 11))[0]
    called = int(assignments["compound_id"].notna().sum())
    return {"peaks": int(len(assignments)), "assigned": called,
            "not_in_library": int(len(assignments)) - called,
            "confidence": [int(c) for c in counts]}


def report_partition(assignments):
    """Log a partition's event to the scheduler, when running on a distributed worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not on a worker (synchronous scheduler): nothing to report to
        return
    worker.log_event(TOPIC, partition_event(assignments))


class RunMetrics(SchedulerPlugin):
    """Scheduler plugin: Prometheus counters fed by the partitions' events.

    Metrics: ``dask_assign_peaks_total{call="assigned"|"not_in_library"}``,
    ``dask_assign_partitions_total`` and ``dask_assign_confidence_total{le="0.1".."1.0"}``
    (peaks whose call probability falls in each tenth).
    """

    name = "dask-assign-metrics"
    idempotent = True

    def start(self, scheduler):
        from prometheus_client import REGISTRY, Counter

        # One set of counters per scheduler process, however often the plugin is registered.
        existing = getattr(REGISTRY, "_dask_assign_counters", None)
        if existing is None:
            existing = (
                Counter("dask_assign_peaks", "Peaks annotated", ["call"]),
                Counter("dask_assign_partitions", "Partitions written"),
                Counter("dask_assign_confidence", "Peaks by probability of their call", ["le"]),
            )
            REGISTRY._dask_assign_counters = existing
        self.peaks, self.partitions, self.confidence = existing

    def log_event(self, topic, msg):
        if topic != TOPIC or not isinstance(msg, dict):
            return
        self.partitions.inc()
        self.peaks.labels(call="assigned").inc(msg.get("assigned", 0))
        self.peaks.labels(call="not_in_library").inc(msg.get("not_in_library", 0))
        for edge, count in zip(BUCKETS, msg.get("confidence", []), strict=False):
            self.confidence.labels(le=str(edge)).inc(count)
