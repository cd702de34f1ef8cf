"""The Grafana dashboards: the committed JSON is exactly what the generator (grafana-foundation-sdk) writes, and
it holds together as Grafana's dashboard model (the SDK reads it back; ids, refIds and layout are sound). That
every query returns data is tests/e2e/test_observability.py's job, against a real Prometheus."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from grafana_foundation_sdk.models.dashboard import Dashboard

DASHBOARDS = Path(__file__).resolve().parents[2] / "k8s" / "components" / "monitoring" / "dashboards"


def _generator():
    spec = importlib.util.spec_from_file_location("vlmforge_dashboards", DASHBOARDS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return _generator().render()


def test_regenerating_changes_nothing(rendered: dict[str, str]) -> None:
    committed = {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}
    assert set(committed) == set(rendered), "a dashboard JSON without its generator, or the reverse"
    for name, text in rendered.items():
        assert committed[name] == text, (f"{name} is stale: run .venv/bin/python "
                                         "k8s/components/monitoring/dashboards/generate.py and commit the JSON")


@pytest.mark.parametrize("name", ["vlmforge-serving.json", "vlmforge-training.json"])
def test_each_dashboard_reads_back_as_grafana_s_model(rendered: dict[str, str], name: str) -> None:
    data = json.loads(rendered[name])
    board = Dashboard.from_json(data)
    assert board.uid == name.removesuffix(".json") and board.title and board.schema_version
    assert [v.name for v in board.templating.list_val] == ["datasource"]
    panels = data["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} runs off the 24-column grid"
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("title") and panel.get("description"), "every panel says what it shows"
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
        assert all(t["expr"].strip() and t["datasource"]["uid"] == "${datasource}" for t in targets)


def test_the_serving_and_training_dashboards_cover_what_operators_ask(rendered: dict[str, str]) -> None:
    def exprs(name: str) -> str:
        return "\n".join(t["expr"] for p in json.loads(rendered[name])["panels"] for t in p["targets"])

    serving, training = exprs("vlmforge-serving.json"), exprs("vlmforge-training.json")
    for metric in ("vlmforge_inference_request_duration_seconds_count", "vllm:time_to_first_token_seconds_bucket",
                   "vllm:inter_token_latency_seconds_bucket", "vlmforge_inference_request_duration_seconds_bucket",
                   "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                   "vlmforge_inference_requests_rejected_total", "vlmforge_inference_loaded_adapters",
                   "vlmforge_inference_adapter_load_duration_seconds_bucket"):
        assert metric in serving, metric
    for quantile in ("0.5", "0.95", "0.99"):
        assert serving.count(f"histogram_quantile({quantile},") >= 3, "TTFT, inter-token and e2e at each quantile"
    for metric in ("vlmforge_trainer_jobs", "vlmforge_trainer_queue_length", "vlmforge_trainer_training_loss",
                   "vlmforge_trainer_samples_per_second", "vlmforge_trainer_tokens_per_second",
                   "vlmforge_trainer_eta_seconds", 'vlmforge_trainer_evaluation_score{phase="before"}',
                   'vlmforge_trainer_evaluation_score{phase="after"}'):
        assert metric in training, metric
