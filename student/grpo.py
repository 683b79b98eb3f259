"""GRPO: on-policy reinforcement learning of a direct- or program-mode student against the domain's verifier.

config -> tasks with gold -> reward from the verifier -> TRL GRPOTrainer -> (merge LoRA) -> plain
model dir + manifest.

For each prompt the student samples ``num_generations`` answers; each answer is scored by the
same verifier that grades the teacher (the domain's ``compare`` against the task's gold), and
the policy gradient pushes up the answers that scored above their group's mean (Group Relative
Policy Optimization, DeepSeekMath). Partial credit gives a signal before answers are exactly right:

    reward = 1.0                                   the verifier says exact
           = name_credit * name_match + (1 - name_credit) * argument F1   otherwise
           = 0.0                                   not a call at all

A program-mode answer is scored by the call its plan produces when the domain's tools run it
(``student.program``); a plan that does not run scores 0. A group whose answers all score the same teaches nothing, so start from an SFT student that
already answers in the right format; GRPO then sharpens it on its own mistakes.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from student.format import direct_prompt
from student.program import completion_call
from student.train import CPU_TRAINER_ARGS, lora_config
from student.manifest import read_manifest, write_manifest
from supertiny.errors import UserError

GRPO_CONFIG_NAME = "grpo_config.json"


class GRPORunConfig(BaseModel):
    """Everything that decides what a GRPO run produces; saved next to the model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="The student directory to start from (an SFT student: it must already answer in format)."
    )
    output_dir: str = Field(description="Directory the trained student (model, tokenizer, manifest) is written to.")
    max_steps: int = Field(default=100, gt=0, description="Optimizer steps; each samples fresh answers.")
    prompts_per_step: int = Field(default=2, gt=0, description="Different prompts per optimizer step.")
    num_generations: int = Field(
        default=4, ge=2, description="Answers sampled per prompt; advantages are relative to this group."
    )
    max_completion_length: int = Field(
        default=48, gt=0, description="Most tokens sampled per answer (a direct-mode call is a few dozen tokens)."
    )
    temperature: float = Field(default=1.0, gt=0.0, description="Sampling temperature of the answers.")
    name_credit: float = Field(
        default=0.3, ge=0.0, le=1.0,
        description="Reward share for the right function name; the rest scales with argument F1. Exact: 1.0.",
    )
    beta: float = Field(
        default=0.0, ge=0.0,
        description="KL penalty towards the starting model (0: none, and no reference copy is loaded).",
    )
    mode: Literal["full", "lora"] = Field(
        default="full", description="'full' updates every weight; 'lora' trains adapters and merges them in."
    )
    lora_r: int = Field(default=16, gt=0, description="LoRA rank (mode='lora' only).")
    lora_alpha: int = Field(default=32, gt=0, description="LoRA scaling numerator; the update is scaled by alpha/r.")
    learning_rate: float = Field(default=1e-6, gt=0.0, description="Peak AdamW learning rate (TRL's GRPO default).")
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0, description="Fraction of steps spent warming up the rate.")
    bf16: bool = Field(default=False, description="bf16 autocast for the matmuls (weights stay float32).")
    seed: int = Field(default=0, description="Seed for prompt order, sampling and LoRA init.")
    logging_steps: int = Field(default=5, gt=0, description="Log loss and mean reward every this many steps.")


def answer_reward(completion: str, gold: dict[str, Any], compare: Callable[[dict | None, dict], dict],
                  name_credit: float = 0.3, format: str = "direct", domain: Any = None,
                  context: dict[str, Any] | None = None) -> float:
    """The reward of one sampled answer: see the module docstring."""
    call = completion_call(completion, format, domain, context)
    if call is None:
        return 0.0
    details = compare(call, gold)
    if details["exact"]:
        return 1.0
    return name_credit * float(details["name_match"]) + (1.0 - name_credit) * float(details["arg_f1"])


