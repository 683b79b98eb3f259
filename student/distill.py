"""Logit knowledge distillation (KD) of a direct-mode student.

config -> examples -> student, and the teacher's distributions -> one plain training loop ->
plain model dir + manifest.

SFT teaches the student the one token the teacher wrote at each position. KD also teaches it
how the teacher spread its probability over the alternatives ("light.kitchen" vs
"light.kitchen_ceiling"), which carries more signal per example. Two teachers:

- a local Hugging Face model directory with the student's vocabulary (a bigger student, or the
  unpruned student when healing a pruned one): its logits at every completion position. A
  student whose vocabulary was trimmed from the teacher's (``compress prune --vocab``) is
  taught over its own tokens: the teacher reads the same token sequence by its own ids;
- the top-k log-probabilities an endpoint returned with a trace (``agent generate
  --top-logprobs K``, stored in ``model_calls.logprobs``), when the endpoint's model has the
  student's tokenizer. The teacher wrote its tool call in its own format (JSON arguments) and
  the student writes the direct format, so a teacher distribution is used where the two token
  sequences agree (argument values, mostly; the whole completion when the teacher answered in
  the direct format). Token strings are mapped to the student's ids; a string the student's
  vocabulary lacks means the tokenizers differ, and the run is refused.

Per completion token the loss is ``alpha * KD + (1 - alpha) * CE``: CE is the usual
cross-entropy on the token in the data, KD a divergence between the teacher's and the
student's next-token distributions at temperature T (times T^2, so gradients keep their scale,
Hinton et al. 2015). Tokens without a teacher distribution get the CE alone. The divergence:

- ``fkl``  forward KL(teacher || student): mass-covering, the classic choice;
- ``rkl``  reverse KL(student || teacher): mode-seeking, favoured for generation (MiniLLM);
- ``jsd``  Jensen-Shannon, the symmetric middle (GKD).

With a truncated teacher (``top_k``, and always for stored log-probabilities) both
distributions are renormalised over the teacher's k tokens, so every divergence stays finite;
the CE term keeps the rest of the vocabulary in check. Prompt tokens are never trained.
"""
from __future__ import annotations

import difflib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.quantize import INT4_GROUP_SIZES, int4_aware, int4_unaware
from student.manifest import read_manifest, write_manifest
from supertiny.errors import UserError

DISTILL_CONFIG_NAME = "distill_config.json"
Divergence = Literal["fkl", "rkl", "jsd"]


