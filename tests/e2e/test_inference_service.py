"""The real inference service as a subprocess (vLLM CPU, the tiny model), driven with the official openai
client: base model and adapters (pushed through the admin API, on a port of its own here, and lazily resolved),
streaming, every refusal with its status code, and the server still answering after each. Images come as data:
URLs or from a local server on 127.0.0.1; nothing leaves this machine.

The service runs two API frontends over its one engine (`--api-server-count 2`), so everything here goes through
both; the last tests reach each frontend on purpose (see `_one_client_per_frontend`) and end the service with
SIGTERM."""

from __future__ import annotations

import base64
import http.server
import json
import pickle
import re
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from trainer_service.domain import JobStatus
from trainer_service.job_spec import Hyperparameters, JobSpec
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from trainer_service.worker.run import run_job
from vlmforge.processes import start_and_wait, stop

pytestmark = pytest.mark.slow

API_KEY, ADMIN_TOKEN = "test-api-key", "test-admin-token"
READY = re.compile(rb"inference service listening on http://127\.0\.0\.1:(\d+)")
ADMIN_READY = re.compile(rb"inference service listening on (http://127\.0\.0\.1:\d+) .*, admin endpoint on "
                         rb"(http://127\.0\.0\.1:\d+)")


@pytest.fixture(scope="module")
def artifacts(tiny_model_dir: Path, small_dataset_dir: Path, tmp_path_factory) -> tuple[Path, str]:
    """An artifact store holding one real fine-tune (3 steps) and named copies of it, good and broken."""
    state = tmp_path_factory.mktemp("trainer-state")
    store = JobStore(state / "jobs.sqlite3")
    job = JobService(store).create(JobSpec(str(tiny_model_dir), str(small_dataset_dir / "train.jsonl"),
                                           hyperparameters=Hyperparameters(max_steps=3, batch_size=2)))
    store.transition(job.id, JobStatus.RUNNING, "running in the test process")
    run_job(store, job.id, state)
    name = store.get_job(job.id).result["fine_tuned_model"]
    root = state / "artifacts"
    for copy in ("lazy-one", "push-one", "twice-at-once", "rank-too-high", "other-base", "bad-config", "pickled",
                 "churn-0", "churn-1", "fan-push", "fan-lazy", "fan-race"):
        shutil.copytree(root / name, root / copy)
    _edit_json(root / "rank-too-high" / "adapter" / "adapter_config.json", r=128)
    _edit_json(root / "other-base" / "manifest.json", base_model_config_sha256="0" * 64)
    (root / "bad-config" / "adapter" / "adapter_config.json").write_text("{broken")
    (root / "pickled" / "adapter" / "adapter_model.bin").write_bytes(pickle.dumps(_TouchWhenUnpickled(
        state / "pickle-payload-ran")))  # loading it with torch.load / pickle would create that file
    (tmp_path_factory.mktemp("outside") / "x").mkdir()
    return root, name


class _TouchWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


FRONTENDS = 2
FRONTEND_HEADER = "vlmforge-frontend"


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, artifacts, tmp_path_factory):
    """The service's URL, its admin endpoint's (on a port of its own, shared by the frontends), its process and
    log. The last test here stops it; otherwise this does."""
    root, _ = artifacts
    log = tmp_path_factory.mktemp("inference") / "inference.log"
    process, ready = start_and_wait(
        ["-m", "inference_service", "--base-model", str(tiny_model_dir), "--served-model-name", "tiny",
         "--artifacts-dir", str(root), "--port", "0", "--admin-port", "0", "--api-key", API_KEY,
         "--admin-token", ADMIN_TOKEN, "--api-server-count", str(FRONTENDS),
         "--allowed-media-domains", '["localhost"]', "--allow-private-media-addresses", "true",
         "--max-images-per-request", "2", "--max-image-pixels", "250000", "--max-request-body-bytes", "2000000",
         "--max-choices-per-request", "4", "--vllm-args", "--max-num-seqs 16"], log, ADMIN_READY, timeout_s=400)
    yield ready.group(1).decode(), ready.group(2).decode(), process, log
    assert stop(process) == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def server(service: tuple[str, str]) -> str:
    return service[0]


