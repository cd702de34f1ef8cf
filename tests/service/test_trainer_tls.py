"""TLS on the trainer's two gRPC servers, with certificates this test makes (`cryptography`): the client API
through `vlmforge.client` with the right CA, a wrong CA, mutual TLS with and without a client certificate; a
certificate replaced while the server runs (new connections get it, a half-written pair changes nothing); the
worker API over TLS (a real worker process trains through it in test_worker_api.py); the health check; and the
API key sent as metadata on every call, the reconnected Watch stream included. Real servers on port 0, loopback
only."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
from cryptography.hazmat.primitives import serialization

from trainer_service import cli, healthcheck
from trainer_service.auth.keys import KeyStore, mint_key, write_key_file
from trainer_service.domain import JobStatus
from trainer_service.grpc_api import server as server_module
from trainer_service.grpc_api.malformed import MalformedRequestInterceptor
from trainer_service.grpc_api.auth_interceptor import ClientAuth
from trainer_service.grpc_api.reporting import create_worker_api_server
from trainer_service.grpc_api.server import create_server
from trainer_service.grpc_api.tls import ServerTls, TlsFilesError
from trainer_service.job_spec import Placement
from trainer_service.jobs import JobService
from trainer_service.kubernetes.manifest import worker_job_manifest
from trainer_service.store import JobStore
from trainer_service.worker.remote_store import WORKER_API_CA_BUNDLE_ENV, RemoteJobStore
from tests.pki import Pki
from vlmforge.client import AsyncTrainer, AuthenticationError, Trainer, UnavailableError
from vlmforge.client._channel import Tls

FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                  ("grpc.max_reconnect_backoff_ms", 200))
TOKEN = "worker-token-for-the-tls-test"
# Each client its own connection (no subchannel shared across channels): "a new connection" means one.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@pytest.fixture()
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return Pki(directory)


# ------------------------------------------------------------------------------------------------ servers

class RecordingInterceptor(MalformedRequestInterceptor):
    """The server's own first interceptor, noting each call's method and authorization metadata."""

    seen: list[tuple[str, str | None]] = []

    async def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        RecordingInterceptor.seen.append((handler_call_details.method.rpartition("/")[2],
                                          metadata.get("authorization")))
        return await super().intercept_service(continuation, handler_call_details)


@pytest.fixture()
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


def _serve(store: JobStore, address: str, tls: ServerTls):
    running = create_server(JobService(store, watch_poll_interval_s=0.05), address,
                            max_message_bytes=8 * 1024 * 1024, tls=tls)
    running.set_serving(True)
    return running


@pytest.fixture()
def serve(store):
    started = []

    def start(tls: ServerTls, address: str = "127.0.0.1:0"):
        started.append(_serve(store, address, tls))
        return started[-1]
    yield start
    for running in started:
        running.server.stop(None)


def _queued_job(store: JobStore) -> str:
    job, _ = store.create_job({"model": "m", "training_file": "t.jsonl"}, status=JobStatus.QUEUED)
    return job.id


# ---------------------------------------------------------------------------------------------- client API

def test_the_client_connects_with_the_right_ca_by_name_and_by_ip(pki, serve, store) -> None:
    running = serve(pki.server_tls())
    job_id = _queued_job(store)
    for host in ("localhost", "127.0.0.1"):
        with Trainer(f"{host}:{running.port}", ca_bundle=pki.ca_file) as client:
            assert client.jobs.retrieve(job_id).status == "queued"

    async def retrieve() -> str:
        async with AsyncTrainer(f"localhost:{running.port}", ca_bundle=pki.ca_file) as client:
            return (await client.jobs.retrieve(job_id)).status
    assert asyncio.run(retrieve()) == "queued"


def test_the_ca_bundle_comes_from_the_environment(pki, serve, store, monkeypatch) -> None:
    running = serve(pki.server_tls())
    monkeypatch.setenv("VLMFORGE_CA_BUNDLE", str(pki.ca_file))
    with Trainer(f"localhost:{running.port}") as client:
        assert list(client.jobs.list()) == []


def test_a_wrong_ca_or_plaintext_fails_the_handshake(pki, serve) -> None:
    running = serve(pki.server_tls())
    with Trainer(f"localhost:{running.port}", ca_bundle=pki.other_ca_file, timeout_s=5) as client, \
            pytest.raises(UnavailableError) as refused:
        list(client.jobs.list())
    assert "handshake" in refused.value.details.lower(), refused.value.details
    with Trainer(f"localhost:{running.port}", tls=False, timeout_s=5) as client, \
            pytest.raises(UnavailableError):
        list(client.jobs.list())


def test_mutual_tls_needs_a_client_certificate_the_client_ca_signed(pki, serve, store) -> None:
    running = serve(pki.server_tls(mutual=True))
    job_id = _queued_job(store)
    address = f"localhost:{running.port}"
    with Trainer(address, ca_bundle=pki.ca_file, timeout_s=5) as client, pytest.raises(UnavailableError):
        client.jobs.retrieve(job_id)
    stranger_cert, stranger_key = pki.client_files(pki.other_ca, "stranger")
    with Trainer(address, ca_bundle=pki.ca_file, client_cert=stranger_cert, client_key=stranger_key,
                 timeout_s=5) as client, pytest.raises(UnavailableError):
        client.jobs.retrieve(job_id)
    cert, key = pki.client_files(pki.client_ca, "alice")
    with Trainer(address, ca_bundle=pki.ca_file, client_cert=cert, client_key=key) as client:
        assert client.jobs.retrieve(job_id).id == job_id


def test_a_replaced_certificate_is_served_to_new_connections_without_a_restart(pki, serve, store) -> None:
    running = serve(pki.server_tls())
    address = f"localhost:{running.port}"
    job_id = _queued_job(store)
    kept = Trainer(address, ca_bundle=pki.ca_file, options=OWN_CONNECTION)  # a connection opened before the rotation
    assert kept.jobs.retrieve(job_id).id == job_id

    rotated = pki.other_ca.issue("vlmforge-trainer")
    pki.write("tls.crt", rotated.cert)  # half-written: the new certificate, still the old key
    with Trainer(address, ca_bundle=pki.ca_file, options=OWN_CONNECTION) as client:
        assert client.jobs.retrieve(job_id).id == job_id, "a mismatched pair must leave the old one in use"
    pki.write("tls.key", rotated.key)
    with Trainer(address, ca_bundle=pki.other_ca_file, options=OWN_CONNECTION) as client:
        assert client.jobs.retrieve(job_id).id == job_id
    with Trainer(address, ca_bundle=pki.ca_file, timeout_s=5, options=OWN_CONNECTION) as client, \
            pytest.raises(UnavailableError):
        client.jobs.retrieve(job_id)
    assert kept.jobs.retrieve(job_id).id == job_id, "open connections keep the certificate they started with"
    kept.close()


def test_files_that_cannot_be_used_are_named_at_start_up(pki, tmp_path: Path) -> None:
    with pytest.raises(TlsFilesError, match=r"--tls-key .*missing\.key: No such file"):
        ServerTls(pki.cert_file, tmp_path / "missing.key").credentials()
    other = pki.other_ca.issue("x")
    wrong_key = pki.write("wrong.key", other.key)
    with pytest.raises(TlsFilesError, match="the key does not belong to the certificate"):
        ServerTls(pki.cert_file, wrong_key).credentials()
    not_pem = pki.write("garbage.crt", b"hello")
    with pytest.raises(TlsFilesError, match="--tls-client-ca"):
        ServerTls(pki.cert_file, pki.key_file, not_pem).credentials()
    # An encrypted key would make OpenSSL ask for its passphrase on the terminal: refused with a line instead.
    encrypted = pki.write("encrypted.key", serialization.load_pem_private_key(pki.key_file.read_bytes(), None)
                          .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"passphrase")))
    with pytest.raises(TlsFilesError, match="the key is encrypted"):
        ServerTls(pki.cert_file, encrypted).credentials()


def test_the_api_key_goes_out_on_every_call_and_on_the_reconnected_stream(pki, store, monkeypatch) -> None:
    """Unary calls, the Watch stream, and the Watch stream opened again after a drain and a restart."""
    monkeypatch.setattr(server_module, "MalformedRequestInterceptor", RecordingInterceptor)
    RecordingInterceptor.seen = []
    first = _serve(store, "127.0.0.1:0", pki.server_tls())
    port = first.port
    job_id = _queued_job(store)
    monkeypatch.setenv("VLMFORGE_API_KEY", "vf-key-from-env")
    with Trainer(f"localhost:{port}", ca_bundle=pki.ca_file, options=FAST_RECONNECT) as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert client.jobs.retrieve(job_id).id == job_id
        events = client.jobs.events(job_id, reconnect_timeout_s=30)
        next(events)
        rest = pool.submit(list, events)
        first.drain(grace_s=1.0)
        second = _serve(store, f"127.0.0.1:{port}", pki.server_tls())
        try:
            _wait_for(lambda: [m for m, _ in RecordingInterceptor.seen].count("WatchFineTuningJob") >= 2)
            JobService(store).cancel(job_id)
            rest.result(timeout=30)
        finally:
            second.server.stop(None)
    methods = [method for method, _ in RecordingInterceptor.seen]
    assert methods.count("WatchFineTuningJob") >= 2 and "GetFineTuningJob" in methods
    assert {key for _, key in RecordingInterceptor.seen} == {"Bearer vf-key-from-env"}
    assert "vf-key-from-env" not in repr(Trainer("localhost:1"))


def test_the_trainer_s_own_key_check_accepts_the_client_s_key_over_tls(pki, store, tmp_path: Path) -> None:
    """The interceptor of trainer_service.auth behind TLS: the key from the client passes, none is refused."""
    key, entry = mint_key("team-a")
    write_key_file(tmp_path / "keys.json", {entry.id: entry})
    running = create_server(JobService(store), "127.0.0.1:0", max_message_bytes=1024 * 1024,
                            tls=pki.server_tls(), auth=ClientAuth(KeyStore(tmp_path / "keys.json")))
    try:
        address = f"localhost:{running.port}"
        with Trainer(address, ca_bundle=pki.ca_file, api_key=key) as client:
            assert list(client.jobs.list()) == []
        with Trainer(address, ca_bundle=pki.ca_file, api_key="") as client, pytest.raises(AuthenticationError):
            list(client.jobs.list())
    finally:
        running.server.stop(None)


def test_the_cli_takes_the_ca_and_the_client_certificate(pki, serve, store, capsys, monkeypatch) -> None:
    running = serve(pki.server_tls(mutual=True))
    job_id = _queued_job(store)
    cert, key = pki.client_files(pki.client_ca, "cli-user")
    server = ["--server", f"localhost:{running.port}"]
    assert cli.main([*server, "--ca-bundle", str(pki.ca_file), "--client-cert", str(cert), "--client-key", str(key),
                     "list"]) == 0
    assert job_id in capsys.readouterr().out
    monkeypatch.setenv("VLMFORGE_CA_BUNDLE", str(pki.other_ca_file))
    monkeypatch.setenv("VLMFORGE_CLIENT_CERT", str(cert))
    monkeypatch.setenv("VLMFORGE_CLIENT_KEY", str(key))
    assert cli.main([*server, "get", job_id]) == 1  # the environment's (wrong) CA
    assert "UNAVAILABLE" in capsys.readouterr().out
    assert cli.main([*server, "--client-cert", str(cert), "--client-key", "/nowhere.key", "list"]) == 2
    assert "client_key /nowhere.key: No such file" in capsys.readouterr().out


def test_the_health_check_speaks_tls(pki, serve, monkeypatch, capsys) -> None:
    running = serve(pki.server_tls())
    address = f"localhost:{running.port}"
    assert healthcheck.main([address, "--ca-bundle", str(pki.ca_file)]) == 0
    assert healthcheck.main([address, "--timeout-s", "2"]) == 1  # plaintext against a TLS port
    assert healthcheck.main([address, "--ca-bundle", str(pki.other_ca_file), "--timeout-s", "2"]) == 1
    # The image's HEALTHCHECK runs in the trainer's environment: it says what is missing, and the CA from there
    # is enough.
    monkeypatch.setenv("VLMFORGE_TRAINER_TLS_CERT", str(pki.cert_file))
    assert healthcheck.main([address]) == 1
    assert "pass --ca-bundle or set VLMFORGE_CA_BUNDLE" in capsys.readouterr().out
    monkeypatch.setenv("VLMFORGE_CA_BUNDLE", str(pki.ca_file))
    assert healthcheck.main([address]) == 0


# ---------------------------------------------------------------------------------------------- worker API

def test_the_worker_api_serves_tls_and_ignores_the_client_ca(pki, store) -> None:
    """Workers prove who they are with the token; mTLS on the client API asks them for no certificate."""
    server, port = create_worker_api_server(store, "127.0.0.1:0", token=TOKEN, tls=pki.server_tls(mutual=True))
    try:
        job_id = _queued_job(store)
        remote = RemoteJobStore(f"localhost:{port}", token=TOKEN, ca_bundle=pki.ca_file, call_timeout_s=10)
        assert remote.get_job(job_id).status is JobStatus.QUEUED
        remote.close()
        plaintext = RemoteJobStore(f"localhost:{port}", token=TOKEN, call_timeout_s=1)
        with pytest.raises(grpc.RpcError) as refused:
            plaintext.get_job(job_id)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        plaintext.close()
    finally:
        server.stop(None)


def test_worker_pods_get_only_the_ca_of_the_tls_secret() -> None:
    from tests.service.test_kubernetes_launcher import _template

    manifest = worker_job_manifest("ftjob-0123456789abcdef01234567", Placement(),
                                   _template(worker_api_ca_secret="vlmforge-trainer-tls"))
    kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "vlmforge-trainer-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    container = pod["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[WORKER_API_CA_BUNDLE_ENV] == f"{mount['mountPath']}/ca.crt"
    plain = worker_job_manifest("ftjob-0123456789abcdef01234567", Placement(), _template())["spec"]["template"]
    assert WORKER_API_CA_BUNDLE_ENV not in {e["name"] for e in plain["spec"]["containers"][0]["env"]}
    assert not [v for v in plain["spec"]["volumes"] if "secret" in v]


def test_the_client_tls_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="client_cert and client_key go together"):
        Tls.resolve(client_cert="a.crt")
    with pytest.raises(ValueError, match=r"ca_bundle .*nowhere\.pem: No such file"):
        Trainer("localhost:1", ca_bundle="/nowhere.pem")
    assert Tls.resolve() is None and Tls.resolve(tls=True) == Tls()


def _wait_for(condition, *, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
