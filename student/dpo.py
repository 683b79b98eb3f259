"""Direct preference optimization (DPO) of a direct- or program-mode student, starting from an SFT student.

config -> preference pairs -> SFT student + frozen reference copy -> TRL DPOTrainer -> (merge LoRA)
-> plain model dir + manifest.

A pair is one prompt with a *chosen* and a *rejected* completion, both in the student's own format:
the final call (direct, ``student.format``) or the lookups and call as one plan (program,
``student.program``; a plan is right when running it gives the right call). Two sources, both
read from the store:

- ``teacher``: per task of the dataset, its verified answer (the dataset item) against the
  answers of the teacher's other samples of the same task that the verifier failed
  (``gold_match`` 0 or ``domain_check`` 0, or a reviewer rejected them);
- ``self``: the SFT student's own answers to the dataset's tasks (greedy, as it really answers,
  plus optional samples) that the domain's verifier rejects, against the verified answer.

DPO then raises the likelihood of the chosen completion relative to the rejected one, measured
against the SFT student it starts from (the reference model), so the student learns what *not*
to say — something SFT on correct answers alone never shows it.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dataengine.curate import REVIEW_SCORER, items_with_reviewed_answers, same_answer
from dataengine.store import Store
from dataengine.verify import CHECK_SCORER, SCORER
from student.format import direct_prompt
from student.program import completion_call, trace_completions
from student.train import CPU_TRAINER_ARGS, lora_config
from student.manifest import read_manifest, write_manifest
from supertiny.errors import UserError

DPO_CONFIG_NAME = "dpo_config.json"


class DPORunConfig(BaseModel):
    """Everything that decides what a DPO run produces; saved next to the model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The SFT student directory to start from; it is also the frozen reference model.")
    output_dir: str = Field(description="Directory the trained student (model, tokenizer, manifest) is written to.")
    pairs: Literal["teacher", "self", "both"] = Field(
        default="both",
        description="Where rejected completions come from: the teacher's failed samples of the same task, the "
        "student's own wrong answers, or both.",
    )
    self_samples: int = Field(
        default=0, ge=0,
        description="Sampled answers per task from the student, on top of its greedy answer (pairs 'self'/'both').",
    )
    self_temperature: float = Field(default=1.0, gt=0.0, description="Sampling temperature of those extra answers.")
    max_pairs_per_task: int = Field(default=4, gt=0, description="At most this many pairs per task and source.")
    beta: float = Field(
        default=0.1, gt=0.0,
        description="DPO temperature: how far the student may move from the reference (higher: stays closer).",
    )
    mode: Literal["full", "lora"] = Field(
        default="full", description="'full' updates every weight; 'lora' trains adapters and merges them in."
    )
    lora_r: int = Field(default=16, gt=0, description="LoRA rank (mode='lora' only).")
    lora_alpha: int = Field(default=32, gt=0, description="LoRA scaling numerator; the update is scaled by alpha/r.")
    learning_rate: float = Field(
        default=5e-6, gt=0.0,
        description="Peak AdamW learning rate. DPO wants about a tenth of the SFT rate (SFT full: 5e-5).",
    )
    num_train_epochs: float = Field(
        default=1.0, gt=0.0, description="Passes over the pairs (ignored when max_steps > 0)."
    )
    max_steps: int = Field(default=-1, description="Optimizer steps to run; -1 means use num_train_epochs.")
    per_device_train_batch_size: int = Field(default=8, gt=0, description="Pairs per forward/backward pass.")
    gradient_accumulation_steps: int = Field(default=1, gt=0, description="Passes accumulated per optimizer step.")
    max_length: int = Field(default=128, gt=0, description="Tokens kept per prompt+completion.")
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0, description="Fraction of steps spent warming up the rate.")
    bf16: bool = Field(default=False, description="bf16 autocast for the matmuls (weights stay float32).")
    seed: int = Field(default=0, description="Seed for sampling the student's answers, data order and LoRA init.")
    logging_steps: int = Field(default=10, gt=0, description="Log the training loss every this many optimizer steps.")

    @field_validator("max_steps")
    @classmethod
    def _steps_positive_or_unset(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("max_steps must be a positive number of steps, or -1 to train for num_train_epochs")
        return value


# ---- pairs -----------------------------------------------------------------------------------


def _failed(values: dict[str, float]) -> bool:
    """A teacher sample the curation step rejected: a reviewer's decision first, else the verifiers."""
    if REVIEW_SCORER in values:
        return values[REVIEW_SCORER] < 1.0
    return values.get(SCORER) == 0.0 or values.get(CHECK_SCORER) == 0.0


def teacher_pairs(store: Store, dataset_ref: str, max_pairs_per_task: int = 4,
                  format: str = "direct") -> list[dict[str, Any]]:
    """Verified answer (the dataset item) vs the teacher's failed answers to the same task.

    Every pair: ``prompt``, ``chosen``, ``rejected`` (in ``format``), ``source`` ("teacher"),
    ``task_id``, ``rejected_trace_id``. A failed sample without an answer gives no pair (there is
    no completion to push down), nor does one that says the same as the chosen answer."""
    dataset = store.dataset(dataset_ref)
    items = [(trace, task) for trace, task in items_with_reviewed_answers(store, dataset) if trace.final_call]
    task_ids = {trace.task_id for trace, _ in items}
    samples: dict[str, list] = {}
    for trace in store.traces(domain=dataset.domain):
        if trace.task_id in task_ids and trace.final_call:
            samples.setdefault(trace.task_id, []).append(trace)
    values = store.score_values([SCORER, CHECK_SCORER, REVIEW_SCORER])
    completions = trace_completions(store, [trace for trace, _ in items] + [
        trace for traces in samples.values() for trace in traces if _failed(values.get(trace.id, {}))],
        format, store.domain(dataset.domain))

    pairs = []
    for chosen_trace, _ in items:
        chosen = completions[chosen_trace.id]
        rejected_seen: set[str] = set()
        for trace in samples.get(chosen_trace.task_id, []):
            if trace.id == chosen_trace.id or not _failed(values.get(trace.id, {})):
                continue
            rejected = completions[trace.id]
            if rejected == chosen or rejected in rejected_seen or len(rejected_seen) >= max_pairs_per_task:
                continue
            rejected_seen.add(rejected)
            pairs.append({"prompt": direct_prompt(chosen_trace.input, chosen_trace.context), "chosen": chosen,
                          "rejected": rejected, "source": "teacher", "task_id": chosen_trace.task_id,
                          "rejected_trace_id": trace.id})
    return pairs


def student_answers(model_dir: str | Path, requests: list[tuple[str, dict[str, Any]]], *, samples: int = 0,
                    temperature: float = 1.0, seed: int = 0) -> list[list[str]]:
    """Per request, the student's answers as raw first lines: its greedy answer (with the function
    name constrained, as ``DirectStudent`` answers at inference), then ``samples`` sampled ones."""
    import torch

    from student.generate import DirectStudent

    student = DirectStudent(model_dir, fallback_samples=0)  # its plain greedy answer, wrong ones included
    torch.manual_seed(seed)
    answers = []
    for text, context in requests:
        raws = [student.predict(text, context).raw]
        if samples:
            inputs = student.tokenizer(direct_prompt(text, context), return_tensors="pt")
            with torch.inference_mode():
                output = student.model.generate(
                    **inputs, do_sample=True, temperature=temperature, top_k=0, num_return_sequences=samples,
                    max_new_tokens=student.max_new_tokens, pad_token_id=student.pad_token_id,
                    eos_token_id=student.tokenizer.eos_token_id)
            decoded = student.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            raws += [sample.split("\n", 1)[0].strip() for sample in decoded]
        answers.append(raws)
    return answers


def self_pairs(store: Store, dataset_ref: str, model_dir: str | Path, *, samples: int = 0, temperature: float = 1.0,
               seed: int = 0, max_pairs_per_task: int = 4, format: str = "direct") -> list[dict[str, Any]]:
    """Verified answer vs the student's own answers that the domain's verifier rejects.

    An answer is right when its call (a program-mode answer: the call its plan produces) is
    exact by the domain's ``compare`` against the task's gold (or, for a task without gold,
    against the dataset's verified answer) and the domain's ``check``, if it has one, passes.
    Empty answers give no pair."""
    dataset = store.dataset(dataset_ref)
    domain = store.domain(dataset.domain)
    items = [(trace, task) for trace, task in items_with_reviewed_answers(store, dataset) if trace.final_call]
    completions = trace_completions(store, [trace for trace, _ in items], format, domain)
    answers = student_answers(model_dir, [(trace.input, trace.context) for trace, _ in items], samples=samples,
                              temperature=temperature, seed=seed)
    pairs = []
    for (trace, task), raws in zip(items, answers):
        chosen = completions[trace.id]
        rejected_seen: set[str] = set()
        for raw in raws:
            if not raw or raw in rejected_seen or len(rejected_seen) >= max_pairs_per_task:
                continue
            call = completion_call(raw, format, domain, trace.context)
            if call is not None:
                right = (domain.compare(call, task.gold)["exact"] if task is not None and task.gold is not None
                         else same_answer(domain.compare, call, trace.final_call))
                if right and (domain.check is None or domain.check(call, trace.input, trace.context) is None):
                    continue
            rejected_seen.add(raw)
            pairs.append({"prompt": direct_prompt(trace.input, trace.context), "chosen": chosen,
                          "rejected": " " + raw, "source": "self", "task_id": trace.task_id,
                          "rejected_trace_id": None})
    return pairs


# ---- training --------------------------------------------------------------------------------


def train_dpo(pairs: list[dict[str, Any]], config: DPORunConfig, lineage: dict[str, Any] | None = None) -> Path:
    """DPO-train ``config.model`` on ``pairs`` (dicts with "prompt", "chosen", "rejected" and
    optionally "source"); returns the output model directory."""
    # Imported here: torch/transformers/trl take seconds to import.
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    lineage = lineage or {}
    if not pairs:
        raise UserError(f"no preference pairs (pairs={config.pairs!r}): the teacher has no failed samples of the "
                        "dataset's tasks and the student answers them all correctly; try --pairs both or "
                        "--self-samples N")
    for i, pair in enumerate(pairs):
        if not all(isinstance(pair.get(key), str) for key in ("prompt", "chosen", "rejected")):
            raise UserError(f"preference pair {i} needs string 'prompt', 'chosen' and 'rejected' fields, "
                            f"got keys {sorted(pair)}")
    model_dir = Path(config.model)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"model path not found: {config.model} (give the SFT student directory, with config.json)")

    # --- setup -------------------------------------------------------------------------
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # Full fine-tuning needs a frozen copy to measure the log-ratios against; with LoRA the trainer
    # gets the reference by switching the adapters off, so no second copy is loaded.
    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32) if config.mode == "full" else None

    # Same end-of-answer signal as SFT: the student learned to stop with EOS.
    eos = tokenizer.eos_token
    dataset = Dataset.from_list([
        {"prompt": pair["prompt"],
         "chosen": pair["chosen"] if pair["chosen"].endswith(eos) else pair["chosen"] + eos,
         "rejected": pair["rejected"] if pair["rejected"].endswith(eos) else pair["rejected"] + eos}
        for pair in pairs])

    dpo_args = DPOConfig(
        output_dir=str(out_dir),
        beta=config.beta,
        loss_type=["sigmoid"],  # the original DPO loss
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
        bf16=config.bf16,
        **CPU_TRAINER_ARGS,  # as in student.train
    )
    peft_config = lora_config(config.lora_r, config.lora_alpha) if config.mode == "lora" else None
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=dpo_args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config)

    # --- loop ----------------------------------------------------------------------------
    start = time.perf_counter()
    # The trainer prints its log lines; they go to stderr, so that stdout stays data (the CLI's --json).
    with contextlib.redirect_stdout(sys.stderr):
        result = trainer.train()
    train_wall_s = time.perf_counter() - start
    history = [{"step": entry["step"], "loss": entry["loss"],
                "reward_margin": entry.get("rewards/margins"), "reward_accuracy": entry.get("rewards/accuracies")}
               for entry in trainer.state.log_history if "loss" in entry]

    # --- artifact ------------------------------------------------------------------------
    trained = trainer.model
    if config.mode == "lora":
        trained = trained.merge_and_unload()  # compression and generation expect a plain model
    trained.eval()
    trained.config.use_cache = True
    trained.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    (out_dir / DPO_CONFIG_NAME).write_text(json.dumps(config.model_dump(), indent=2) + "\n")
    parent_manifest = read_manifest(model_dir)
    sources: dict[str, int] = {}
    for pair in pairs:
        sources[pair.get("source", "given")] = sources.get(pair.get("source", "given"), 0) + 1
    write_manifest(
        out_dir,
        kind="student",
        method="dpo",
        base_model=parent_manifest.get("base_model"),
        parent=str(model_dir.resolve()),
        dataset=lineage.get("dataset"),
        lineage=lineage,
        config=config.model_dump(),
        pairs=sources,
        train_steps=int(trainer.state.global_step),
        final_train_loss=float(history[-1]["loss"]) if history else float(result.training_loss),
        mean_train_loss=float(result.training_loss),
        loss_history=history,
        train_wall_s=round(train_wall_s, 2),
        params=sum(p.numel() for p in trained.parameters()),
    )
    return out_dir