@pytest.fixture(scope="module")
def admin_url(service: tuple[str, str]) -> str:
    return service[1]


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def image_url(small_dataset_dir: Path) -> str:
    png = sorted((small_dataset_dir / "images" / "test").glob("*.png"))[0].read_bytes()
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _messages(url: str, question: str = "What color is the shortest bar?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def _ask(client: openai.OpenAI, url: str, model: str = "tiny", **kwargs) -> str:
    """The answer's text, after checking the model generated (this quickly built model may well answer '')."""
    reply = client.chat.completions.create(model=model, messages=_messages(url), max_tokens=8, temperature=0,
                                           **kwargs)
    assert reply.model == model and reply.usage.completion_tokens >= 1
    assert reply.choices[0].finish_reason in ("stop", "length")
    return reply.choices[0].message.content


def _admin(base: str, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, base + "/admin/v1" + path, headers=headers, timeout=120, **kwargs)


def test_an_idle_keep_alive_connection_outlives_the_openai_clients_expiry(server: str) -> None:
    """The openai client (httpx) drops a connection idle for 5 s; a server that closed it at 5 s too (uvicorn's
    default) would race a request sent just then, which fails with a connection error (an alias test caught
    it). So one connection idle past 5 s must still be the same open connection."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server, headers=headers, timeout=60,
                      limits=httpx.Limits(keepalive_expiry=60)) as client:
        ports = []
        for pause_s in (0, 6):
            time.sleep(pause_s)
            reply = client.get("/v1/models")
            assert reply.status_code == 200
            ports.append(reply.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert ports[0] == ports[1], "the service closed an idle connection within 6 s"


def test_the_base_model_answers_streamed_and_not(client: openai.OpenAI, image_url: str) -> None:
    whole = _ask(client, image_url, extra_body={"min_tokens": 8})
    stream = client.chat.completions.create(model="tiny", messages=_messages(image_url), max_tokens=8,
                                            temperature=0, stream=True, extra_body={"min_tokens": 8})
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == whole
    reply = client.chat.completions.create(model="tiny", messages=_messages(image_url), max_tokens=4, n=2,
                                           temperature=1.0, seed=7, top_p=0.9, stop=["."])
    assert len(reply.choices) == 2


def test_an_adapter_pushed_at_run_time_answers_while_a_base_stream_keeps_flowing(
        client: openai.OpenAI, admin_url: str, image_url: str, artifacts) -> None:
    def long_stream() -> list:
        return list(client.chat.completions.create(
            model="tiny", messages=_messages(image_url), max_tokens=120, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))

    with ThreadPoolExecutor(1) as pool:
        flowing = pool.submit(long_stream)
        loaded = _admin(admin_url, "POST", "/adapters", json={"name": "push-one"})
        assert loaded.status_code == 200 and loaded.json()["newly_loaded"], loaded.text
        _ask(client, image_url, model="push-one")
        chunks = flowing.result(timeout=120)
    assert chunks[-1].usage.completion_tokens == 120
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"
    models = {model.id: model for model in client.models.list().data}
    assert models["push-one"].parent == "tiny"
    assert _admin(admin_url, "GET", "/adapters").json()["adapters"] == sorted(
        name for name in models if name != "tiny")


def test_an_adapter_is_loaded_lazily_on_its_first_request_streamed_and_not(client, image_url) -> None:
    assert "lazy-one" not in {model.id for model in client.models.list().data}
    _ask(client, image_url, model="lazy-one")
    stream = client.chat.completions.create(model="lazy-one", messages=_messages(image_url), max_tokens=8,
                                            temperature=0, stream=True)
    chunks = list(stream)
    assert chunks and all(chunk.model == "lazy-one" for chunk in chunks)
    assert "lazy-one" in {model.id for model in client.models.list().data}


def test_two_concurrent_loads_of_one_adapter_load_it_once(admin_url: str) -> None:
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: _admin(admin_url, "POST", "/adapters", json={"name": "twice-at-once"}),
                                range(2)))
    assert [reply.status_code for reply in replies] == [200, 200]
    assert sorted(reply.json()["newly_loaded"] for reply in replies) == [False, True]


def test_unload_then_lazy_load_again(admin_url: str, client, image_url) -> None:
    for name in ("churn-0", "churn-1"):
        assert _admin(admin_url, "POST", "/adapters", json={"name": name}).status_code == 200
        assert _admin(admin_url, "DELETE", f"/adapters/{name}").status_code == 200
    assert _admin(admin_url, "DELETE", "/adapters/churn-0").status_code == 404
    _ask(client, image_url, model="churn-0")


@pytest.mark.parametrize("name, status, reason", [
    ("never-trained", 404, "model_not_found"),
    ("rank-too-high", 400, "adapter_rank"),
    ("other-base", 400, "adapter_base_model"),
    ("bad-config", 400, "adapter_config"),
    ("pickled", 400, "adapter_pickle"),
    ("..", 400, "adapter_name"),
    ("../../etc", 400, "adapter_name"),
])
def test_bad_adapters_are_refused_with_why_by_push_and_by_request(admin_url, client, image_url, name, status,
                                                                 reason) -> None:
    pushed = _admin(admin_url, "POST", "/adapters", json={"name": name})
    assert (pushed.status_code, pushed.json()["error"]["code"]) == (status, reason), pushed.text
    assert "/" not in pushed.json()["error"]["message"].replace("'/'", "")
    expected = openai.NotFoundError if status == 404 else openai.BadRequestError
    with pytest.raises(expected):
        _ask(client, image_url, model=name)
    _ask(client, image_url)


def test_bad_adapter_loads_do_not_disturb_requests_already_running(admin_url, client, image_url,
                                                                   artifacts) -> None:
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(_ask, client, image_url, "push-one") for _ in range(12)]
        bad = [pool.submit(_admin, admin_url, "POST", "/adapters", json={"name": name})
               for name in ("rank-too-high", "other-base", "bad-config", "pickled", "nope") * 5]
        assert len(bad) == 25 and all(reply.result().status_code in (400, 404) for reply in bad)
        for answer in good:
            answer.result()
    root, _ = artifacts
    assert not (root.parent / "pickle-payload-ran").exists(), "the pickle was never unpickled"


def test_admin_and_api_without_the_right_token_get_401(server: str, admin_url: str) -> None:
    assert _admin(admin_url, "GET", "/adapters", token=None).status_code == 401
    assert _admin(admin_url, "GET", "/adapters", token=API_KEY).status_code == 401
    for key in ("wrong", ADMIN_TOKEN):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server + "/v1", api_key=key, max_retries=0).models.list()
    assert httpx.get(server + "/health").status_code == 200  # probes need no key


def test_the_admin_api_is_served_on_its_own_port_only(server: str, admin_url: str) -> None:
    """So that a network policy on that port can keep it to the trainer."""
    assert server != admin_url
    for method, path, body in (("GET", "/adapters", None), ("POST", "/adapters", {"name": "push-one"}),
                               ("DELETE", "/adapters/push-one", None)):
        on_main = _admin(server, method, path, json=body)
        assert (on_main.status_code, on_main.json()["error"]["code"]) == (404, "unsupported_endpoint"), on_main.text
    assert _admin(admin_url, "GET", "/adapters").status_code == 200
    no_name = _admin(admin_url, "POST", "/adapters", json={})
    assert no_name.status_code == 400 and "error" in no_name.json(), no_name.text  # vLLM's error shape here too
    for path in ("/v1/models", "/health", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(admin_url + path, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 404


class _Images(http.server.BaseHTTPRequestHandler):
    png = b""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/chart.png")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def image_server(image_url: str):
    _Images.png = base64.b64decode(image_url.split(",", 1)[1])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_port
    httpd.shutdown()


def test_an_allowed_http_image_is_fetched_and_a_redirect_is_refused(client, image_url, image_server) -> None:
    assert _ask(client, f"http://localhost:{image_server}/chart.png") == _ask(client, image_url)
    with pytest.raises(openai.BadRequestError, match="redirects are not followed"):
        _ask(client, f"http://localhost:{image_server}/redirect")


def _png_data_url(width: int, height: int) -> str:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("case, status, reason", [
    ("loopback_literal", 400, "image_url_refused"),
    ("not_allowed_host", 400, "image_url_refused"),
    ("userinfo_trick", 400, "image_url_refused"),
    ("file_url", 400, "image_url_scheme"),
    ("bad_base64", 400, "image_invalid"),
    ("not_an_image", 400, "image_invalid"),
    ("truncated_png", 400, "image_invalid"),
    ("zero_bytes", 400, "image_invalid"),
    ("bomb", 400, "image_too_many_pixels"),
    ("three_images", 400, "too_many_images"),
    ("huge_n", 400, "n_too_large"),
    ("max_tokens_beyond_context", 400, "max_tokens"),
    ("chat_template", 400, "chat_template"),
    ("body_not_object", 400, "invalid_body"),
    ("body_not_json", 400, "invalid_body"),
    ("body_too_large", 413, "body_too_large"),
    ("unknown_model", 404, None),
    ("unserved_endpoint", 404, "unsupported_endpoint"),
])
def test_each_bad_request_gets_its_status_and_the_next_request_is_answered(server, client, image_url, case,
                                                                           status, reason) -> None:
    png = base64.b64decode(image_url.split(",", 1)[1])
    urls = {
        "loopback_literal": "http://127.0.0.1:9/x.png", "not_allowed_host": "http://example.com/x.png",
        "userinfo_trick": "http://localhost\\@example.com/x.png", "file_url": "file:///etc/passwd",
        "bad_base64": "data:image/png;base64,@@@", "not_an_image": "data:text/plain;base64,aGk=",
        "truncated_png": "data:image/png;base64," + base64.b64encode(png[: len(png) // 2]).decode(),
        "zero_bytes": "data:image/png;base64,", "bomb": _png_data_url(3000, 3000),
    }
    body: object = {"model": "tiny", "messages": _messages(urls.get(case, image_url)), "max_tokens": 4}
    path = "/v1/chat/completions"
    if case == "three_images":
        body["messages"][0]["content"] = [body["messages"][0]["content"][0]] * 3
    overrides = {"huge_n": {"n": 10_000}, "max_tokens_beyond_context": {"max_tokens": 10**7},
                 "chat_template": {"chat_template": "{{ 'owned' }}"}, "unknown_model": {"model": "no-such-model"}}
    body.update(overrides.get(case, {}))
    if case == "body_not_object":
        body = ["not", "an", "object"]
    content = json.dumps(body).encode()
    if case == "body_not_json":
        content = b"{this is not json"
    if case == "body_too_large":
        content = b" " * 2_000_001 + content
    if case == "unserved_endpoint":
        path = "/v1/completions"
    reply = httpx.post(server + path, content=content, timeout=120, headers={
        "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    if reason:
        assert error["code"] == reason
    assert not re.search(r"/(tmp|home|work|root|usr)/|0x[0-9a-f]{6,}", error["message"]), error["message"]
    _ask(client, image_url)


def test_metrics_parse_and_show_our_histograms_moving(server: str, client, image_url) -> None:
    def samples() -> dict:
        text = httpx.get(server + "/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = samples()
    _ask(client, image_url)
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=_messages(image_url), max_tokens=4,
                                                           stream=True)
    list(raw.parse())
    after = samples()
    # Server-Timing (W3C) comes with the stream's first chunk: our stages before the hand-off, then vLLM's.
    stages = [metric.split(";")[0] for metric in raw.headers["server-timing"].split(", ")]
    assert stages == ["read", "parse", "checks", "resolve", "decode", "image", "vllm_render", "vllm_engine",
                      "total"], stages
    assert all(after.get(("vlmforge_inference_stage_seconds_count", (("stage", name),)), 0) >= 1 for name in stages)
    count = ("vlmforge_inference_request_duration_seconds_count", (("model", "tiny"), ("status", "200")))
    assert after[count] >= before.get(count, 0) + 2
    assert after[("vlmforge_inference_time_to_first_token_seconds_count", (("model", "tiny"),))] >= 1
    assert after[("vlmforge_inference_loaded_adapters", ())] >= 1
    assert any(name == "vlmforge_inference_adapter_load_duration_seconds_count" for name, _ in after)
    assert any(name == "vlmforge_inference_requests_rejected_total" for name, _ in after)
    assert any(name.startswith("vllm:") for name, _ in after)


# Model aliases with the trainer service (model_alias_checks.py) run on this module's service: imported here, so
# one vLLM engine serves both, and here in the file, so they run before any test that stops the service.
from .model_alias_checks import (  # noqa: E402, F401 - collected from this module's namespace
    alias_run,
    test_a_better_fine_tune_moves_the_alias_under_32_callers_and_a_worse_one_does_not,
    test_a_job_asking_for_an_alias_is_checked_naming_the_field,
    test_rollback_restores_the_previous_adapter_and_every_frontend_lists_and_reports_it,
)


def _one_client_per_frontend(server: str) -> dict[str, httpx.Client]:
    """A client holding a keep-alive connection to each frontend. vLLM's frontends accept on one shared socket,
    each new connection going to the frontend with the fewest open connections (vLLM 0.32's least-loaded
    accept), and our `vlmforge-frontend` response header names the one that answered. So: open connections one
    by one, each kept open, until every frontend answered one; a repeat (a frontend busy for over vLLM's 5 ms
    defer window takes it anyway) only costs another try. Every later request checks the header again."""
    clients: dict[str, httpx.Client] = {}
    spare: list[httpx.Client] = []
    for _ in range(40):
        client = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
        frontend = client.get("/v1/models").headers[FRONTEND_HEADER]
        if frontend in clients:
            spare.append(client)  # kept open until the end, so its frontend stays the more loaded one
        else:
            clients[frontend] = client
        if len(clients) == FRONTENDS:
            break
    for client in spare:
        client.close()
    assert len(clients) == FRONTENDS, f"only frontends {sorted(clients)} answered"
    return clients


@pytest.fixture()
def frontend_clients(server: str):
    clients = _one_client_per_frontend(server)
    yield clients
    for client in clients.values():
        client.close()


def _chat_on(client: httpx.Client, frontend: str, model: str, image_url: str, **body) -> httpx.Response:
    reply = client.post("/v1/chat/completions", json={"model": model, "messages": _messages(image_url),
                                                      "max_tokens": 4, "temperature": 0, **body})
    assert reply.headers[FRONTEND_HEADER] == frontend, "the kept connection moved to another frontend"
    return reply


def _models_on(client: httpx.Client, frontend: str) -> list[str]:
    reply = client.get("/v1/models")
    assert reply.status_code == 200 and reply.headers[FRONTEND_HEADER] == frontend, reply.text
    return [model["id"] for model in reply.json()["data"]]


def _samples(client: httpx.Client) -> dict:
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


LAZY_LOADS = ("vlmforge_inference_adapter_load_duration_seconds_count", (("outcome", "loaded"), ("source", "lazy")))


def test_the_sockets_the_frontends_listen_on_for_the_engine_stay_reachable(service) -> None:
    """The engine connects to each frontend's IPC sockets as it starts. vLLM's listener object unlinks their files
    when it is collected, and an engine socket that had not connected by then retried ENOENT forever: a frontend
    that never heard from the engine (2 to 3 starts in 11 here), unless the main process keeps the listeners."""
    process = psutil.Process(service[2].pid)
    paths = {connection.laddr for child in process.children(recursive=True)
             for connection in child.net_connections(kind="unix") if connection.laddr}
    assert len(paths) >= 2 * FRONTENDS, paths  # each frontend's input and output socket, at least
    assert all(Path(path).exists() for path in paths), {path: Path(path).exists() for path in paths}


def test_an_adapter_pushed_through_the_admin_api_answers_on_every_frontend_until_unloaded(
        frontend_clients: dict[str, httpx.Client], admin_url: str, image_url: str) -> None:
    clients = frontend_clients
    assert _admin(admin_url, "POST", "/adapters", json={"name": "fan-push"}).json()["newly_loaded"]
    for frontend, client in clients.items():
        reply = _chat_on(client, frontend, "fan-push", image_url)
        assert reply.status_code == 200 and reply.json()["model"] == "fan-push", reply.text
    listings = [_models_on(client, frontend) for frontend, client in clients.items()]
    assert "fan-push" in listings[0] and all(listing == listings[0] for listing in listings), listings
    assert _admin(admin_url, "DELETE", "/adapters/fan-push").status_code == 200
    assert all("fan-push" not in _models_on(client, frontend) for frontend, client in clients.items())


def test_a_lazy_load_on_one_frontend_is_served_by_the_other_and_racing_frontends_load_once(
        frontend_clients: dict[str, httpx.Client], image_url: str) -> None:
    clients = frontend_clients
    (first, first_client), (second, second_client) = clients.items()
    lazy_before = _samples(first_client).get(LAZY_LOADS, 0)
    assert _chat_on(first_client, first, "fan-lazy", image_url).status_code == 200
    assert "fan-lazy" in _models_on(second_client, second)
    assert _chat_on(second_client, second, "fan-lazy", image_url).json()["model"] == "fan-lazy"
    with ThreadPoolExecutor(FRONTENDS) as pool:  # the same never-loaded adapter asked of both at once
        racing = list(pool.map(lambda item: _chat_on(item[1], item[0], "fan-race", image_url), clients.items()))
    assert [reply.status_code for reply in racing] == [200] * FRONTENDS, [reply.text for reply in racing]
    assert _samples(second_client)[LAZY_LOADS] == lazy_before + 2, "fan-lazy and fan-race, each loaded once"


def test_metrics_on_any_frontend_total_the_requests_of_all(frontend_clients: dict[str, httpx.Client],
                                                           image_url: str) -> None:
    clients = frontend_clients
    count = ("vlmforge_inference_request_duration_seconds_count", (("model", "tiny"), ("status", "200")))
    before = _samples(next(iter(clients.values()))).get(count, 0)
    for frontend, client in clients.items():
        for stream in (False, True):
            assert _chat_on(client, frontend, "tiny", image_url, stream=stream).status_code == 200
    expected = before + 2 * FRONTENDS
    # A frontend counts a request just after its last byte left, so the client may ask a moment before that.
    deadline = time.monotonic() + 10
    while _samples(next(iter(clients.values()))).get(count, 0) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [_samples(client)[count] for client in clients.values()] == [expected] * FRONTENDS


def test_sigterm_drains_every_frontend_and_exits_0(service, frontend_clients: dict[str, httpx.Client],
                                                   image_url: str) -> None:
    """Last here: it ends the module's service."""
    _, _, process, log = service
    family = psutil.Process(process.pid).children(recursive=True)
    clients = frontend_clients
    # SIGTERM goes out as soon as every stream has its first chunk, long before 400 tokens are generated.
    body = {"model": "tiny", "messages": _messages(image_url), "max_tokens": 400, "min_tokens": 400,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0}
    started = threading.Barrier(FRONTENDS + 1, timeout=60)

    def stream(frontend: str, client: httpx.Client) -> list[str]:
        with client.stream("POST", "/v1/chat/completions", json=body) as reply:
            assert reply.headers[FRONTEND_HEADER] == frontend
            lines = reply.iter_lines()
            data = [next(line for line in lines if line.startswith("data: "))]
            started.wait()  # every stream has its first chunk; SIGTERM comes now, the rest is read after
            return data + [line for line in lines if line.startswith("data: ")]

    with ThreadPoolExecutor(FRONTENDS) as pool:
        streams = [pool.submit(stream, frontend, client) for frontend, client in clients.items()]
        started.wait()
        process.send_signal(signal.SIGTERM)
        chunks = [future.result(timeout=120) for future in streams]
    assert process.wait(90) == 0, log.read_text()[-3000:]
    for lines in chunks:
        assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 400
    assert len(family) > FRONTENDS, "the frontends and the engine run in children"
    # Children see their parent gone through a closed pipe, a moment later on a loaded machine: give them that
    # (15 s at most; exited children left unreaped by their new parent count as gone).
    deadline = time.monotonic() + 15
    while (running := [p for p in family if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running, f"orphans left: {running}"


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
