"""bench/bench_student_modes.py measures both sides on the same tasks: an untrained tiny Llama as
the "student" (direct mode) and as the "base" (driving the real teacher graph through ``local:``).

What it checks is the bench's bookkeeping, not speed: every field is there for both sides, the
agent side's prompt carries the system prompt and tool schemas (so more prompt tokens per request
than the one-line direct prompt), and the ratios are computed from the rows."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from langchain_core.utils.function_calling import convert_to_openai_tool
from transformers import AutoConfig

from agent.local import tools_section
from student.format import direct_prompt
from student.tiny import build_tiny_model
from tools.home.tasks import generate_tasks
from tools.registry import get_domain

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_student_modes.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_student_modes", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread is only synchronisation overhead
    yield
    torch.set_num_threads(before)


def test_measure_returns_both_sides_fields_and_ratios(tmp_path):
    bench = load_bench()
    domain = get_domain("home")
    tasks = generate_tasks(seed=0, n_train=0, n_dev=0, n_test=2)
    # A tokenizer trained on both prompts' texts keeps the agent prompt a few thousand tokens, not bytes.
    schemas = tools_section([convert_to_openai_tool(t) for t in domain.tools + domain.actions])
    texts = [domain.system_prompt + schemas] * 4 + [direct_prompt(t.input, t.context) for t in tasks] * 4
    model_dir = build_tiny_model(tmp_path / "tiny", texts, vocab_size=1024, hidden_size=32, num_layers=1)
    config = AutoConfig.from_pretrained(model_dir)
    config.max_position_embeddings = 8192  # room for the agent prompt; RoPE has no hard limit
    config.save_pretrained(model_dir)

    result = bench.measure(model_dir, model_dir, tasks, domain, max_tokens=4, max_model_calls=2)

    for side in ("direct", "agent"):
        row = result[side]
        assert row["requests"] == 2 and row["model"] == str(model_dir)
        assert row["requests_per_s"] > 0 and row["latency_ms_p50"] > 0
        assert 0.0 <= row["exact_match"] <= 1.0
        assert row["model_calls_per_request"] >= 1
        assert row["tokens_per_request"] == pytest.approx(
            row["prompt_tokens_per_request"] + row["completion_tokens_per_request"])
        assert sum(row["statuses"].values()) == 2
    assert result["direct"]["model_calls_per_request"] == 1  # untrained, direct format: no fallback sampling
    assert result["agent"]["model_calls_per_request"] <= 2  # the step budget holds
    assert result["agent"]["completion_tokens_per_request"] <= 4 * result["agent"]["model_calls_per_request"]
    assert result["agent"]["prompt_tokens_per_request"] > 10 * result["direct"]["prompt_tokens_per_request"]
    assert result["speed_ratio"] == pytest.approx(
        result["direct"]["requests_per_s"] / result["agent"]["requests_per_s"])
    assert result["token_ratio"] == pytest.approx(
        result["agent"]["tokens_per_request"] / result["direct"]["tokens_per_request"])
    assert result["speed_goal_met"] == (result["speed_ratio"] >= bench.SPEED_GOAL)
    assert result["token_goal_met"] == (result["token_ratio"] >= bench.TOKEN_GOAL)
