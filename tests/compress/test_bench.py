"""``supertiny compress bench`` on real tiny models (float, int8 weight-only in torch and in ONNX
Runtime): every field
comes back with a sane type and sign. Timings are measured, never asserted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress.bench import BenchConfig, bench_models
from compress.quantize import QuantizeConfig, quantize
from student.format import direct_prompt
from student.tiny import build_tiny_model
from supertiny.cli import app
from supertiny.errors import UserError

TEXTS = [direct_prompt(u, {"now": "2026-03-14T09:30", "weekday": "Saturday"})
         for u in ("turn off the kitchen lights", "set the thermostat to 21 degrees", "lock the front door")]
POSITIVE = ("bytes_on_disk", "weight_bytes_per_token", "peak_rss_bytes", "baseline_rss_bytes", "load_s", "ttft_ms",
            "decode_tokens_per_s", "latency_ms_p50", "latency_ms_p95", "batch_latency_ms_p50", "batch_latency_ms_p95",
            "batch_tokens_per_s", "bandwidth_gb_s", "bandwidth_bound_tokens_per_s", "bandwidth_efficiency")


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("bench")
    base = build_tiny_model(root / "float", TEXTS, hidden_size=64, num_layers=2)
    quantize(base, root / "int8w", QuantizeConfig(method="int8-weight"))
    quantize(base, root / "onnx-int8", QuantizeConfig(method="onnx-int8"))
    return [base, root / "int8w", root / "onnx-int8"]


def test_bench_reports_every_field_for_each_model(bench_dirs: list[Path]) -> None:
    result = CliRunner().invoke(app, ["compress", "bench", *map(str, bench_dirs), "--new-tokens", "3", "--prompts", "2",
                                      "--repeats", "1", "--batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [Path(r["model"]) for r in rows] == bench_dirs
    for row in rows:
        for field in POSITIVE:
            assert isinstance(row[field], (int, float)) and row[field] > 0, field
        assert isinstance(row["params"], int) and row["params"] > 0
        assert row["peak_rss_bytes"] >= row["baseline_rss_bytes"]  # each model's own process
        assert row["latency_ms_p95"] >= row["latency_ms_p50"] and row["batch_size"] == 2
        assert 0 <= row["top1_agreement_with_first"] <= 1 and 0 <= row["generation_agreement_with_first"] <= 1
        assert 0 <= row["next_token_accuracy"] <= 1 and row["model_rss_bytes"] >= 0
    first, *quantized = rows
    assert first["top1_agreement_with_first"] == 1.0 and first["generation_agreement_with_first"] == 1.0
    assert all(value == 1.0 for value in first["relative_to_first"].values())
    for row in quantized:
        assert row["kind"] == "quantized" and row["params"] == first["params"]
        # int8 weights (torch: one shared int8 table; ONNX: MatMulNBits blocks, the embedding a
        # lookup) read fewer bytes per token than float32.
        assert row["weight_bytes_per_token"] < first["weight_bytes_per_token"] / 2
        assert row["relative_to_first"]["bytes_on_disk"] < 1


def test_bench_rejects_bad_input(bench_dirs: list[Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no config.json"):
        bench_models([bench_dirs[0], tmp_path], BenchConfig())
    with pytest.raises(UserError, match="new_tokens"):
        bench_models(bench_dirs, BenchConfig(new_tokens=1))


def test_timed_generation_does_exactly_n_tokens_even_when_the_model_says_eos(bench_dirs: list[Path]) -> None:
    """Every model must do the same work per timed run: make the model's first greedy token its
    EOS, and the timed generation still produces all N tokens (a normal generate stops at 1)."""
    from compress.measure import greedy_seconds
    from student.generate import load_model

    model, tokenizer = load_model(bench_dirs[0])
    batch = tokenizer([TEXTS[0]], return_tensors="pt")
    first = int(greedy_seconds(model, tokenizer, batch, 1)[1][0, 0])
    model.generation_config.eos_token_id = first
    stopped = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert stopped.shape[1] - batch["input_ids"].shape[1] == 1  # the premise: this model would stop at once
    seconds, tokens = greedy_seconds(model, tokenizer, batch, 6)
    assert tokens.shape == (1, 6) and int(tokens[0, 0]) == first and seconds > 0


def test_a_vocabulary_trimmed_model_is_compared_by_token_not_by_id(tmp_path: Path) -> None:
    """Trimming renumbers the kept tokens. A model whose every dropped token scores 0 (its
    tied embedding row zeroed, so its argmax is always a kept token) and its trimmed copy compute
    the same scores over the same tokens: full agreement, although most ids differ."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.vocab import kept_token_ids, trim_vocabulary

    base = build_tiny_model(tmp_path / "base", TEXTS * 3 + ["the quick brown fox jumps over the lazy dog"] * 3,
                            hidden_size=64, num_layers=2)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    size = 40
    kept = kept_token_ids(tokenizer, TEXTS, size, also={tokenizer.eos_token_id, tokenizer.pad_token_id})
    dropped = sorted(set(range(len(tokenizer))) - set(kept))
    assert len(dropped) > 10
    with torch.no_grad():
        model.get_input_embeddings().weight[dropped] = 0.0
    model.save_pretrained(base)
    trimmed, trimmed_tokenizer, removed = trim_vocabulary(model, tokenizer, TEXTS, size)
    assert removed["after"] == len(kept)
    trimmed.save_pretrained(tmp_path / "trimmed")
    trimmed_tokenizer.save_pretrained(tmp_path / "trimmed")

    rows = bench_models([base, tmp_path / "trimmed"], BenchConfig(new_tokens=4, prompts=2, repeats=1, batch_size=2,
                                                                  fidelity_texts=3), TEXTS)
    assert rows[1]["top1_agreement_with_first"] == 1.0
    assert rows[1]["generation_agreement_with_first"] == 1.0
