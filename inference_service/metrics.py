"""Our Prometheus metrics, registered beside vLLM's own (`vllm:*`) so one /metrics serves both.

With several API frontends prometheus-client runs in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before the
frontends start, as `vllm serve` does): every process writes its values to files there, and /metrics in any
frontend sums counters and histograms over all of them. A gauge says how to combine instead (`mostrecent`:
the value last set, by whichever frontend loaded or unloaded an adapter).
"""

from __future__ import annotations

import math
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Our stages take tens of microseconds to milliseconds; vLLM's and the total up to seconds.
STAGE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                   30)
# Adapter loads are rare: their series exist from the start (at zero), or rate() would miss the first one.
ADAPTER_LOAD_SOURCES = ("push", "lazy")
ADAPTER_LOAD_OUTCOMES = ("loaded", "refused")


def multiprocess_mode() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry | None):
        """`registry` None in multiprocess mode: /metrics then reads the files, not any registry's metrics."""
        self.request_duration = Histogram(
            "vlmforge_inference_request_duration_seconds", "chat request time, arrival to last byte",
            ["model", "status"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.time_to_first_token = Histogram(
            "vlmforge_inference_time_to_first_token_seconds", "streamed chat requests: arrival to first chunk",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.stage_seconds = Histogram(
            "vlmforge_inference_stage_seconds", "chat requests: each stage before the first byte out (as in the "
            "Server-Timing header; total = arrival to first byte)", ["stage"], buckets=STAGE_BUCKETS_S,
            registry=registry)
        self.adapter_loads = Histogram(
            "vlmforge_inference_adapter_load_duration_seconds", "checking and loading one adapter",
            ["source", "outcome"], buckets=LOAD_BUCKETS_S, registry=registry)
        for source in ADAPTER_LOAD_SOURCES:
            for outcome in ADAPTER_LOAD_OUTCOMES:
                self.adapter_loads.labels(source=source, outcome=outcome)
        self.loaded_adapters = Gauge("vlmforge_inference_loaded_adapters", "adapters loaded in the engine",
                                     registry=registry, multiprocess_mode="mostrecent")
        self.rejected = Counter("vlmforge_inference_requests_rejected_total", "requests refused before the engine",
                                ["reason"], registry=registry)
        self.adapter_scores = Gauge(
            "vlmforge_inference_adapter_evaluation_score", "the trainer's evaluation of a loaded adapter "
            "(phase before = its base model zero-shot, after = fine-tuned)", ["adapter", "phase", "metric"],
            registry=registry, multiprocess_mode="mostrecent")
        self._score_labels: dict[str, list[tuple[str, str, str]]] = {}
        self.alias_info = Gauge("vlmforge_inference_alias_info", "1 for the model (an adapter, or the base model) "
                                "each alias serves", ["alias", "adapter"], registry=registry,
                                multiprocess_mode="mostrecent")
        self._alias_targets: dict[str, str] = {}

    def adapter_loaded(self, name: str, evaluation: dict[str, dict[str, float]], *, loaded_count: int) -> None:
        self.loaded_adapters.set(loaded_count)
        labels = _score_series(evaluation)
        for phase, metric, value in labels:
            self.adapter_scores.labels(name, phase, metric).set(value)
        self._score_labels[name] = [(name, phase, metric) for phase, metric, _ in labels]

    def alias_targets(self, targets: dict[str, str], left_behind: set[tuple[str, str]] = frozenset()) -> None:
        """alias -> served model name, as the alias files say now; `left_behind`: (alias, target) pairs of the
        aliases' histories. Each target left behind is set to 0 before its series is dropped: with several
        frontends (multiprocess mode, most recent value wins) that 0 outdates the 1 another frontend wrote
        before the switch, whichever frontend saw which target."""
        past = {(alias, target) for alias, target in self._alias_targets.items()} | set(left_behind)
        for alias, target in past - set(targets.items()):
            self.alias_info.labels(alias, target).set(0)
            if not multiprocess_mode():  # there the series stays at 0 (prometheus-client cannot remove it)
                self.alias_info.remove(alias, target)
        for alias, target in targets.items():
            self.alias_info.labels(alias, target).set(1)
        self._alias_targets = dict(targets)

    def adapter_unloaded(self, name: str, evaluation: dict[str, dict[str, float]], *, loaded_count: int) -> None:
        """`evaluation`: the adapter's stored scores, which name the series another frontend may have set."""
        self.loaded_adapters.set(loaded_count)
        known = self._score_labels.pop(name, None)
        for labels in known if known is not None else [(name, p, m) for p, m, _ in _score_series(evaluation)]:
            if multiprocess_mode():  # prometheus-client cannot remove a series there: NaN says "no score now"
                self.adapter_scores.labels(*labels).set(math.nan)
            else:
                self.adapter_scores.remove(*labels)


def _score_series(evaluation: dict[str, dict[str, float]]) -> list[tuple[str, str, float]]:
    """(phase, metric, value) of each numeric score."""
    return [(phase, metric, value) for phase, scores in evaluation.items() for metric, value in scores.items()
            if isinstance(value, int | float) and not isinstance(value, bool)]