class DistillRunConfig(BaseModel):
    """Everything that decides what a distillation run produces; saved next to the model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The student directory to start from (an SFT student, or a pruned one to heal).")
    output_dir: str = Field(description="Directory the trained student (model, tokenizer, manifest) is written to.")
    teacher: str | None = Field(
        default=None,
        description="Local teacher model directory with the student's vocabulary; None: use the top-k "
        "log-probabilities stored with the dataset's traces.",
    )
    loss: Divergence = Field(default="fkl", description="Divergence: fkl (forward KL), rkl (reverse KL) or jsd.")
    temperature: float = Field(
        default=1.0, gt=0.0, description="Softens both distributions; the KD term is scaled by T^2."
    )
    top_k: int | None = Field(
        default=None, gt=0,
        description="Keep only the teacher's k most likely tokens per position (local teacher; stored "
        "log-probabilities are top-k already).",
    )
    alpha: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="Weight of the KD term per token; 1 - alpha weights the cross-entropy on the data's token.",
    )
    learning_rate: float = Field(default=5e-5, gt=0.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay.")
    num_train_epochs: float = Field(
        default=2.0, gt=0.0, description="Passes over the examples (ignored when max_steps > 0)."
    )
    max_steps: int = Field(default=-1, description="Optimizer steps to run; -1 means use num_train_epochs.")
    per_device_train_batch_size: int = Field(default=8, gt=0, description="Examples per optimizer step.")
    max_length: int = Field(default=128, gt=0, description="Tokens kept per prompt+completion; the end is cut.")
    warmup_ratio: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Fraction of steps warming up the rate linearly."
    )
    max_grad_norm: float = Field(default=1.0, gt=0.0, description="Gradients are clipped to this global norm.")
    bf16: bool = Field(default=False, description="bf16 autocast for the matmuls (weights and losses stay float32).")
    seed: int = Field(default=0, description="Seed for data order.")
    quant_aware: Literal["int4-weight"] | None = Field(
        default=None,
        description="Train for the int4 model this one will become (quantization-aware training): the forward "
        "pass uses the int4-rounded weights of every Linear int4-weight quantizes, the gradient updates the "
        "float ones. Quantize the result with `compress quantize --method int4-weight` and the same group size.",
    )
    quant_group_size: int = Field(default=32, description="quant_aware: inputs per int4 scale/zero point; "
                                  "32, 64, 128 or 256, the quantize job's group_size (32 by default).")
    logging_steps: int = Field(default=10, gt=0, description="Log the mean losses every this many steps.")

    @field_validator("quant_group_size")
    @classmethod
    def _a_kernel_group_size(cls, value: int) -> int:
        if value not in INT4_GROUP_SIZES:
            raise ValueError("quant_group_size must be 32, 64, 128 or 256 (what the int4 kernel accepts)")
        return value

    @field_validator("max_steps")
    @classmethod
    def _steps_positive_or_unset(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("max_steps must be a positive number of steps, or -1 to train for num_train_epochs")
        return value


# ---- the divergences ----------------------------------------------------------------------------

# Where a row has fewer than k real teacher tokens, the padding gets this logit on both sides:
# probability exactly 0, and (unlike -inf) no inf - inf = nan in the loss or its gradient.
_PAD_LOGIT = -1e9


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, loss: Divergence = "fkl",
            temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row divergence between teacher and student next-token distributions, times T^2.

    ``student_logits``/``teacher_logits``: [N, S] over the same S tokens (the whole vocabulary,
    or the teacher's top-k; any log-probabilities work as logits, the softmax renormalises).
    ``mask`` [N, S]: False marks padding entries, which count as probability 0 on both sides."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if mask is not None:
        student_logits = student_logits.masked_fill(~mask, _PAD_LOGIT)
        teacher_logits = teacher_logits.masked_fill(~mask, _PAD_LOGIT)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    if loss == "fkl":
        terms = log_p.exp() * (log_p - log_q)
    elif loss == "rkl":
        terms = log_q.exp() * (log_q - log_p)
    elif loss == "jsd":
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)  # the mixture, in log space
        terms = 0.5 * log_p.exp() * (log_p - log_m) + 0.5 * log_q.exp() * (log_q - log_m)
    else:
        raise ValueError(f"unknown divergence {loss!r}: use fkl, rkl or jsd")
    return terms.sum(dim=-1) * temperature**2


# ---- teachers: a local model with the same vocabulary, or stored top-k log-probabilities ----------


def teacher_token_ids(student_dir: Path, student_tokenizer: Any, student_vocab_size: int,
                      teacher_dir: Path, teacher_tokenizer: Any, teacher_vocab_size: int) -> torch.Tensor | None:
    """None when both models score the same tokens by the same ids; a tensor of the teacher's id
    of every student token when the student's vocabulary is a trimmed copy of the teacher's
    (``compress prune --vocab``); else refuse, in one line naming both models."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if student_vocab_size == teacher_vocab_size and teacher_vocab == student_vocab:
        return None
    if student_vocab_size == len(student_vocab) and student_vocab.keys() <= teacher_vocab.keys():
        ids = torch.empty(student_vocab_size, dtype=torch.long)
        for token, student_id in student_vocab.items():
            ids[student_id] = teacher_vocab[token]
        return ids
    differing = sorted(token for token in teacher_vocab.keys() | student_vocab.keys()
                       if teacher_vocab.get(token) != student_vocab.get(token))
    if not differing:
        raise UserError(f"teacher {teacher_dir} and student {student_dir} have different vocabularies: "
                        f"{teacher_vocab_size} vs {student_vocab_size} logits (vocab_size in config.json); logit "
                        "distillation needs a teacher with the student's tokenizer")
    example = differing[0]
    raise UserError(f"teacher {teacher_dir} and student {student_dir} have different tokenizers: "
                    f"{len(differing)} of {len(teacher_vocab)} vs {len(student_vocab)} tokens differ, e.g. "
                    f"{example!r} is id {teacher_vocab.get(example)} in the teacher and "
                    f"{student_vocab.get(example)} in the student; logit distillation needs the same tokenizer "
                    "or a student vocabulary trimmed from the teacher's")


