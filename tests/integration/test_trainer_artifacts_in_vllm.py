"""What a trainer job writes is what transformers and vLLM serve, for every model family (vlmforge.families):
the merged 16-bit model loads as a base model, and the PEFT adapter (LoRA on language and vision layers and
the projector) loads onto the tiny base, in transformers and through vLLM's `enable_lora`, each answering a
question about an image (vLLM on its CPU backend; the adapter and the merged model in vLLM here for Qwen2-VL,
for the other families beside their inference service in tests/e2e/test_model_families_served.py). A family
vLLM does not serve at all (Llama-3.2-Vision) goes through the transformers half only, and its job is not
pushed to an inference service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.vllm_offline_chat import ask
from vlmforge.data import load_dataset
from vlmforge.families import ModelFamily, family_for_model_dir
from vlmforge.tiny_model.build import FAMILIES as TINY_FAMILIES
from vlmforge.tiny_model.build import architecture_of, model_family_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def base_model_dir(family_name: str, tiny_model_of) -> Path:
    return tiny_model_of(family_name)


def _trains_towers(family: ModelFamily) -> bool:
    """LoRA on the vision tower and projector where the adapter still serves: in vLLM where it takes them, and
    in transformers (any LoRA) for a family vLLM does not serve; else the language model only."""
    return family.vllm_serves_tower_connector_lora or not family.vllm_serves


@pytest.fixture(scope="module")
def finished_job(family_name: str, family_fine_tune) -> tuple[Path, Path, tuple[str, ...]]:
    """(adapter, merged model, the fine-tunes pushed to the inference service) of the session's fine-tune of the
    family (tests/conftest.py: LoRA on the towers and projector as `_trains_towers` says)."""
    fine_tune = family_fine_tune(family_name)
    result = fine_tune.store.get_job(fine_tune.job_id).result
    return Path(result["adapter_path"]), Path(result["merged_model_path"]), fine_tune.pushed


@pytest.fixture()
def served_by_vllm(base_model_dir: Path) -> None:
    family = family_for_model_dir(base_model_dir)
    if not family.vllm_serves:
        pytest.skip(family.vllm_unserved_reason)


def _ask_vllm(model_dir: Path, small_dataset_dir: Path, log: Path, **adapter) -> None:
    """One question about a test image in vLLM's offline engine (tests/vllm_offline_chat.py, its own process)."""
    image = sorted((small_dataset_dir / "images" / "test").glob("*.png"))[0]
    answer = ask(model_dir, image, "What color is the shortest bar?", log, **adapter)
    assert answer["prompt_tokens"] > 16, "the prompt holds the image's tokens"
    assert 0 < answer["answer_tokens"] <= 6


def test_both_answer_in_transformers(finished_job, base_model_dir: Path, small_dataset_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from trainer_service.evaluation import answer_questions

    adapter, merged, pushed = finished_job
    processor = AutoProcessor.from_pretrained(merged)
    samples = load_dataset(small_dataset_dir / "test.jsonl")[:2]
    with_adapter = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_model_dir), adapter)
    merged_model, loading = AutoModelForImageTextToText.from_pretrained(merged, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]  # renamed for vLLM, still transformers'
    for model in (merged_model, with_adapter):
        answers = answer_questions(model.eval(), processor, samples)
        assert len(answers) == 2 and all(isinstance(a.prediction, str) for a in answers)
    adapted = {name.removesuffix(".lora_A") for name, _ in with_adapter.named_modules() if name.endswith(".lora_A")}
    family = family_for_model_dir(base_model_dir)
    for part in ("vision_attention", "vision_mlp", "projector", "language_attention", "language_mlp"):
        expected = _trains_towers(family) or part.startswith("language")
        expected = expected and (part != "projector" or family.projector_takes_lora)  # Gemma 3's: no linear layer
        assert any(re.search(getattr(family, part) + "$", name) for name in adapted) == expected, part
    assert list(pushed) == ([merged.parent.name] if family.vllm_serves else [])


@pytest.mark.parametrize("tiny_family", TINY_FAMILIES)
def test_vllm_serves_exactly_the_families_that_say_so(tiny_family: str) -> None:
    from vllm import ModelRegistry

    served = architecture_of(tiny_family) in ModelRegistry.get_supported_archs()
    assert served == model_family_of(tiny_family).vllm_serves


def test_the_merged_model_serves_as_a_base_model(served_by_vllm, finished_job, base_model_dir: Path,
                                                small_dataset_dir: Path, tmp_path: Path) -> None:
    if family_for_model_dir(base_model_dir).name != "qwen2_vl":
        # Each engine start costs about 25 CPU-seconds on CI: the other families' merged models start in vLLM
        # beside their inference service in tests/e2e/test_model_families_served.py, where it costs no time.
        pytest.skip("served by vLLM in tests/e2e/test_model_families_served.py")
    _, merged, _ = finished_job
    _ask_vllm(merged, small_dataset_dir, tmp_path / "vllm.log")


def test_the_adapter_loads_onto_the_base_with_vision_lora(served_by_vllm, finished_job, base_model_dir: Path,
                                                          small_dataset_dir: Path, tmp_path: Path) -> None:
    if family_for_model_dir(base_model_dir).name != "qwen2_vl":
        # One vLLM engine start less per family (about 40 CPU-seconds each on CI): the same adapter (tower and
        # projector LoRA where vLLM serves them) is served by name through the inference service, on vLLM, in
        # tests/e2e/test_model_families_served.py for every family but Qwen2-VL, which this test keeps.
        pytest.skip("served through the inference service in tests/e2e/test_model_families_served.py")
    adapter, _, _ = finished_job
    towers = family_for_model_dir(base_model_dir).vllm_serves_tower_connector_lora
    _ask_vllm(base_model_dir, small_dataset_dir, tmp_path / "vllm.log", adapter=adapter, tower_lora=towers)
