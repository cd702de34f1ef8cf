"""API keys and their file, the `keys` command, the per-key token bucket, path roots, and the job / file stores'
migration of databases written before projects existed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_service.auth.keys import KeyFileError, KeyStore, key_id_of, mint_key, read_key_file
from trainer_service.auth.keys_cli import main as keys_main
from trainer_service.auth.rate_limit import KeyRateLimiter
from trainer_service.domain import OPEN_CALLER, Caller, JobStatus
from trainer_service.errors import InvalidArgumentError, QuotaExceededError, RateLimitedError
from trainer_service.files.store import FileRecords
from trainer_service.path_roots import PathRoots
from trainer_service.store import JobStore

REPO = Path(__file__).resolve().parents[2]


def _entry(key: str, key_id: str, project: str = "team-a", **extra) -> dict:
    return {"id": key_id, "sha256": hashlib.sha256(key.encode()).hexdigest(), "project": project, **extra}


def _write(path: Path, entries: list[dict]) -> None:
    path.write_text(json.dumps({"keys": entries}))


def test_a_minted_key_is_random_carries_its_id_and_only_its_hash_is_kept() -> None:
    key, entry = mint_key("team-a")
    other, _ = mint_key("team-a")
    assert key != other and key.startswith("vlmf_") and len(key) > 50
    assert key_id_of(key) == entry.id and entry.sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(entry.__dict__)
    assert key_id_of("vlmf_nothex_x") is None and key_id_of("sk-123") is None
    assert key_id_of("vlmf_0123456789ab_") is None


def test_the_store_accepts_the_key_and_refuses_wrong_unknown_and_revoked_keys(tmp_path: Path) -> None:
    good, revoked = "vlmf_0123456789ab_secret-one", "vlmf_ba9876543210_secret-two"
    _write(tmp_path / "keys.json", [_entry(good, "0123456789ab"),
                                    _entry(revoked, "ba9876543210", "team-b", scope="admin", revoked=True)])
    store = KeyStore(tmp_path / "keys.json")
    found = store.authenticate(good)
    assert found is not None and found.project == "team-a" and not found.is_admin
    for presented in ("vlmf_0123456789ab_secret-onE", revoked, "vlmf_ffffffffffff_secret-one", "", "Bearer x"):
        assert store.authenticate(presented) is None
    assert store.key_count == 1


def test_a_changed_file_is_picked_up_and_a_broken_one_keeps_the_last_good_keys(tmp_path: Path, caplog) -> None:
    path = tmp_path / "keys.json"
    first, second = "vlmf_0123456789ab_first", "vlmf_ba9876543210_second"
    _write(path, [_entry(first, "0123456789ab")])
    store = KeyStore(path, reload_interval_s=0.0)
    assert store.authenticate(first) and not store.authenticate(second)
    _write(path, [_entry(second, "ba9876543210")])  # rewritten in place: the size and mtime change
    assert store.authenticate(second) and not store.authenticate(first)
    path.write_text('{"keys": [')  # half-written
    with caplog.at_level(logging.ERROR, logger="trainer_service.auth.keys"):
        assert store.authenticate(second) and store.authenticate(second)
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 1  # once per version
    _write(path, [_entry(first, "0123456789ab")])  # fixed: read again
    assert store.authenticate(first) and not store.authenticate(second)
    os.replace(tmp_path / "keys.json", tmp_path / "gone.json")
    assert store.authenticate(first)  # a missing file changes nothing either


@pytest.mark.parametrize(("document", "words"), [
    ("[]", 'expected {"keys": [...]}'),
    ("{", "not a readable JSON key file"),
    ('{"keys": [{"id": "0123456789ab", "sha256": "vlmf_0123456789ab_plain", "project": "a"}]}',
     "keys[0]: sha256 must be 64 lowercase hex digits"),
    ('{"keys": [{"id": "x", "sha256": "' + "0" * 64 + '", "project": "a"}]}', "keys[0]: id must be 12"),
    ('{"keys": [{"id": "0123456789ab", "sha256": "' + "0" * 64 + '", "project": "../etc"}]}', "keys[0]: project"),
    ('{"keys": [{"id": "0123456789ab", "sha256": "' + "0" * 64 + '", "project": "a", "scope": "root"}]}',
     "keys[0]: scope must be one of project, admin"),
    ('{"keys": [{"id": "0123456789ab", "sha256": "' + "0" * 64 + '", "project": "a", "key": "x"}]}',
     "keys[0]: unknown field(s) key"),
    ('{"keys": [{"id": "0123456789ab"}]}', "keys[0]: needs id, sha256 and project"),
])
def test_a_bad_key_file_is_named_with_its_entry(tmp_path: Path, document: str, words: str) -> None:
    (tmp_path / "keys.json").write_text(document)
    with pytest.raises(KeyFileError) as info:
        read_key_file(tmp_path / "keys.json")
    assert str(info.value).startswith(str(tmp_path / "keys.json")) and words in str(info.value)


def test_the_keys_command_creates_lists_and_revokes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "secret" / "api-keys.json"
    assert keys_main(["create", "--project", "team-a", "--description", "CI", "--keys-file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert keys_main(["create", "--project", "ops", "--scope", "admin", "--keys-file", str(path)]) == 0
    admin_key = capsys.readouterr().out.strip()
    assert key not in path.read_text() and admin_key not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    store = KeyStore(path)
    assert store.authenticate(key).project == "team-a" and store.authenticate(admin_key).is_admin
    assert keys_main(["list", "--keys-file", str(path)]) == 0
    listed = capsys.readouterr().out
    assert f"{key_id_of(key)}\tteam-a\tproject\tactive" in listed and key not in listed
    assert keys_main(["revoke", "--key-id", key_id_of(key), "--keys-file", str(path)]) == 0
    assert KeyStore(path).authenticate(key) is None and KeyStore(path).authenticate(admin_key) is not None
    assert keys_main(["revoke", "--key-id", "000000000000", "--keys-file", str(path)]) == 2
    assert keys_main(["create", "--project", "bad/name", "--keys-file", str(path)]) == 2


def test_the_keys_command_runs_as_python_dash_m_trainer_service(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    done = subprocess.run([sys.executable, "-m", "trainer_service", "keys", "create", "--project", "p",
                           "--keys-file", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert KeyStore(path).authenticate(done.stdout.strip()).project == "p"


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [100.0]
    limiter = KeyRateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("k1")
    with pytest.raises(RateLimitedError) as info:
        limiter.take("k1")
    assert "retry in 0.50 s" in str(info.value) and "--requests-per-second-per-key" in str(info.value)
    limiter.take("k2")  # every key has its own bucket
    now[0] += 0.5
    limiter.take("k1")
    with pytest.raises(RateLimitedError):
        limiter.take("k1")
    now[0] += 60
    for _ in range(3):  # refilled to the burst, never past it
        limiter.take("k1")
    with pytest.raises(RateLimitedError):
        limiter.take("k1")


def test_path_roots_follow_symlinks_and_refuse_without_revealing(tmp_path: Path) -> None:
    root, outside = tmp_path / "data", tmp_path / "outside"
    (root / "team-a" / "ds").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jsonl").write_text("{}")
    (root / "team-a" / "link").symlink_to(outside)
    roots = PathRoots(root, None, required=True)
    caller = Caller("team-a", "k", is_admin=False)
    assert roots.dataset("training_file", "ds/x.jsonl", caller) == (root / "team-a" / "ds" / "x.jsonl").resolve()
    messages = set()
    for value in ("link/secret.jsonl", "link/missing.jsonl", str(outside / "secret.jsonl"), "../team-b/x", "",
                  "ds/\x00"):
        with pytest.raises(InvalidArgumentError) as info:
            roots.dataset("training_file", value, caller)
        messages.add(str(info.value))
    assert messages == {"training_file: must be under this project's directory of the data root (--data-root)"}
    admin = Caller("ops", "k2", is_admin=True)
    assert roots.dataset("training_file", "team-a/ds/x.jsonl", admin) == (root / "team-a/ds/x.jsonl").resolve()
    with pytest.raises(InvalidArgumentError, match="uploaded file ids"):
        PathRoots(None, None, required=True).dataset("test_file", "/x.jsonl", caller)
    assert PathRoots().dataset("training_file", "/anything.jsonl", OPEN_CALLER) is None  # open: as before


_OLD_JOBS = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, client_request_id TEXT UNIQUE, status TEXT NOT NULL, spec TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    trained_steps INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0, error_code TEXT,
    error_message TEXT);
CREATE INDEX jobs_by_status ON jobs (status, created_at);
CREATE TABLE events (job_id TEXT NOT NULL REFERENCES jobs (id), sequence INTEGER NOT NULL, created_at REAL NOT NULL,
    kind TEXT NOT NULL, message TEXT NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (job_id, sequence));
INSERT INTO jobs (id, client_request_id, status, spec, created_at) VALUES ('ftjob-old', 'req-1', 'queued', '{}', 1.0);
INSERT INTO events VALUES ('ftjob-old', 1, 1.0, 'status_changed', 'job created, queued', '{"status": "queued"}');
"""
_OLD_FILES = """
CREATE TABLE files (id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, status TEXT NOT NULL, record_count INTEGER,
    error_message TEXT, dataset_path TEXT, dataset_name TEXT);
INSERT INTO files VALUES ('file-old', 'a.jsonl', 'fine-tune', 3, 'abc', 1.0, 'processed', 1, NULL, '/x/a.jsonl', NULL);
"""


