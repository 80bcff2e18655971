"""Prometheus' exposition of the task manager's and the vault's figures (the answer's shape; the figures are
the capabilities', read from the database, so every process on a shared PostgreSQL answers the same)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "render"]

# The classic text format (0.0.4): what every Prometheus server reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
FINISHED = ("completed", "failed", "timed_out", "cancelled")
SLA_COUNTERS = {
    "warnings_issued": ("grace_htm_sla_warnings", "Tasks whose SLA reached 80% (the enforcer's warnings)."),
    "total_violations": ("grace_htm_sla_violations", "Tasks whose SLA reached 100% (violations)."),
    "escalations_triggered": ("grace_htm_sla_escalations", "Violations that raised the task's priority to high."),
    "sub_agents_spawned": ("grace_htm_sla_rescues", "Tasks whose SLA reached 200%: rescue tasks sent."),
}


class _Figures(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def families(htm: Mapping[str, Any], consents: Mapping[str, int]) -> list[Metric]:
    """Return the metric families for the task manager's figures (``HTM.metric_figures()``) and the consents."""
    totals = htm["totals"]
    tasks = CounterMetricFamily(
        "grace_htm_tasks", "Finished tasks, all-time, by origin and final status.", labels=["origin", "status"]
    )
    created = CounterMetricFamily("grace_htm_tasks_created", "Tasks created, all-time, by origin.", labels=["origin"])
    durations = HistogramMetricFamily(
        "grace_htm_task_duration_seconds",
        "Execution time (start to finish) of tasks that ran to an outcome, all-time.",
        labels=["origin"],
    )
    sla_finished = CounterMetricFamily(
        "grace_htm_sla_finished", "Tasks with a deadline that ran to an outcome, all-time.", labels=["origin"]
    )
    sla_met = CounterMetricFamily("grace_htm_sla_met", "Of those, finished by their deadline.", labels=["origin"])
    for origin, f in totals.items():
        for status in FINISHED:
            tasks.add_metric([origin, status], getattr(f, status))
        created.add_metric([origin], f.created)
        buckets = [(str(float(bound)), float(n)) for bound, n in htm["duration_buckets"][origin]]
        buckets.append(("+Inf", float(f.ran)))
        durations.add_metric([origin], buckets, sum_value=f.duration_ms_sum / 1000)
        sla_finished.add_metric([origin], f.sla_finished)
        sla_met.add_metric([origin], f.sla_met)
    depth = GaugeMetricFamily(
        "grace_htm_queue_depth", "Waiting tasks (queued, delayed, deferred) now.", labels=["origin", "priority"]
    )
    for origin, by in htm["queue_depth"].items():
        for priority, n in by.items():
            depth.add_metric([origin, priority], n)
    running = GaugeMetricFamily("grace_htm_tasks_running", "Running tasks now.", labels=["origin"])
    for origin, n in htm["running"].items():
        running.add_metric([origin], n)
    active = GaugeMetricFamily(
        "grace_htm_sla_active_violations", "Unfinished tasks past their deadline now.", labels=["origin"]
    )
    for origin, n in htm["active_violations"].items():
        active.add_metric([origin], n)
    out: list[Metric] = [tasks, created, durations, depth, running, active, sla_finished, sla_met]
    for key, (name, doc) in SLA_COUNTERS.items():
        out.append(CounterMetricFamily(name, doc, value=htm["sla_counters"][key]))
    if htm["sla_compliance_rate"] is not None:
        out.append(
            GaugeMetricFamily(
                "grace_htm_sla_compliance_ratio",
                f"Share of tasks with a deadline finished by it, over the last {htm['sla_window_seconds']:g} s.",
                value=htm["sla_compliance_rate"],
            )
        )
    # A consent moves between statuses (pending, then approved or denied …), so each status' count is a gauge.
    by_status = GaugeMetricFamily(
        "grace_vault_consents_total", "Consent records now in each status.", labels=["status"]
    )
    for status, n in sorted(consents.items()):
        by_status.add_metric([status], n)
    out.append(by_status)
    return out


def render(htm: Mapping[str, Any], consents: Mapping[str, int]) -> bytes:
    """Return the exposition text of the figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(families(htm, consents)))
    return generate_latest(registry)
