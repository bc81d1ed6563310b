"""``aurora-access demo --metrics``: the OpenTelemetry metrics of the run, as an operator's
exporter would receive them, read from the SDK's in-memory reader at the end.

Each metric is summed up on one line: its series (attribute sets), their total (a histogram's
count and the sum of its values, a counter's value; a gauge's values, one per series) and every
value each attribute took.
"""

from __future__ import annotations

from typing import Any


def in_memory_meter() -> tuple[Any, Any]:
    """(a MeterProvider, its InMemoryMetricReader); SystemExit naming what to install when
    the OpenTelemetry SDK is missing."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415 - optional
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
    except ImportError:
        raise SystemExit("demo --metrics needs the OpenTelemetry SDK: pip install "
                         "'aurora-access[otel]' opentelemetry-sdk") from None
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), reader


def summarize_metrics(reader: Any) -> dict[str, dict[str, Any]]:
    """Metric name -> {"series": n, "total": x, "attributes": {name: [values]}} (for a
    histogram, whose total is its count, also "sum": the sum of its values; a gauge has
    "values", each series' last, instead of a total)."""
    found: dict[str, dict[str, Any]] = {}
    data = reader.get_metrics_data()
    for resource in [] if data is None else data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                entry = found.setdefault(metric.name, {"series": 0, "total": 0,
                                                       "attributes": {}})
                for point in metric.data.data_points:
                    _add(entry, point, gauge=type(metric.data).__name__ == "Gauge")
    for entry in found.values():
        if "values" in entry:
            del entry["total"]
        else:
            entry["total"] = round(entry["total"], 3)
        if "sum" in entry:
            entry["sum"] = round(entry["sum"], 3)
        for values in entry["attributes"].values():
            values.sort(key=str)
    return dict(sorted(found.items()))


def _add(entry: dict[str, Any], point: Any, gauge: bool) -> None:
    entry["series"] += 1
    if hasattr(point, "count"):  # a histogram: how many, and their sum
        entry["total"] += point.count
        entry["sum"] = entry.get("sum", 0) + point.sum
    elif gauge:  # a sum of gauges would mean nothing
        entry.setdefault("values", []).append(round(point.value, 3))
    else:
        entry["total"] += point.value
    for key, value in point.attributes.items():
        values = entry["attributes"].setdefault(key, [])
        if value not in values:
            values.append(value)


def metric_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """``name [n series, total x] attribute=v1|v2; ...`` per metric (a histogram's total
    is its count, followed by its sum; a gauge's values instead of a total)."""
    return [f"{name} [{entry['series']} series, "
            + (f"values {'|'.join(str(v) for v in entry['values'])}" if "values" in entry
               else f"total {entry['total']}")
            + (f", sum {entry['sum']}" if "sum" in entry else "") + "] "
            + "; ".join(f"{key}={'|'.join(str(v) for v in values)}"
                        for key, values in sorted(entry["attributes"].items()))
            for name, entry in summary.items()]
