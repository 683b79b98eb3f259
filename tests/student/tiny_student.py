"""A small SFT student shared by the DPO, GRPO and distillation tests: a tiny Llama trained for a
few seconds on four direct-mode calls, until it answers them greedily but still errs when sampling.

Built once per test session (``sft_student`` caches it in the session's temp directory), so
those test files pay for one SFT run together.
"""
from __future__ import annotations

from pathlib import Path

from student.format import direct_completion, direct_prompt
from student.tiny import build_tiny_model
from student.train import SFTRunConfig, train_student
from tools.registry import Task

CONTEXT = {"now": "2026-03-14T09:30", "weekday": "Saturday"}
CALLS = [  # home-domain actions: the home verifier grades them, DirectStudent may spell their names
    ("turn off the kitchen lights",
     {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}),
    ("dim the bedroom lamp to 30",
     {"name": "control_device", "arguments": {"device_id": "light.bedroom", "action": "set", "value": 30}}),
    ("what is the weather in Paris tomorrow",
     {"name": "get_weather", "arguments": {"city": "Paris", "date": "2026-03-15"}}),
    ("set a timer for half an hour", {"name": "set_timer", "arguments": {"duration": "PT30M"}}),
]
EXAMPLES = [{"prompt": direct_prompt(text, CONTEXT), "completion": direct_completion(call)} for text, call in CALLS]
TEXTS = [ex["prompt"] + ex["completion"] for ex in EXAMPLES]

_built: dict[str, Path] = {}


def tiny_model(directory: Path, **kwargs) -> Path:
    """A random-init tiny Llama whose tokenizer is trained on TEXTS (same texts, same tokenizer)."""
    return build_tiny_model(directory, TEXTS * 10, **kwargs)


def sft_student(tmp_path_factory) -> Path:
    """The shared SFT student (100 steps at a high rate: right when greedy, often wrong when sampled)."""
    if "sft" not in _built:
        root = tmp_path_factory.mktemp("shared-sft")
        config = SFTRunConfig(base_model=str(tiny_model(root / "base")), output_dir=str(root / "sft"),
                              learning_rate=3e-3, max_steps=100, warmup_ratio=0.0, logging_steps=50)
        _built["sft"] = train_student(EXAMPLES * 10, config, lineage={"dataset": {"name": "calls", "version": 1}})
    return _built["sft"]


def call_tasks(split: str = "train", prefix: str = "call") -> list[Task]:
    """The four calls as home-domain tasks with gold."""
    return [Task(id=f"{prefix}-{i}", domain="home", split=split, input=text, context=CONTEXT, gold=call)
            for i, (text, call) in enumerate(CALLS)]
