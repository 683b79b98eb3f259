"""Depth pruning on a real (random-init) 6-layer tiny Llama: scores, budget, reload, lineage."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress.prune import PruneConfig, count_params, prune_depth
from student.format import direct_prompt
from student.manifest import read_manifest
from student.tiny import build_tiny_model
from supertiny.errors import UserError
from tools.home.tasks import generate_tasks

TEXTS = [direct_prompt(t.input, t.context) for t in generate_tasks(seed=0, n_train=16, n_dev=0, n_test=0)]
NUM_LAYERS = 6
RATIO = 0.7


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TEXTS, num_layers=NUM_LAYERS)


@pytest.fixture(scope="module")
def pruned(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pruned")
    manifest = prune_depth(tiny_dir, out, PruneConfig(target_param_ratio=RATIO, calibration_samples=12), TEXTS)
    return out, manifest


def test_one_block_influence_score_per_layer(pruned: tuple[Path, dict]) -> None:
    _, manifest = pruned
    scores = manifest["block_influence"]
    assert len(scores) == NUM_LAYERS
    # 1 - cos lies in [0, 2]; a random-init residual block always moves its input a little.
    assert all(math.isfinite(s) and 0.0 < s < 2.0 for s in scores)


def test_drops_lowest_influence_layers_within_budget(pruned: tuple[Path, dict]) -> None:
    out, manifest = pruned
    scores, removed = manifest["block_influence"], manifest["removed_layers"]
    assert 0 < len(removed) < NUM_LAYERS
    lowest = sorted(range(NUM_LAYERS), key=lambda i: scores[i])[: len(removed)]
    assert sorted(lowest) == removed
    assert manifest["params_after"] <= RATIO * manifest["params_before"]
    assert manifest["target_met"] is True
    # Greedy stop: keeping one more of the removed layers would have broken the budget.
    assert manifest["params_after"] + (manifest["params_before"] - manifest["params_after"]) / len(removed) > (
        RATIO * manifest["params_before"]
    )

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == NUM_LAYERS - len(removed) == len(model.model.layers)
    assert count_params(model) == manifest["params_after"]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(len(model.model.layers)))


def test_pruned_model_generates_with_kv_cache(pruned: tuple[Path, dict]) -> None:
    out, _ = pruned
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer([TEXTS[0]], return_tensors="pt")
    kwargs = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with torch.inference_mode():
        cached = model.generate(**batch, use_cache=True, **kwargs)
        uncached = model.generate(**batch, use_cache=False, **kwargs)
    assert cached.sequences.shape[1] == batch["input_ids"].shape[1] + 6
    # A wrong layer_idx -> cache slot mapping would make incremental decoding diverge from
    # recomputing the whole prefix every step.
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_manifest_records_lineage(tiny_dir: Path, pruned: tuple[Path, dict]) -> None:
    out, returned = pruned
    manifest = read_manifest(out)
    assert manifest["kind"] == "pruned"
    assert manifest["parent"] == str(tiny_dir)
    assert manifest["removed_layers"] == returned["removed_layers"]
    assert manifest["config"]["target_param_ratio"] == RATIO
    assert manifest["bytes"] > 0


def test_keeps_at_least_one_layer(tiny_dir: Path, tmp_path: Path) -> None:
    manifest = prune_depth(tiny_dir, tmp_path / "one", PruneConfig(target_param_ratio=0.01, calibration_samples=2), TEXTS)
    assert manifest["num_layers_after"] == 1
    assert manifest["target_met"] is False  # embeddings alone exceed 1% of the model


def test_ratio_one_keeps_every_layer(tiny_dir: Path, tmp_path: Path) -> None:
    manifest = prune_depth(tiny_dir, tmp_path / "all", PruneConfig(target_param_ratio=1.0, calibration_samples=2), TEXTS)
    assert manifest["removed_layers"] == []
    assert manifest["params_after"] == manifest["params_before"]


@pytest.mark.parametrize("ratio", [0.0, -0.2, 1.5])
def test_bad_ratio_is_a_user_error(tiny_dir: Path, tmp_path: Path, ratio: float) -> None:
    with pytest.raises(UserError, match="target_param_ratio"):
        prune_depth(tiny_dir, tmp_path / "out", PruneConfig(target_param_ratio=ratio), TEXTS)


def test_missing_model_dir_or_texts_is_a_user_error(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no config.json"):
        prune_depth(tmp_path / "nope", tmp_path / "out", PruneConfig(), TEXTS)
    with pytest.raises(UserError, match="calibration_texts"):
        prune_depth(tiny_dir, tmp_path / "out", PruneConfig(), [])
