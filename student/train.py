"""Supervised fine-tuning of the student on direct-mode prompt/completion pairs.

config -> resolve base model -> dataset -> TRL SFTTrainer -> (merge LoRA) -> plain model dir + manifest.

The examples are already rendered with :mod:`student.format`, so training is a plain
prompt-completion SFT: TRL masks the prompt tokens and computes the loss on the completion only.
The output is always an ordinary Hugging Face model directory (LoRA adapters are merged in) so
compression and generation load it without knowing how it was trained.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from supertiny.errors import UserError
from student.base import DEFAULT_BASE_MODEL, resolve_base_model
from student.manifest import read_manifest, write_manifest

TRAINING_CONFIG_NAME = "training_config.json"

# What every TRL trainer of ours runs with on CPU: mixed precision only when asked (TRL defaults
# bf16=True), no activation checkpointing (TRL defaults it on: ~20% slower, and memory is not what
# limits a 135M model; transformers 5 name), one artifact written by us (no intermediate
# checkpoints, no trackers), and no progress bars (they flood logs; the loss is still printed
# every logging_steps).
CPU_TRAINER_ARGS: dict[str, Any] = dict(use_cpu=True, fp16=False, activation_checkpointing=False, save_strategy="no",
                                        report_to="none", dataloader_num_workers=0, disable_tqdm=True)


class SFTRunConfig(BaseModel):
    """Everything that decides what a training run produces; saved next to the model."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(
        default=DEFAULT_BASE_MODEL,
        description=f"Local model directory to start from, or '{DEFAULT_BASE_MODEL}' for the bundled SmolLM2-135M-Instruct.",
    )
    output_dir: str = Field(description="Directory the trained student (model, tokenizer, manifest) is written to.")
    mode: Literal["full", "lora"] = Field(
        default="full",
        description="'full' updates every weight; 'lora' trains low-rank adapters and merges them into the weights.",
    )
    lora_r: int = Field(default=16, gt=0, description="LoRA rank (mode='lora' only).")
    lora_alpha: int = Field(default=32, gt=0, description="LoRA scaling numerator; the update is scaled by alpha/r.")
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input (mode='lora' only).")
    learning_rate: float = Field(
        default=5e-5,
        gt=0.0,
        description="Peak AdamW learning rate. 5e-5 suits full fine-tuning; LoRA typically wants ~5e-4.",
    )
    num_train_epochs: float = Field(default=2.0, gt=0.0, description="Passes over the examples (ignored when max_steps > 0).")
    max_steps: int = Field(default=-1, description="Optimizer steps to run; -1 means use num_train_epochs.")
    per_device_train_batch_size: int = Field(default=8, gt=0, description="Examples per forward/backward pass.")
    gradient_accumulation_steps: int = Field(
        default=1, gt=0, description="Passes accumulated per optimizer step (effective batch = batch size x this)."
    )
    max_length: int = Field(
        default=128, gt=0, description="Tokens kept per prompt+completion; longer examples are truncated at the end."
    )
    warmup_ratio: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Fraction of the steps spent linearly warming up the learning rate."
    )
    bf16: bool = Field(
        default=False,
        description="bf16 autocast for the matmuls, weights and optimizer state stay float32. About 1.5x faster "
        "on CPUs with AVX512-BF16 or AMX; see cpu_has_fast_bf16().",
    )
    seed: int = Field(default=0, description="Seed for data order, initialisation of LoRA weights and dropout.")
    logging_steps: int = Field(default=10, gt=0, description="Log the training loss every this many optimizer steps.")
    save_steps: int = Field(
        default=0, ge=0,
        description="Write a checkpoint (weights or adapters, optimizer, scheduler, data position) into "
        "output_dir every this many steps, keeping the last one; 0: none. A run stopped midway resumes from it "
        "with resume=True. Checkpoints are deleted once the model is saved.",
    )
    resume: bool = Field(default=False, description="Continue from the last checkpoint in output_dir, if there is one.")

    @field_validator("max_steps")
    @classmethod
    def _steps_positive_or_unset(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("max_steps must be a positive number of steps, or -1 to train for num_train_epochs")
        return value


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-N`` directory the Trainer wrote into ``output_dir``, if any
    (complete: its ``trainer_state.json``, written last, is there; a run killed while writing one
    resumes from the one before)."""
    checkpoints = [p for p in Path(output_dir).glob("checkpoint-*")
                   if p.name[11:].isdigit() and (p / "trainer_state.json").is_file()]
    return max(checkpoints, key=lambda p: int(p.name[11:]), default=None)


def lora_config(r: int, alpha: int, dropout: float = 0.0) -> Any:
    """peft LoRA adapters on every linear layer of a causal LM (merged into the weights after training)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512-BF16 or AMX), so autocast pays off."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def train_student(examples: list[dict[str, str]], config: SFTRunConfig, lineage: dict[str, Any] | None = None) -> Path:
    """Fine-tune ``config.base_model`` on ``examples`` (dicts with "prompt" and "completion").

    ``lineage`` is recorded in the manifest; ``lineage["dataset"]`` names the dataset the
    examples came from (name, version, id). Returns the output model directory.
    """
    # Imported here: torch/transformers/trl take seconds to import and the CLI should not pay
    # for them unless it trains.
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    lineage = lineage or {}
    if not examples:
        raise UserError("no training examples: the dataset is empty (build it with the data engine first)")
    for i, example in enumerate(examples):
        if not isinstance(example.get("prompt"), str) or not isinstance(example.get("completion"), str):
            raise UserError(f"training example {i} needs string 'prompt' and 'completion' fields, got keys {sorted(example)}")

    # --- setup -------------------------------------------------------------------------
    base_path = resolve_base_model(config.base_model)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    # float32 weights on purpose: bf16 AdamW updates vanish on a small model. config.bf16 only
    # autocasts the matmuls; the master weights and optimizer state stay float32.
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)

    # TRL appends eos_token to completions that do not end with it; doing it here makes the
    # stop signal explicit and independent of that default. Without it the student never learns
    # to stop and generation runs to max_new_tokens.
    eos = tokenizer.eos_token
    dataset = Dataset.from_list(
        [
            {
                "prompt": ex["prompt"],
                "completion": ex["completion"] if ex["completion"].endswith(eos) else ex["completion"] + eos,
            }
            for ex in examples
        ]
    )

    sft_args = SFTConfig(
        output_dir=str(out_dir),
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type="linear",
        seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        completion_only_loss=True,  # the prompt is given at inference; only the call is learned
        # Batches of similar lengths: random batches of the home programs are 22% padding, and a
        # CPU spends its time on every padded token as on a real one.
        train_sampling_strategy="group_by_length",
        bf16=config.bf16,
        **{**CPU_TRAINER_ARGS, **(dict(save_strategy="steps", save_steps=config.save_steps, save_total_limit=1)
                                  if config.save_steps else {})},
    )

    peft_config = None
    if config.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )

    trainer = SFTTrainer(
        model=model,
        args=sft_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )

    # --- loop ----------------------------------------------------------------------------
    start = time.perf_counter()
    checkpoint = last_checkpoint(out_dir) if config.resume else None
    # The trainer prints its log lines; they go to stderr, so that stdout stays data (the CLI's --json).
    with contextlib.redirect_stdout(sys.stderr):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_wall_s = time.perf_counter() - start

    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    final_train_loss = float(logged[-1]) if logged else float(result.training_loss)

    # --- artifact ------------------------------------------------------------------------
    trained = trainer.model
    if config.mode == "lora":
        # Fold the adapters into the weights: compression and generation expect a plain model.
        trained = trained.merge_and_unload()
    trained.eval()
    trained.config.use_cache = True  # TRL turns the KV cache off for training; inference wants it
    trained.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for done in out_dir.glob("checkpoint-*"):  # the model is saved: the optimizer state is no longer needed
        shutil.rmtree(done)

    (out_dir / TRAINING_CONFIG_NAME).write_text(json.dumps(config.model_dump(), indent=2) + "\n")
    base_manifest = read_manifest(base_path)
    write_manifest(
        out_dir,
        kind="student",
        base_model={"name": config.base_model, "path": str(base_path.resolve()), "alias": base_manifest.get("alias")},
        parent=str(base_path.resolve()),
        dataset=lineage.get("dataset"),
        lineage=lineage,
        config=config.model_dump(),
        train_examples=len(examples),
        train_steps=int(trainer.state.global_step),
        resumed_from=checkpoint.name if checkpoint else None,
        final_train_loss=final_train_loss,
        mean_train_loss=float(result.training_loss),
        train_wall_s=round(train_wall_s, 2),
        params=sum(p.numel() for p in trained.parameters()),
    )
    return out_dir
