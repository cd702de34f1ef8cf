"""The two Grafana dashboards (serving, training), built with Grafana's grafana-foundation-sdk and written as JSON
beside this file, where the monitoring component's ConfigMap (and a plain Grafana's "Import dashboard") takes them.

    .venv/bin/python k8s/components/monitoring/dashboards/generate.py      # after editing a panel

tests/unit/test_dashboards.py fails when the committed JSON differs from what this writes; the real-Prometheus
test (tests/e2e/test_observability.py) runs every query below against both services.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, StackingMode
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef, DataTransformerConfig
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The job labels of the Prometheus Operator's ServiceMonitors (the Service names; see service-monitors.yaml).
TRAINER_JOB, INFERENCE_JOB = "vlmforge-trainer", "vlmforge-inference"
QUANTILES = (0.5, 0.95, 0.99)
RATE = "$__rate_interval"  # Grafana's: at least 4 scrape intervals, so rate() always has two samples


def query(expr: str, legend: str = "", *, instant: bool = False, ref_id: str = "A") -> prometheus.Dataquery:
    built = prometheus.Dataquery().expr(expr).ref_id(ref_id).datasource(DATASOURCE)
    if legend:
        built = built.legend_format(legend)
    return built.instant().format(PromQueryFormat.TABLE) if instant else built.range()


def quantiles(bucket_metric: str, by: str = "", selector: str = "") -> list[prometheus.Dataquery]:
    """p50 / p95 / p99 of a histogram over the rate window, one query each."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [query(f"histogram_quantile({q}, sum by ({group}) (rate({bucket_metric}{selector}[{RATE}])))",
                  f"p{round(q * 100)}{suffix}", ref_id="ABC"[i]) for i, q in enumerate(QUANTILES)]