def token_ids_by_text(tokenizer: Any) -> dict[str, int]:
    """Each vocabulary id under the text it decodes to, as endpoints report tokens (" kitchen",
    not the byte-level "Ġkitchen"). Where several ids decode to the same text (partial UTF-8
    bytes all decode to U+FFFD) the lowest id is kept."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
    ids: dict[str, int] = {}
    for token_id, text in enumerate(texts):
        ids.setdefault(text, token_id)
    return ids


def stored_targets(logprobs: list, completion_tokens: list[str], ids_by_text: dict[str, int], *,
                   where: str, student: str) -> list[tuple[int, list[int], list[float]]]:
    """Teacher top-k distributions for the completion tokens the teacher's own tokens line up with.

    ``logprobs``: ``[[token, logprob, [[alt, alt_logprob], ...]], ...]`` as stored. Returns
    ``(completion position, token ids, log-probs)`` per aligned position with at least two
    candidate tokens (one candidate is just the hard label). Refuses when any token string of
    the call is missing from the student's vocabulary: then the teacher's tokenizer is not the
    student's, and its ids would be meaningless."""
    missing = sorted({text for token, _, alternatives in logprobs for text in [token, *(a for a, _ in alternatives)]
                      if text not in ids_by_text})
    if missing:
        shown = ", ".join(repr(text) for text in missing[:3])
        raise UserError(f"{where}: {len(missing)} token strings of the stored logprobs are not in the vocabulary of "
                        f"student {student} (e.g. {shown}); distilling stored logprobs needs a student with the "
                        "teacher endpoint's tokenizer")
    teacher_tokens = [token for token, _, _ in logprobs]
    matcher = difflib.SequenceMatcher(None, teacher_tokens, completion_tokens, autojunk=False)
    targets = []
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            token, logprob, alternatives = logprobs[block.a + offset]
            candidates: dict[int, float] = {}
            for text, value in [(token, logprob), *alternatives]:
                candidates.setdefault(ids_by_text[text], float(value))
            if len(candidates) >= 2:
                targets.append((block.b + offset, list(candidates), list(candidates.values())))
    return targets


# ---- data ---------------------------------------------------------------------------------------


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_example(tokenizer: Any, prompt: str, completion: str, max_length: int) -> tuple[list[int], int]:
    """(input ids, prompt length) as TRL's SFT tokenizes a prompt-completion pair: prompt and
    prompt+completion+EOS each with the default special tokens; the completion starts where they diverge."""
    eos = tokenizer.eos_token
    full = tokenizer(prompt + (completion if completion.endswith(eos) else completion + eos))["input_ids"]
    prompt_len = _common_prefix(tokenizer(prompt)["input_ids"], full)
    return full[:max_length], prompt_len


