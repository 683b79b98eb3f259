"""Width pruning on real (random-init) tiny Llama and Qwen2 models with grouped-query attention."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from typer.testing import CliRunner

from compress.prune import PruneConfig, count_params, prune
from compress.width import removable_group_counts
from dataengine.store import Store
from student.distill import completion_loss
from student.format import direct_completion, direct_prompt
from student.manifest import read_manifest
from student.tiny import train_tokenizer
from supertiny.cli import app
from supertiny.errors import UserError
from tools.home.tasks import generate_tasks
from tools.registry import get_domain

TEXTS = [direct_prompt(t.input, t.context) for t in generate_tasks(seed=0, n_train=16, n_dev=0, n_test=0)]
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 64, 96, 3, 4, 2
HEAD_DIM = HIDDEN // HEADS
HEADS_PER_GROUP = HEADS // KV_HEADS
ARCHS = ["llama", "qwen2"]


def build(out: Path, arch: str, zero: dict | None = None) -> Path:
    """A tiny GQA model (4 query heads, 2 key/value groups); ``zero`` silences one MLP channel
    and/or one key/value group per layer: {"channel": [c per layer], "group": [g per layer]}."""
    tokenizer = train_tokenizer(TEXTS)
    torch.manual_seed(0)
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                  max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = (LlamaForCausalLM(LlamaConfig(**kwargs)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**kwargs)))
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            if zero and "channel" in zero:
                # silu(0) * up = 0: the channel's activation, hence its importance and its
                # contribution to down_proj, are exactly zero.
                layer.mlp.gate_proj.weight[zero["channel"][i]] = 0.0
            if zero and "group" in zero:
                # Zero values (and v bias) for one kv head: its query heads output exactly zero.
                rows = slice(zero["group"][i] * HEAD_DIM, (zero["group"][i] + 1) * HEAD_DIM)
                layer.self_attn.v_proj.weight[rows] = 0.0
                if layer.self_attn.v_proj.bias is not None:
                    layer.self_attn.v_proj.bias[rows] = 0.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def channel_params(arch: str) -> int:
    return 3 * HIDDEN  # a row of gate and up, a column of down; no MLP biases in either arch


def group_params(arch: str) -> int:
    q_rows, kv_rows, o_cols = HEADS_PER_GROUP * HEAD_DIM, 2 * HEAD_DIM, HEADS_PER_GROUP * HEAD_DIM
    biases = (q_rows + kv_rows) if arch == "qwen2" else 0  # Qwen2: q/k/v biases, none on o_proj
    return (q_rows + kv_rows) * HIDDEN + o_cols * HIDDEN + biases


@torch.inference_mode()
def logits(model_dir: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model(**tokenizer(TEXTS[:4], return_tensors="pt", padding=True)).logits


@pytest.fixture(scope="module", params=ARCHS)
def arch_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return request.param, build(tmp_path_factory.mktemp(request.param), request.param)


def test_param_count_is_the_arithmetic_expectation(arch_base: tuple[str, Path], tmp_path: Path) -> None:
    arch, base = arch_base
    before = count_params(AutoModelForCausalLM.from_pretrained(base))
    config = PruneConfig(method="width", target_param_ratio=0.8, remove_kv_groups=1, channel_multiple=8,
                         calibration_samples=8)
    manifest = prune(base, tmp_path / "w", config, TEXTS)

    # One group per layer goes; channels fill the rest of the budget, rounded down to a multiple of 8.
    rest = before - 0.8 * before - LAYERS * group_params(arch)
    keep = (INTERMEDIATE - math.ceil(rest / (LAYERS * channel_params(arch)))) // 8 * 8
    expected = before - LAYERS * (group_params(arch) + (INTERMEDIATE - keep) * channel_params(arch))
    assert manifest["params_before"] == before
    assert manifest["params_after"] == expected <= 0.8 * before
    # Minimal: 8 channels more per layer would break the budget.
    assert expected + 8 * LAYERS * channel_params(arch) > 0.8 * before
    width = manifest["width"]
    assert width["intermediate_size"] == {"before": INTERMEDIATE, "after": keep}
    assert width["key_value_groups"] == {"before": KV_HEADS, "after": KV_HEADS - 1}
    assert width["attention_heads"] == {"before": HEADS, "after": HEADS - HEADS_PER_GROUP}
    assert all(len(c) == INTERMEDIATE - keep for c in width["removed_mlp_channels"])
    assert manifest["removed_layers"] == [] and manifest["target_met"] is True


def test_shapes_and_config_reload(arch_base: tuple[str, Path], tmp_path: Path) -> None:
    arch, base = arch_base
    out = tmp_path / "w"
    manifest = prune(base, out, PruneConfig(method="width", target_param_ratio=0.75, remove_kv_groups=1,
                                            channel_multiple=16, calibration_samples=8), TEXTS)
    keep = manifest["width"]["intermediate_size"]["after"]
    saved = json.loads((out / "config.json").read_text())
    assert (saved["intermediate_size"], saved["num_attention_heads"], saved["num_key_value_heads"],
            saved["head_dim"]) == (keep, HEADS_PER_GROUP, 1, HEAD_DIM)
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert count_params(model) == manifest["params_after"]
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.q_proj.weight.shape == (HEADS_PER_GROUP * HEAD_DIM, HIDDEN)
        assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (HEAD_DIM, HIDDEN)
        assert attn.o_proj.weight.shape == (HIDDEN, HEADS_PER_GROUP * HEAD_DIM)
        assert (attn.q_proj.bias is not None) == (arch == "qwen2")
        if arch == "qwen2":
            assert attn.q_proj.bias.shape == (HEADS_PER_GROUP * HEAD_DIM,) and attn.k_proj.bias.shape == (HEAD_DIM,)
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (keep, HIDDEN)
        assert mlp.down_proj.weight.shape == (HIDDEN, keep)


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_influence_channel_and_group_go_first_and_change_nothing(arch: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    zero = {"channel": torch.randint(0, INTERMEDIATE, (LAYERS,), generator=generator).tolist(),
            "group": torch.randint(0, KV_HEADS, (LAYERS,), generator=generator).tolist()}
    base = build(tmp_path / "base", arch, zero=zero)
    before = count_params(AutoModelForCausalLM.from_pretrained(base))
    # Budget: exactly one group and one channel per layer.
    target = before - LAYERS * (group_params(arch) + channel_params(arch))
    manifest = prune(base, tmp_path / "w", PruneConfig(method="width", target_params=target, remove_kv_groups=1,
                                                       channel_multiple=1, calibration_samples=8), TEXTS)
    width = manifest["width"]
    assert manifest["params_after"] == target
    assert width["removed_mlp_channels"] == [[c] for c in zero["channel"]]
    assert width["removed_kv_groups"] == [[g] for g in zero["group"]]
    assert width["removed_attention_heads"] == [[g * HEADS_PER_GROUP + h for h in range(HEADS_PER_GROUP)]
                                                for g in zero["group"]]
    torch.testing.assert_close(logits(tmp_path / "w"), logits(base), atol=1e-5, rtol=1e-4)


def test_a_live_channel_does_change_the_logits(tmp_path: Path) -> None:
    # The check above can fail: removing the same count of ordinary channels moves the logits.
    base = build(tmp_path / "base", "llama")
    before = count_params(AutoModelForCausalLM.from_pretrained(base))
    prune(base, tmp_path / "w", PruneConfig(method="width", target_params=before - LAYERS * channel_params("llama"),
                                            remove_kv_groups=0, channel_multiple=1, calibration_samples=8), TEXTS)
    assert not torch.allclose(logits(tmp_path / "w"), logits(base), atol=1e-5, rtol=1e-4)


def test_generate_after_save_load_and_auto_split(arch_base: tuple[str, Path], tmp_path: Path) -> None:
    _, base = arch_base
    out = tmp_path / "auto"
    manifest = prune(base, out, PruneConfig(method="width", target_param_ratio=0.8, channel_multiple=8,
                                            calibration_samples=8), TEXTS)
    candidates = manifest["width"]["candidates"]
    # Removing 0 or 1 of the 2 groups both fit the budget: each was tried, the lowest loss kept.
    assert [c["key_value_groups"] for c in candidates] == [KV_HEADS, KV_HEADS - 1]
    best = min(candidates, key=lambda c: c["calibration_loss"])
    assert manifest["width"]["key_value_groups"]["after"] == best["key_value_groups"]
    assert manifest["params_after"] == best["params"]

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer([TEXTS[0]], return_tensors="pt")
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        cached = model.generate(**batch, use_cache=True, **kwargs)
        uncached = model.generate(**batch, use_cache=False, **kwargs)
    assert cached.shape[1] == batch["input_ids"].shape[1] + 5
    assert torch.equal(cached, uncached)


def test_with_examples_the_candidates_are_compared_on_their_completion_loss(tmp_path: Path) -> None:
    base = build(tmp_path / "base", "llama")
    examples = [{"prompt": direct_prompt(t.input, t.context), "completion": direct_completion(t.gold)}
                for t in generate_tasks(seed=1, n_train=6, n_dev=0, n_test=0)]
    config = PruneConfig(method="width", target_param_ratio=0.8, channel_multiple=8, calibration_samples=4)
    manifest = prune(base, tmp_path / "w", config, TEXTS, calibration_examples=examples)
    width = manifest["width"]
    assert width["calibration_loss_on"] == "completions of 4 examples"  # calibration_samples caps them too
    assert len(width["candidates"]) == 2
    best = min(width["candidates"], key=lambda c: c["calibration_loss"])
    assert width["key_value_groups"]["after"] == best["key_value_groups"]
    # The recorded loss is the saved model's own completion loss on those examples, and the
    # unpruned model's is the "before"; neither is the next-token loss over the whole texts.
    assert completion_loss(tmp_path / "w", examples[:4]) == pytest.approx(best["calibration_loss"], rel=1e-4)
    assert completion_loss(base, examples[:4]) == pytest.approx(width["calibration_loss_before"], rel=1e-4)
    on_texts = prune(base, tmp_path / "t", config, TEXTS)["width"]
    assert on_texts["calibration_loss_on"] == "4 calibration texts"
    assert on_texts["calibration_loss_before"] != pytest.approx(width["calibration_loss_before"], rel=1e-3)


def test_both_drops_layers_then_thins_the_rest(tmp_path: Path) -> None:
    base = build(tmp_path / "base", "llama")
    manifest = prune(base, tmp_path / "b", PruneConfig(method="both", target_param_ratio=0.7, depth_share=0.5,
                                                       channel_multiple=8, calibration_samples=8), TEXTS)
    assert manifest["method"] == "block_influence_depth+activation_importance_width"
    assert len(manifest["removed_layers"]) == 1 and len(manifest["block_influence"]) == LAYERS
    assert manifest["width"]["intermediate_size"]["after"] < INTERMEDIATE
    assert manifest["target_met"] is True
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert len(model.model.layers) == LAYERS - 1 and count_params(model) == manifest["params_after"]


def test_bad_width_options_are_user_errors(arch_base: tuple[str, Path], tmp_path: Path) -> None:
    _, base = arch_base
    with pytest.raises(UserError, match="remove_kv_groups"):
        prune(base, tmp_path / "x", PruneConfig(method="width", remove_kv_groups=KV_HEADS), TEXTS)
    with pytest.raises(UserError, match="target_params"):
        prune(base, tmp_path / "x", PruneConfig(method="width", target_params=0), TEXTS)


def test_only_group_counts_whose_heads_divide_the_hidden_size_are_tried(tmp_path: Path) -> None:
    # Multi-head attention, 4 heads of 16: keeping 3 heads would leave 64 % 3 != 0, which
    # transformers refuses even with head_dim set; 4, 2 and 1 heads are fine.
    tokenizer = train_tokenizer(TEXTS)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "mha")
    tokenizer.save_pretrained(tmp_path / "mha")
    assert removable_group_counts(AutoModelForCausalLM.from_pretrained(tmp_path / "mha")) == [0, 2, 3]
    with pytest.raises(UserError, match=r"remove_kv_groups=1: .*one of \[0, 2, 3\]"):
        prune(tmp_path / "mha", tmp_path / "x", PruneConfig(method="width", remove_kv_groups=1), TEXTS)
    manifest = prune(tmp_path / "mha", tmp_path / "w", PruneConfig(method="width", target_param_ratio=0.6), TEXTS)
    assert {c["key_value_groups"] for c in manifest["width"]["candidates"]} <= {4, 2, 1}
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "w").config.num_attention_heads in (4, 2, 1)


def test_cli_width_prune_reports_what_it_removed(tmp_path: Path) -> None:
    base = build(tmp_path / "base", "llama")
    store = Store(tmp_path / "cli.db")
    store.add_tasks(get_domain("home").generate_tasks(seed=0, n_train=8, n_dev=0, n_test=0))  # calibration prompts
    db = ["--db", str(store.path)]
    result = CliRunner().invoke(app, [*db, "compress", "prune", str(base), "--out", str(tmp_path / "w"), "--method",
                                      "width", "--keep", "0.8", "--kv-groups", "1", "--json"])
    assert result.exit_code == 0, result.output
    row, = json.loads(result.stdout)
    manifest = read_manifest(tmp_path / "w")
    assert row["kind"] == "pruned" and row["params"] == manifest["params_after"]
    assert row["removed"]["key_value_groups"] == "2 -> 1" and row["removed"]["layers"] == []
    assert row["removed"]["mlp_channels_per_layer"] == INTERMEDIATE - manifest["width"]["intermediate_size"]["after"]
    assert store.model_by_path(str((tmp_path / "w").resolve())).name.endswith("width-pruned0.8")
    shown = CliRunner().invoke(app, [*db, "compress", "prune", str(base), "--out", str(tmp_path / "d"), "--ratio", "0.7"])
    assert shown.exit_code == 0 and "layers: [" in shown.stdout and "num_layers: 3 -> " in shown.stdout
    bad = CliRunner().invoke(app, [*db, "compress", "prune", str(base), "--out", str(tmp_path / "x"), "--method", "sideways"])
    assert bad.exit_code != 0 and "method" in str(bad.exception)
    assert not (tmp_path / "x").exists()
