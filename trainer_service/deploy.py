"""Tells the inference service about a fine-tune whose artifacts were just written, so it hot-loads the adapter
before the job reports SUCCEEDED instead of on its first request. Best effort: a failed notification leaves the job SUCCEEDED (the inference
service still loads the adapter lazily) and says so in the job's events."""

from __future__ import annotations

import logging
import time

import httpx

from .store import JobRecords

logger = logging.getLogger(__name__)

# How the service hands the target to its worker processes: environment, so the token never shows in `ps`.
ADMIN_URL_ENV = "VLMFORGE_TRAINER_INFERENCE_ADMIN_URL"
ADMIN_TOKEN_ENV = "VLMFORGE_TRAINER_INFERENCE_ADMIN_TOKEN"


class InferenceNotifier:
    def __init__(self, store: JobRecords, admin_url: str, admin_token: str | None, *, timeout_s: float = 30.0,
                 attempts: int = 3, retry_delay_s: float = 2.0):
        self.store = store
        self.load_url = admin_url.rstrip("/") + "/admin/v1/adapters"
        self.headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.retry_delay_s = retry_delay_s

    def notify(self, job_id: str, name: str) -> bool:
        failure = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = httpx.post(self.load_url, json={"name": name}, headers=self.headers,
                                      timeout=self.timeout_s)
            except httpx.HTTPError as error:
                failure = f"{type(error).__name__}: {error}"
            else:
                if response.is_success:
                    self.store.append_event(job_id, "deployment", f"{name} loaded by the inference service",
                                            {"fine_tuned_model": name})
                    return True
                failure = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code < 500:
                    break  # the adapter or our token was refused; retrying will not change that
            if attempt < self.attempts:
                time.sleep(self.retry_delay_s)
        logger.warning("job %s: inference service did not load %s: %s", job_id, name, failure)
        self.store.append_event(job_id, "deployment", f"inference service did not load {name}: {failure}; "
                                "it will still be loaded on its first request", {"fine_tuned_model": name})
        return False