def graph(title: str, description: str, targets: Iterable[prometheus.Dataquery], unit: str, *,
          width: int = 12, height: int = 8, stacked: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
             .span(width).height(height).targets(list(targets))
             .legend(VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.TABLE)
                     .placement(LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"])))
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(30)
    return panel


def single(title: str, description: str, target: prometheus.Dataquery, unit: str = "short") -> stat.Panel:
    return (stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).span(4).height(4)
            .with_target(target).reduce_options(ReduceDataOptions().calcs(["lastNotNull"])))


def _numbered(board: dashboard.Dashboard, panels: list) -> dashboard.Dashboard:
    for number, panel in enumerate(panels, start=1):
        board = board.with_panel(panel.id(number))
    return board


def _board(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (dashboard.Dashboard(title).uid(uid).description(description).tags(["vlmforge"]).editable()
            .time("now-3h", "now").refresh("30s").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
            .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")))


def serving_dashboard() -> dashboard.Dashboard:
    requests = "vlmforge_inference_request_duration_seconds"
    panels = [
        single("Inference replicas up", "Scrape targets of the inference service answering /metrics.",
               query(f'sum(up{{job="{INFERENCE_JOB}"}})')),
        single("Adapters loaded", "LoRA adapters loaded in the engines, all replicas.",
               query("sum(vlmforge_inference_loaded_adapters)")),
        single("Requests running", "Requests the engines are generating for right now.",
               query("sum(vllm:num_requests_running)")),
        single("Requests waiting", "Requests queued in the engines (what the autoscaler scales on).",
               query("sum(vllm:num_requests_waiting)")),
        single("KV cache used", "The fullest replica's KV cache; near 100% means new requests wait.",
               query("max(vllm:kv_cache_usage_perc)"), unit="percentunit"),
        single("Requests/s", "Chat requests per second, all models and statuses.",
               query(f"sum(rate({requests}_count[{RATE}]))"), unit="reqps"),
        graph("Requests/s by model and status", "Chat completions as the client sees them: the model asked for "
              "(base or adapter name) and the HTTP status answered.",
              [query(f"sum by (model, status) (rate({requests}_count[{RATE}]))", "{{model}} {{status}}")],
              "reqps", stacked=True),
        graph("Rejected requests by reason", "Refused before reaching the engine (auth, body size, image checks, "
              "unknown model...): the `code` of the OpenAI error body.",
              [query(f"sum by (reason) (rate(vlmforge_inference_requests_rejected_total[{RATE}]))", "{{reason}}")],
              "reqps", stacked=True),
        graph("Time to first token", "vLLM: from the request reaching the engine to its first token.",
              quantiles("vllm:time_to_first_token_seconds_bucket"), "s", width=8),
        graph("Inter-token latency", "vLLM: time between two tokens of one response (streaming smoothness).",
              quantiles("vllm:inter_token_latency_seconds_bucket"), "s", width=8),
        graph("End-to-end latency", "This service: request arrival to last byte, image checks included.",
              quantiles(f"{requests}_bucket"), "s", width=8),
        graph("Queue depth and running requests", "Waiting: accepted but not yet scheduled; running: generating.",
              [query("sum(vllm:num_requests_waiting)", "waiting", ref_id="A"),
               query("sum(vllm:num_requests_running)", "running", ref_id="B")], "short"),
        graph("KV cache use", "Share of each replica's KV cache blocks in use.",
              [query("vllm:kv_cache_usage_perc", "{{instance}}")], "percentunit"),
        graph("Adapters loaded", "Adapters in each replica's engine (pushed by the trainer or loaded on first use).",
              [query("vlmforge_inference_loaded_adapters", "{{instance}}")], "short"),
        graph("Adapter load time", "p95 of checking and loading one adapter, by how it came (push: the trainer "
              "or admin API; lazy: a request named it) and outcome (loaded / refused).",
              [query("histogram_quantile(0.95, sum by (le, source, outcome) "
                     f"(rate(vlmforge_inference_adapter_load_duration_seconds_bucket[{RATE}])))",
                     "p95 {{source}} {{outcome}}")], "s"),
    ]
    board = _board("vlmforge-serving", "vlmforge / serving",
                   "The inference service: vLLM's vllm:* engine metrics and vlmforge_inference_* of the layer in "
                   "front of it.")
    return _numbered(board, panels)


def training_dashboard() -> dashboard.Dashboard:
    score = "vlmforge_trainer_evaluation_score"
    panels = [
        single("Trainer up", "The trainer's /metrics answering.", query(f'sum(up{{job="{TRAINER_JOB}"}})')),
        single("Queue length", "Jobs waiting for a worker slot.", query("sum(vlmforge_trainer_queue_length)")),
        single("Jobs running", "Jobs training right now.", query('sum(vlmforge_trainer_jobs{status="running"})')),
        (bargauge.Panel().title("Jobs by status").description("Every job in the store, by status.")
         .datasource(DATASOURCE).span(12).height(4).unit("short")
         .with_target(query("sum by (status) (vlmforge_trainer_jobs)", "{{status}}"))
         .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))),
        graph("Jobs by status over time", "How many jobs sit in each status.",
              [query("sum by (status) (vlmforge_trainer_jobs)", "{{status}}")], "short", width=8),
        graph("Queue length", "Jobs waiting for a worker slot; one that never drains is the QueueStuck alert.",
              [query("sum(vlmforge_trainer_queue_length)", "queued")], "short", width=8),
        graph("Job duration", "Start to end of the recent finished jobs (p50, p90).",
              [query(f"histogram_quantile({q}, sum by (le) (vlmforge_trainer_job_duration_seconds_bucket))",
                     f"p{round(q * 100)}", ref_id="AB"[i]) for i, q in enumerate((0.5, 0.9))], "s", width=8),
        graph("Training loss", "Latest training loss of each running job.",
              [query("vlmforge_trainer_training_loss", "{{job_id}}")], "none"),
        graph("Samples/s", "Training throughput of each running job.",
              [query("vlmforge_trainer_samples_per_second", "{{job_id}}")], "short"),
        graph("Tokens/s", "Input tokens (prompt, image and answer) per second of each running job.",
              [query("vlmforge_trainer_tokens_per_second", "{{job_id}}")], "short"),
        graph("ETA", "Estimated time left of each running job's training at its current step rate.",
              [query("vlmforge_trainer_eta_seconds", "{{job_id}}")], "s"),
        (table.Panel().title("Evaluation before vs after, per adapter")
         .description("Test-set scores of each fine-tuned model: its base model zero-shot (before) and the "
                      "adapter (after), and the lift.")
         .datasource(DATASOURCE).span(24).height(10)
         .targets([query(f'max by (fine_tuned_model, metric) ({score}{{phase="before"}})', instant=True, ref_id="A"),
                   query(f'max by (fine_tuned_model, metric) ({score}{{phase="after"}})', instant=True, ref_id="B"),
                   query(f'max by (fine_tuned_model, metric) ({score}{{phase="after"}}) - '
                         f'max by (fine_tuned_model, metric) ({score}{{phase="before"}})', instant=True, ref_id="C")])
         .with_transformation(DataTransformerConfig(id_val="merge", options={}))
         .with_transformation(DataTransformerConfig(id_val="organize", options={
             "excludeByName": {"Time": True},
             "renameByName": {"fine_tuned_model": "adapter", "Value #A": "before", "Value #B": "after",
                              "Value #C": "lift"}}))),
    ]
    board = _board("vlmforge-training", "vlmforge / training",
                   "The trainer: jobs by status, the queue, live loss and throughput of running jobs, and what "
                   "each fine-tune scored before and after.")
    return _numbered(board, panels)


DASHBOARDS = {"vlmforge-serving.json": serving_dashboard, "vlmforge-training.json": training_dashboard}


def render() -> dict[str, str]:
    """File name -> the dashboard JSON as committed."""
    return {name: json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
            for name, build in DASHBOARDS.items()}


def main() -> None:
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