def _batches(n_examples: int, batch_size: int, steps: int, seed: int):
    """``steps`` lists of example indices: shuffled passes over the data, as many as it takes."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(n_examples, generator=generator).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        yield batch


def _collate(batch: list[dict[str, Any]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, the attention mask, and which positions hold completion tokens."""
    width = max(len(d["input_ids"]) for d in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    completion = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, d in enumerate(batch):
        n = len(d["input_ids"])
        input_ids[row, :n] = torch.tensor(d["input_ids"])
        attention[row, :n] = 1
        completion[row, d["prompt_len"]:n] = True
    return input_ids, attention, completion


def _stored_kd(batch: list[dict[str, Any]], student_logits: torch.Tensor, config: DistillRunConfig
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """KD against stored top-k log-probabilities: (per completion token loss, which tokens have one).

    ``student_logits`` holds the batch's completion tokens row after row, so the token at
    completion position p of batch row r is row ``offset[r] + p``."""
    kd = torch.zeros(student_logits.shape[0])
    has_teacher = torch.zeros(student_logits.shape[0], dtype=torch.bool)
    offsets = [0]
    for d in batch:
        offsets.append(offsets[-1] + max(0, len(d["input_ids"]) - d["prompt_len"]))
    found = [(offset + position, ids, logprobs)
             for d, offset in zip(batch, offsets) for position, ids, logprobs in d["targets"]]
    if not found:
        return kd, has_teacher
    # One row per token, padded to the largest candidate list; padding is masked out.
    k = max(len(ids) for _, ids, _ in found)
    index = torch.tensor([token for token, _, _ in found])
    candidates = torch.zeros((len(found), k), dtype=torch.long)
    teacher_logprobs = torch.zeros((len(found), k))
    mask = torch.zeros((len(found), k), dtype=torch.bool)
    for row, (_, ids, logprobs) in enumerate(found):
        candidates[row, :len(ids)] = torch.tensor(ids)
        teacher_logprobs[row, :len(ids)] = torch.tensor(logprobs)
        mask[row, :len(ids)] = True
    values = kd_loss(student_logits[index].gather(-1, candidates), teacher_logprobs, config.loss, config.temperature,
                     mask=mask)
    has_teacher[index] = True
    return kd.index_put((index,), values), has_teacher


# ---- the run --------------------------------------------------------------------------------------


def distill_student(examples: list[dict[str, Any]], config: DistillRunConfig, lineage: dict[str, Any] | None = None,
                    measure: Callable[[Path], dict[str, Any]] | None = None) -> Path:
    """Distil into ``config.model`` on ``examples`` (dicts with "prompt", "completion" and, without
    a local teacher, "teacher_logprobs" in the stored format or None, plus "where": a name for
    error messages). ``measure(model_dir)`` is called on the starting model and on the result;
    both are recorded in the manifest as ``before`` and ``after``. Returns the output directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    lineage = lineage or {}
    if not examples:
        raise UserError("no training examples: the dataset is empty (build it with the data engine first)")
    for i, example in enumerate(examples):
        if not isinstance(example.get("prompt"), str) or not isinstance(example.get("completion"), str):
            raise UserError(f"training example {i} needs string 'prompt' and 'completion' fields, "
                            f"got keys {sorted(example)}")
    student_dir = Path(config.model)
    for label, path in (("model", student_dir), ("teacher", Path(config.teacher) if config.teacher else None)):
        if path is not None and not (path / "config.json").is_file():
            raise UserError(f"{label} path not found: {path} (give a model directory with config.json)")
    if config.teacher is None and config.top_k is not None:
        raise UserError("top_k truncates a local teacher's logits; stored logprobs are already top-k (drop --top-k)")

    # --- setup -------------------------------------------------------------------------
    torch.manual_seed(config.seed)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    if config.quant_aware == "int4-weight":
        int4_aware(model, config.quant_group_size)
    teacher, teacher_ids = None, None
    if config.teacher is not None:
        teacher_dir = Path(config.teacher)
        teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
        # A trimmed student: the teacher reads the same tokens by its own ids and is scored on them.
        teacher_ids = teacher_token_ids(student_dir, tokenizer, model.config.vocab_size,
                                        teacher_dir, teacher_tokenizer, teacher.config.vocab_size)
        teacher.requires_grad_(False)

    # Each example: input ids, where the completion starts, and (stored logprobs only) the
    # teacher's top-k at the completion positions its tokens line up with.
    data = []
    ids_by_text = token_ids_by_text(tokenizer) if teacher is None else {}
    for i, example in enumerate(examples):
        input_ids, prompt_len = tokenize_example(tokenizer, example["prompt"], example["completion"], config.max_length)
        targets = []
        if teacher is None and example.get("teacher_logprobs"):
            completion_tokens = [tokenizer.decode([token], clean_up_tokenization_spaces=False)
                                 for token in input_ids[prompt_len:]]
            targets = stored_targets(example["teacher_logprobs"], completion_tokens, ids_by_text,
                                     where=example.get("where", f"example {i}"), student=str(student_dir))
        data.append({"input_ids": input_ids, "prompt_len": prompt_len, "targets": targets})
    kd_positions = sum(len(d["targets"]) for d in data)
    if teacher is None and kd_positions == 0:
        raise UserError("no teacher distributions: no local --teacher was given and none of the examples has stored "
                        "logprobs that line up with its completion (generate traces with --top-logprobs K)")

    batches_per_epoch = math.ceil(len(data) / config.per_device_train_batch_size)
    steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_train_epochs * batches_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    before = measure(student_dir) if measure else None

    # --- loop ----------------------------------------------------------------------------
    history: list[dict[str, Any]] = []
    window: list[tuple[float, float, float | None]] = []  # (loss, ce, kd) of the steps since the last log
    start = time.perf_counter()
    model.train()
    for step, indices in enumerate(_batches(len(data), config.per_device_train_batch_size, steps, config.seed), 1):
        batch = [data[i] for i in indices]
        input_ids, attention, completion = _collate(batch, pad_id)
        rows, cols = completion[:, 1:].nonzero(as_tuple=True)  # the logits at j predict the token at j + 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(input_ids=input_ids, attention_mask=attention).logits
        student_logits = logits[:, :-1][rows, cols].float()  # [completion tokens, vocab]
        ce = F.cross_entropy(student_logits, input_ids[:, 1:][rows, cols], reduction="none")

        if teacher is not None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                teacher_input = input_ids if teacher_ids is None else teacher_ids[input_ids]
                teacher_logits = teacher(input_ids=teacher_input, attention_mask=attention).logits
            teacher_logits = teacher_logits[:, :-1][rows, cols].float()
            if teacher_ids is not None:
                teacher_logits = teacher_logits[:, teacher_ids]
            if config.top_k:  # compare on the teacher's k most likely tokens only
                teacher_logits, top_ids = teacher_logits.topk(min(config.top_k, teacher_logits.shape[-1]), dim=-1)
                kd = kd_loss(student_logits.gather(-1, top_ids), teacher_logits, config.loss, config.temperature)
            else:
                kd = kd_loss(student_logits, teacher_logits, config.loss, config.temperature)
            has_teacher = torch.ones_like(ce, dtype=torch.bool)
        else:
            kd, has_teacher = _stored_kd(batch, student_logits, config)
        loss = torch.where(has_teacher, config.alpha * kd + (1 - config.alpha) * ce, ce).mean()

        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

        window.append((loss.item(), ce.mean().item(), kd[has_teacher].mean().item() if has_teacher.any() else None))
        if step == 1 or step % config.logging_steps == 0 or step == steps:
            kd_values = [w[2] for w in window if w[2] is not None]
            entry = {"step": step, "loss": sum(w[0] for w in window) / len(window),
                     "ce": sum(w[1] for w in window) / len(window),
                     "kd": sum(kd_values) / len(kd_values) if kd_values else None,
                     "learning_rate": schedule.get_last_lr()[0]}
            history.append(entry)
            window = []
            kd_text = "-" if entry["kd"] is None else f"{entry['kd']:.4f}"
            print(f"distill step {step}/{steps}: loss {entry['loss']:.4f} (ce {entry['ce']:.4f}, {config.loss} "
                  f"{kd_text}), lr {entry['learning_rate']:.2e}", file=sys.stderr, flush=True)
    train_wall_s = time.perf_counter() - start

    # --- artifact ------------------------------------------------------------------------
    model.eval()
    int4_unaware(model)  # save the float weights whose int4 rounding was trained (a no-op without quant_aware)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / DISTILL_CONFIG_NAME).write_text(json.dumps(config.model_dump(), indent=2) + "\n")
    after = measure(out_dir) if measure else None
    parent_manifest = read_manifest(student_dir)
    write_manifest(
        out_dir,
        kind="student",
        method="distill",
        base_model=parent_manifest.get("base_model"),
        parent=str(student_dir.resolve()),
        teacher=str(Path(config.teacher).resolve()) if config.teacher else "stored logprobs",
        dataset=lineage.get("dataset"),
        lineage=lineage,
        config=config.model_dump(),
        train_examples=len(data),
        examples_with_teacher_logprobs=None if teacher is not None else sum(1 for d in data if d["targets"]),
        kd_positions=None if teacher is not None else kd_positions,
        train_steps=steps,
        final_train_loss=history[-1]["loss"],
        loss_history=history,
        before=before,
        after=after,
        train_wall_s=round(train_wall_s, 2),
        params=sum(p.numel() for p in model.parameters()),
    )
    return out_dir


# ---- measurements for healing ---------------------------------------------------------------------


def completion_loss(model_dir: str | Path, examples: list[dict[str, str]]) -> float:
    """Mean cross-entropy per completion token (EOS included) given the prompt, as training measures it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return model_completion_loss(model, tokenizer, examples)


def model_completion_loss(model: Any, tokenizer: Any, examples: list[dict[str, str]]) -> float:
    """:func:`completion_loss` of a model already in memory (e.g. a pruning candidate)."""
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for example in examples:
            input_ids, prompt_len = tokenize_example(tokenizer, example["prompt"], example["completion"], 10**6)
            ids = torch.tensor([input_ids])
            labels = ids.clone()
            labels[:, :prompt_len] = -100
            n = len(input_ids) - prompt_len
            total += model(input_ids=ids, labels=labels).loss.item() * n
            tokens += n
    return total / max(tokens, 1)


def measure_student(model_dir: str | Path, examples: list[dict[str, str]], tasks: list[Any],
                    compare: Callable[[dict | None, dict], dict], lineage: dict[str, Any] | None = None,
                    domain: Any = None) -> dict[str, Any]:
    """What healing should restore: the completion loss on ``examples`` and, on ``tasks`` (rows
    with input, context and gold), the exact match of the student's greedy answers.

    ``lineage`` (format, function_names) and ``domain`` say how to read the answers: the model
    measured after training has no manifest yet, so it cannot inherit them."""
    from student.generate import DirectStudent

    result: dict[str, Any] = {"completion_loss": round(completion_loss(model_dir, examples), 4),
                              "loss_examples": len(examples)}
    if tasks:
        lineage = lineage or {}
        student = DirectStudent(model_dir, function_names=lineage.get("function_names"), domain=domain,
                                format=lineage.get("format"))
        predictions = student.predict_batch([(task.input, task.context) for task in tasks])
        exact = sum(bool(compare(p.call, task.gold)["exact"]) for p, task in zip(predictions, tasks))
        result.update(exact_match=round(exact / len(tasks), 4), exact_match_tasks=len(tasks))
    return result


def logprob_examples(store: Any, dataset_ref: str) -> list[dict[str, Any]]:
    """A dataset version's direct-mode pairs, each with the top-k log-probabilities the teacher
    endpoint returned for the model call that made its final call (None when it returned none)."""
    from dataengine.curate import items_with_reviewed_answers
    from student.format import direct_completion, direct_prompt

    dataset = store.dataset(dataset_ref)
    examples = []
    for trace, _ in items_with_reviewed_answers(store, dataset):
        if not trace.final_call:
            continue
        calls = [call for call in store.model_calls_of(trace.id) if call.error is None]
        examples.append({"prompt": direct_prompt(trace.input, trace.context),
                         "completion": direct_completion(trace.final_call),
                         "teacher_logprobs": (calls[-1].logprobs or None) if calls else None,
                         "where": f"trace {trace.id} (teacher {trace.model})"})
    return examples
