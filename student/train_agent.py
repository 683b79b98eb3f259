"""Agent-mode student: fine-tune a small model to *be* the teacher's chat model.

config -> resolve base model -> render each verified trace -> TRL SFTTrainer -> plain model dir + manifest.

A direct-mode student (student/train.py) maps a request straight to the final call. An agent-mode
student learns the teacher's whole conversation instead: the system prompt and tool schemas,
the request, its own tool calls, their results, and the final action call. At inference it runs
inside the same LangGraph agent as the teacher through the ``local:`` backend (agent/local.py),
so it can use tools: look up a device id instead of memorising every one.

Each trace (OpenAI chat format with tool calls, ``dataengine.export.chat_records``) is rendered by
:func:`agent.local.render_training_text`, the renderer the ``local:`` backend uses at inference,
and tokenized once. The loss is on the assistant turns only (their tool calls and the EOS that
ends each turn): a ``completion_mask`` over those tokens, given to TRL as a pre-tokenized dataset
with ``completion_only_loss``. One example per conversation, every assistant turn in it: no
prompt is repeated per turn.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from supertiny.errors import UserError
from student.base import resolve_base_model
from student.manifest import dir_bytes, read_manifest, write_manifest
from student.train import CPU_TRAINER_ARGS, TRAINING_CONFIG_NAME, SFTRunConfig, cpu_has_fast_bf16

AGENT_MAX_LENGTH = 2048  # tokens: a home-domain conversation with its tool schemas is ~1.8k SmolLM2 tokens


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                          protocol: str) -> dict[str, list[int]]:
    """``input_ids`` of the rendered conversation and a ``completion_mask`` that is 1 on the
    tokens of assistant turns. Tokenized as at inference: the whole text, no added special tokens."""
    from agent.local import render_training_text

    text, spans = render_training_text(tokenizer, messages, tools, protocol)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start <= begin < end for start, end in spans)) for begin, _ in encoded["offset_mapping"]]
    return {"input_ids": list(encoded["input_ids"]), "completion_mask": mask}


def train_agent_student(records: list[dict[str, Any]], config: SFTRunConfig,
                        lineage: dict[str, Any] | None = None) -> Path:
    """Fine-tune ``config.base_model`` on ``records`` (dicts with "messages" in OpenAI chat format,
    tool calls included, and "tools", the OpenAI tool schemas). Conversations longer than
    ``config.max_length`` tokens are left out (counted in the manifest): cutting one would cut
    off its final call. Returns the output model directory."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from agent.local import DEFAULT_CHAT_TEMPLATE, template_supports_tools

    lineage = lineage or {}
    if not records:
        raise UserError("no training conversations: the dataset is empty (build it with the data engine first)")
    for i, record in enumerate(records):
        messages = record.get("messages")
        if not isinstance(messages, list) or not any(isinstance(m, dict) and m.get("role") == "assistant"
                                                     for m in messages):
            raise UserError(f"training record {i} needs 'messages' with at least one assistant message")

    # --- setup -------------------------------------------------------------------------
    base_path = resolve_base_model(config.base_model)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if not tokenizer.chat_template:
        # Saved with the student: inference, and any other runtime (vLLM, llama.cpp), renders alike.
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    protocol = "template" if template_supports_tools(tokenizer) else "text"
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)  # float32: see train.py

    examples, too_long = [], 0
    for record in records:
        example = tokenize_conversation(tokenizer, record["messages"], record.get("tools"), protocol)
        if len(example["input_ids"]) > config.max_length:
            too_long += 1
            continue
        examples.append(example)
    if not examples:
        raise UserError(f"every conversation is longer than max_length={config.max_length} tokens: "
                        "raise --max-length")
    dataset = Dataset.from_list(examples)

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
        completion_only_loss=True,  # the completion_mask column: assistant tokens only
        bf16=config.bf16,
        **CPU_TRAINER_ARGS,  # as in student.train
    )
    peft_config = None
    if config.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)

    # --- loop ----------------------------------------------------------------------------
    start = time.perf_counter()
    # The trainer prints its log lines; they go to stderr, so that stdout stays data (the CLI's --json).
    with contextlib.redirect_stdout(sys.stderr):
        result = trainer.train()
    train_wall_s = time.perf_counter() - start
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    # --- artifact ------------------------------------------------------------------------
    trained = trainer.model
    if config.mode == "lora":
        trained = trained.merge_and_unload()
    trained.eval()
    trained.config.use_cache = True
    trained.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / TRAINING_CONFIG_NAME).write_text(json.dumps(config.model_dump(), indent=2) + "\n")
    base_manifest = read_manifest(base_path)
    write_manifest(
        out_dir,
        kind="student",
        format="agent",  # local: renders conversations for it; eval runs it in the agent graph
        tool_protocol=protocol,
        base_model={"name": config.base_model, "path": str(base_path.resolve()), "alias": base_manifest.get("alias")},
        parent=str(base_path.resolve()),
        dataset=lineage.get("dataset"),
        lineage=lineage,
        config=config.model_dump(),
        train_examples=len(examples),
        skipped_too_long=too_long,
        train_tokens=sum(len(e["input_ids"]) for e in examples),
        train_steps=int(trainer.state.global_step),
        final_train_loss=float(logged[-1]) if logged else float(result.training_loss),
        mean_train_loss=float(result.training_loss),
        train_wall_s=round(train_wall_s, 2),
        params=sum(p.numel() for p in trained.parameters()),
    )
    return out_dir


def train_agent_and_register(store: Any, *, dataset_ref: str, base: str, out: Path, mode: str = "full",
                             epochs: float = 2.0, max_steps: int = -1, learning_rate: float | None = None,
                             batch_size: int = 1, max_length: int | None = None, seed: int = 0,
                             bf16: bool | None = None, lora_r: int = 16) -> Any:
    """``supertiny student train --format agent``: SFT ``base`` on a dataset's conversations and
    register the student (parent: the base model; dataset: the version it learned from)."""
    from dataengine.export import chat_records
    from supertiny.pipeline import _config_error, _parent_row

    dataset = store.dataset(dataset_ref)
    records = chat_records(store, f"{dataset.name}@{dataset.version}")
    try:
        config = SFTRunConfig(base_model=base, output_dir=str(out), mode=mode, num_train_epochs=epochs,
                              max_steps=max_steps, per_device_train_batch_size=batch_size, seed=seed,
                              max_length=max_length or AGENT_MAX_LENGTH,
                              bf16=cpu_has_fast_bf16() if bf16 is None else bf16,
                              lora_r=lora_r, lora_alpha=2 * lora_r,
                              learning_rate=learning_rate or (5e-4 if mode == "lora" else 5e-5))
    except ValidationError as exc:
        raise _config_error(exc, "student train") from None
    lineage = {"dataset": {"name": dataset.name, "version": dataset.version, "id": dataset.id},
               "database": str(store.path.resolve()) if store.path else None,
               "function_names": sorted(store.domain(dataset.domain).action_names),
               "domain": dataset.domain}
    path = train_agent_student(records, config, lineage=lineage)
    manifest = read_manifest(path)
    parent = _parent_row(store, Path(manifest["parent"]), name=base)
    return store.add_model(name=f"student-agent-{dataset.name}@{dataset.version}", kind="student",
                           path=str(Path(path).resolve()), parent_id=parent.id, dataset_id=dataset.id,
                           config={**config.model_dump(), "format": "agent"}, params=manifest.get("params"),
                           bytes=dir_bytes(path))
