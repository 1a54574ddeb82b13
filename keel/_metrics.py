"""Prometheus metrics of a Keel process (KEEL_METRICS_ADDRESS): the SDK's runtime serves its
own `temporal_*` metrics (task queue polls, latencies, slots) and Keel's `keel_*` business
metrics (workflows/metrics.py, through the replay-safe workflow meter) at
http://ADDRESS/metrics. One runtime per address per process: every client and worker of the
process shares it."""

from __future__ import annotations

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from keel import durable
from keel.errors import ServiceStartError

# Buckets in USD, from a cached answer (nothing) to a task that called large models for a while.
COST_BUCKETS_USD = (0.0, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
# Seconds: a calculator call to a slow API or a sandboxed program at its wall limit.
TOOL_LATENCY_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Seconds: a person at the keyboard to a weekend-long wait.
HUMAN_WAIT_BUCKETS_S = (10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0)
_runtimes: dict[str, Runtime] = {}


def runtime_for(address: str | None) -> Runtime | None:
    """The runtime that serves metrics at `address` (None: the SDK's default, no metrics)."""
    if not address:
        return None
    if address not in _runtimes:
        try:
            _runtimes[address] = Runtime(
                telemetry=TelemetryConfig(
                    metrics=PrometheusConfig(
                        bind_address=address,
                        counters_total_suffix=True,
                        histogram_bucket_overrides={
                            durable.TASK_COST_METRIC: COST_BUCKETS_USD,
                            durable.MODEL_COST_METRIC: COST_BUCKETS_USD,
                            durable.TOOL_LATENCY_METRIC: TOOL_LATENCY_BUCKETS_S,
                            durable.HUMAN_WAIT_METRIC: HUMAN_WAIT_BUCKETS_S,
                        },
                    )
                )
            )
        except Exception as err:  # the SDK's own error: the address is taken or unusable
            raise ServiceStartError(
                f"KEEL_METRICS_ADDRESS={address}: cannot serve metrics there ({err}); "
                "pick a free port, or unset it"
            ) from None
    return _runtimes[address]
