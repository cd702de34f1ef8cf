"""The inference service's `--admin-port` and `--api-server-count` settings, from the command line and the
environment."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError
from pydantic_settings import CliApp

from inference_service.settings import InferenceSettings


def _settings(*flags: str) -> InferenceSettings:
    return CliApp.run(InferenceSettings, cli_args=["--base-model", "m", *flags])


def test_the_admin_api_shares_the_main_port_unless_told_otherwise(monkeypatch) -> None:
    monkeypatch.delenv("VLMFORGE_INFERENCE_ADMIN_PORT", raising=False)
    assert _settings().admin_port is None


def test_admin_port_from_the_flag_or_the_environment(monkeypatch) -> None:
    assert _settings("--admin-port", "0").admin_port == 0
    monkeypatch.setenv("VLMFORGE_INFERENCE_ADMIN_PORT", "8001")
    assert _settings().admin_port == 8001
    assert _settings("--admin-port", "9001").admin_port == 9001


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_admin_port_out_of_range_is_refused(port: str) -> None:
    with pytest.raises(ValidationError):
        _settings("--admin-port", port)


def test_one_api_frontend_by_default_whatever_the_cores(monkeypatch) -> None:
    monkeypatch.delenv("VLMFORGE_INFERENCE_API_SERVER_COUNT", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    assert _settings().api_server_count == 1


def test_api_server_count_from_the_flag_or_the_environment(monkeypatch) -> None:
    assert _settings("--api-server-count", "3").api_server_count == 3
    monkeypatch.setenv("VLMFORGE_INFERENCE_API_SERVER_COUNT", "2")
    assert _settings().api_server_count == 2
    with pytest.raises(ValidationError):
        _settings("--api-server-count", "0")