def verifier_reward(compare: Callable[[dict | None, dict], dict], name_credit: float = 0.3, format: str = "direct",
                    domain: Any = None) -> Callable[..., list[float]]:
    """A TRL reward function: TRL passes the dataset's other columns (``gold``, ``context``: JSON text) by name."""

    def call_reward(prompts: list[str], completions: list[str], gold: list[str], context: list[str] | None = None,
                    **_: Any) -> list[float]:
        contexts = [json.loads(c) for c in context] if context else [None] * len(completions)
        return [answer_reward(completion, json.loads(gold_call), compare, name_credit, format, domain, ctx)
                for completion, gold_call, ctx in zip(completions, gold, contexts)]

    return call_reward


def train_grpo(tasks: list[dict[str, Any]], compare: Callable[[dict | None, dict], dict], config: GRPORunConfig,
               lineage: dict[str, Any] | None = None, domain: Any = None) -> Path:
    """GRPO-train ``config.model`` on ``tasks`` (dicts with "input", "context" and "gold"); the
    reward compares each sampled answer with the gold call through ``compare``. A program-mode
    student (``lineage["format"]``) has its plans run with ``domain``'s tools. Returns the output dir."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    lineage = lineage or {}
    tasks = [task for task in tasks if task.get("gold")]
    if not tasks:
        raise UserError("no tasks with gold to reward against: GRPO scores answers with the domain's compare "
                        "(generate or import tasks with gold first)")
    model_dir = Path(config.model)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"model path not found: {config.model} (give a student directory, with config.json)")

    # --- setup -------------------------------------------------------------------------
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": direct_prompt(task["input"], task["context"]),
                                  "gold": json.dumps(task["gold"], ensure_ascii=False),
                                  "context": json.dumps(task["context"] or {}, ensure_ascii=False)} for task in tasks])

    batch = config.prompts_per_step * config.num_generations  # TRL counts answers, not prompts
    grpo_args = GRPOConfig(
        output_dir=str(out_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=batch,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="linear",
        seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        bf16=config.bf16,
        **CPU_TRAINER_ARGS,  # as in student.train
    )
    peft_config = lora_config(config.lora_r, config.lora_alpha) if config.mode == "lora" else None
    reward = verifier_reward(compare, config.name_credit, lineage.get("format", "direct"), domain)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=grpo_args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config)

    # --- loop ----------------------------------------------------------------------------
    start = time.perf_counter()
    # The trainer prints its log lines; they go to stderr, so that stdout stays data (the CLI's --json).
    with contextlib.redirect_stdout(sys.stderr):
        result = trainer.train()
    train_wall_s = time.perf_counter() - start
    # The GRPO loss is an advantage-weighted log-likelihood whose advantages are zero-mean per
    # group: it hovers near 0 whether or not the student improves. The mean reward is the curve to watch.
    history = [{"step": entry["step"], "loss": entry["loss"], "reward": entry.get("reward"),
                "reward_std": entry.get("reward_std")}
               for entry in trainer.state.log_history if "loss" in entry]

    # --- artifact ------------------------------------------------------------------------
    trained = trainer.model
    if config.mode == "lora":
        trained = trained.merge_and_unload()
    trained.eval()
    trained.config.use_cache = True
    trained.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    (out_dir / GRPO_CONFIG_NAME).write_text(json.dumps(config.model_dump(), indent=2) + "\n")
    parent_manifest = read_manifest(model_dir)
    rewards = [entry["reward"] for entry in history if entry["reward"] is not None]
    write_manifest(
        out_dir,
        kind="student",
        method="grpo",
        base_model=parent_manifest.get("base_model"),
        parent=str(model_dir.resolve()),
        dataset=parent_manifest.get("dataset"),
        lineage=lineage,
        config=config.model_dump(),
        train_prompts=len(tasks),
        train_steps=int(trainer.state.global_step),
        first_mean_reward=rewards[0] if rewards else None,
        final_mean_reward=rewards[-1] if rewards else None,
        mean_train_loss=float(result.training_loss),
        loss_history=history,
        train_wall_s=round(train_wall_s, 2),
        params=sum(p.numel() for p in trained.parameters()),
    )
    return out_dir