def test_a_job_store_from_before_projects_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_JOBS)
    store = JobStore(path)
    old = store.get_job("ftjob-old")
    assert old.project == "" and old.client_request_id == "req-1"
    assert store.events_after("ftjob-old")[0].message == "job created, queued"
    assert store.find_by_client_request_id("req-1").id == "ftjob-old"
    other, created = store.create_job({}, client_request_id="req-1", status=JobStatus.QUEUED, project="team-a")
    assert created and other.id != "ftjob-old" and other.project == "team-a"  # the id is per project now
    again, created = store.create_job({}, client_request_id="req-1", status=JobStatus.QUEUED, project="team-a")
    assert not created and again.id == other.id
    assert [j.id for j in store.list_jobs(project="team-a")[0]] == [other.id]
    assert {j.id for j in store.list_jobs()[0]} == {other.id, "ftjob-old"}
    store.close()
    assert JobStore(path).get_job(other.id).project == "team-a"  # opening it again migrates nothing twice


def test_the_active_jobs_quota_is_counted_per_project_in_the_insert(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    first, _ = store.create_job({}, status=JobStatus.QUEUED, project="a", max_active=1)
    with pytest.raises(QuotaExceededError, match="limit of 1"):
        store.create_job({}, status=JobStatus.QUEUED, project="a", max_active=1)
    store.create_job({}, status=JobStatus.QUEUED, project="b", max_active=1)
    store.transition(first.id, JobStatus.CANCELLED, "cancelled")
    store.create_job({}, status=JobStatus.QUEUED, project="a", max_active=1)


def test_a_file_table_from_before_projects_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "files.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_FILES)
    records = FileRecords(path)
    assert records.get("file-old").project == ""
    assert records.find_by_sha256("abc").id == "file-old"
    copy, created = records.insert(filename="a.jsonl", purpose="fine-tune", size_bytes=3, sha256="abc",
                                   dataset_path=Path("/y/a.jsonl"), project="team-a")
    assert created and copy.id != "file-old" and records.stored_bytes("team-a") == 3
    assert [f.id for f in records.list(None, page_size=10, project="team-a")[0]] == [copy.id]
