"""The inference service's `--admin-port` setting, from the command line and the environment."""

from __future__ import annotations

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
