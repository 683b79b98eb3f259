"""Glue between the store and the model jobs: run a job, then register its artifact with
lineage (model -> parent model, model -> dataset version) in the ``models`` table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dataengine.schema import ModelRow
from dataengine.store import Store
from student.manifest import dir_bytes, inherited_field, read_manifest
from supertiny.errors import UserError


def _config_error(exc: ValidationError, where: str) -> UserError:
    err = exc.errors()[0]
    return UserError(f"{where}: field {'.'.join(map(str, err['loc']))!r}: {err['msg']}")


def require_model_dir(model_dir: Path) -> None:
    """A directory of float weights: what pruning, quantizing and every kind of training start from."""
    if not (Path(model_dir) / "config.json").is_file():
        raise UserError(f"model path not found: {model_dir} (expected a model directory with config.json)")
    manifest = read_manifest(model_dir)
    if manifest.get("kind") == "quantized":
        raise UserError(f"{model_dir}: a quantized model ({manifest.get('method')}) has no float weights to "
                        f"prune, quantize or train; pass the directory it was made from: {manifest.get('parent')}")


def _parent_row(store: Store, model_dir: Path, name: str, kind: str = "base") -> ModelRow:
    path = str(model_dir.resolve())
    return store.model_by_path(path) or store.add_model(name=name, kind=kind, path=path,
                                                        config=read_manifest(model_dir).get("config") or {},
                                                        bytes=dir_bytes(model_dir))


def train_and_register(store: Store, *, dataset_ref: str, base: str, out: Path, mode: str = "full",
                       epochs: float = 2.0, max_steps: int = -1, learning_rate: float | None = None,
                       batch_size: int = 8, seed: int = 0, kind: str = "student",
                       bf16: bool | None = None, lora_r: int = 16, format: str | None = None,
                       save_steps: int = 0, resume: bool = False, name_swaps: int = 0) -> ModelRow:
    """SFT ``base`` on a dataset's direct-mode (or program-mode) pairs. ``kind="healed"`` when
    ``base`` is a pruned model being repaired on the data it will serve (its parent row is then
    the pruned model). ``bf16=None`` autocasts to bf16 exactly when the CPU has native bf16
    arithmetic. ``format=None``: the format ``base`` was trained in (a pruned student heals in
    its own format), else direct. ``name_swaps``: program format only, that many extra copies of
    each example whose lookups copy a name, with the name made up (:func:`student.program.name_swapped_examples`)."""
    from student.train import SFTRunConfig, cpu_has_fast_bf16, train_student

    if format is None:
        format = (inherited_field(base, "format") if Path(base).is_dir() else None) or "direct"
    if format not in ("direct", "program"):
        raise UserError(f"student train: --format must be 'direct' or 'program', not {format!r}")
    if name_swaps and format != "program":
        raise UserError(f"--name-swaps {name_swaps}: only for --format program (plans that look names up)")
    dataset = store.dataset(dataset_ref)
    domain = store.domain(dataset.domain)
    examples = student_examples(store, f"{dataset.name}@{dataset.version}", format)
    verified = len(examples)
    if name_swaps:
        from transformers import AutoTokenizer

        from student.base import resolve_base_model
        from student.program import with_name_swaps

        tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(base))
        examples = with_name_swaps(examples, domain, tokenizer, name_swaps, seed)
    try:
        config = SFTRunConfig(base_model=base, output_dir=str(out), mode=mode, num_train_epochs=epochs,
                              max_steps=max_steps, per_device_train_batch_size=batch_size, seed=seed,
                              bf16=cpu_has_fast_bf16() if bf16 is None else bf16,
                              lora_r=lora_r, lora_alpha=2 * lora_r, save_steps=save_steps, resume=resume,
                              learning_rate=learning_rate or (5e-4 if mode == "lora" else 5e-5))
    except ValidationError as exc:
        raise _config_error(exc, "student train") from None
    # the student may only start its answer with these: DirectStudent constrains the name to them
    lineage = {"dataset": {"name": dataset.name, "version": dataset.version, "id": dataset.id},
               "database": str(store.path.resolve()), "format": format, "domain": domain.name,
               "function_names": sorted(first_names(domain, format))}
    if name_swaps:
        lineage["name_swaps"] = {"copies": name_swaps, "examples": verified, "made_up": len(examples) - verified}
    path = train_student(examples, config, lineage=lineage)
    manifest = read_manifest(path)
    parent = _parent_row(store, Path(manifest["parent"]), name=base)
    name = f"student-{dataset.name}@{dataset.version}" if kind == "student" else f"{parent.name}-{kind}"
    return store.add_model(name=name, kind=kind,
                           path=str(Path(path).resolve()), parent_id=parent.id, dataset_id=dataset.id,
                           config=config.model_dump(), params=manifest.get("params"), bytes=dir_bytes(path))


def first_names(domain: Any, format: str) -> set[str]:
    """The names a student's answer may start with: an action, or for a program a lookup tool too."""
    return set(domain.action_names) | ({tool.name for tool in domain.tools} if format == "program" else set())


def student_examples(store: Store, dataset_ref: str, format: str = "direct") -> list[dict[str, str]]:
    """A dataset version's prompt/completion pairs in the student's format."""
    if format == "program":
        from student.program import program_examples

        return program_examples(store, dataset_ref)
    from dataengine.export import direct_examples

    return direct_examples(store, dataset_ref)


def dataset_prompts(store: Store, dataset_ref: str, model_dir: str | Path) -> list[str]:
    """The prompts of a dataset version, in the format ``model_dir`` (or its lineage) was trained in."""
    format = inherited_field(model_dir, "format") or "direct"
    prompts = [ex["prompt"] for ex in student_examples(store, dataset_ref, format)]
    if not prompts:
        raise UserError(f"dataset {dataset_ref} has no examples to take prompts from")
    return prompts


def pair_texts(examples: list[dict[str, str]]) -> list[str]:
    """Each prompt/completion pair as the one text the model reads."""
    return [ex["prompt"] + ex["completion"] for ex in examples]


def calibration_texts(store: Store, dataset_ref: str | None, limit: int | None = 64,
                      format: str = "direct") -> list[str]:
    """Prompts the model will really see: a dataset's pairs in the model's format, else stored
    tasks. ``limit=None``: all of them."""
    from student.format import direct_prompt

    if dataset_ref:
        return pair_texts(student_examples(store, dataset_ref, format)[:limit])
    texts = [direct_prompt(t.input, t.context) for t in store.tasks(split="train", limit=limit)]
    if not texts:
        raise UserError("no calibration texts: pass --calibration-dataset or generate tasks first")
    return texts


def prune_and_register(store: Store, *, model_dir: Path, out: Path, ratio: float,
                       calibration_dataset: str | None = None, method: str = "depth",
                       target_params: int | None = None, remove_kv_groups: int | None = None,
                       vocab_size: int | None = None) -> ModelRow:
    """Depth (drop layers), width (thin every layer) or both, to ``ratio`` of the params or to
    ``target_params``, after trimming the vocabulary to ``vocab_size`` tokens (every token of the
    calibration dataset kept); the manifest in ``out`` lists what was removed."""
    from compress.prune import PruneConfig, prune

    require_model_dir(model_dir)
    try:
        config = PruneConfig(target_param_ratio=ratio, method=method, target_params=target_params,
                             remove_kv_groups=remove_kv_groups, vocab_size=vocab_size)
    except ValidationError as exc:
        raise _config_error(exc, "compress prune") from None
    if vocab_size is not None and not calibration_dataset:
        raise UserError("--vocab keeps every token of a dataset: pass --calibration-dataset NAME too")
    format = inherited_field(model_dir, "format") or "direct"  # calibrate on text in the model's own format
    # A dataset's pairs also say where each completion starts: width candidates are compared on
    # the completion loss, what the student is trained and judged on (prune takes the first ones).
    examples = student_examples(store, calibration_dataset, format) if calibration_dataset else None
    # --vocab keeps every token of the whole dataset; calibration takes the first texts of it
    texts = (pair_texts(examples[:None if vocab_size else 64]) if examples is not None
             else calibration_texts(store, None, format=format))
    manifest = prune(model_dir, out, config, texts, texts if vocab_size else None, calibration_examples=examples)
    parent = _parent_row(store, Path(model_dir), name=Path(model_dir).name, kind=read_manifest(model_dir).get("kind", "base"))
    size = f"{target_params}p" if target_params is not None else f"{ratio:g}"
    suffix = f"pruned{size}" if method == "depth" else f"{method}-pruned{size}"
    if vocab_size is not None:
        suffix = f"vocab-{suffix}"
    return store.add_model(name=f"{parent.name}-{suffix}", kind="pruned", path=str(Path(out).resolve()),
                           parent_id=parent.id, dataset_id=parent.dataset_id, config=manifest["config"],
                           params=manifest["params_after"], bytes=manifest["bytes"])


def quantize_and_register(store: Store, *, model_dir: Path, out: Path, method: str = "int8-dynamic",
                          max_drop: float = 0.01, calibration_dataset: str | None = None,
                          threads: int | None = None) -> ModelRow:
    """Quantize with ``method`` (``auto``: the fastest method whose next-token accuracy is within
    ``max_drop`` of the float model's) and register. Accuracy and speed are measured on the
    calibration dataset's pairs, else on the dataset the model was trained on, else on stored
    tasks; an explicit method with no texts at all is applied unmeasured."""
    from compress.quantize import NEEDS_TEXTS, QuantizeConfig, quantize

    require_model_dir(model_dir)
    try:
        config = QuantizeConfig(method=method, max_drop=max_drop, threads=threads)
    except ValidationError as exc:
        raise _config_error(exc, "compress quantize") from None
    known = store.model_by_path(str(Path(model_dir).resolve()))
    trained_on = store.dataset_by_id(known.dataset_id) if known and known.dataset_id else None
    dataset_ref = calibration_dataset or (f"{trained_on.name}@{trained_on.version}" if trained_on else None)
    try:
        texts = calibration_texts(store, dataset_ref, format=inherited_field(model_dir, "format") or "direct")
    except UserError:
        if method in NEEDS_TEXTS or calibration_dataset:
            raise
        texts = []
    manifest = quantize(model_dir, out, config, texts)
    parent = _parent_row(store, Path(model_dir), name=Path(model_dir).name, kind=read_manifest(model_dir).get("kind", "base"))
    suffix = "int8" if manifest["method"] == "int8-dynamic" else manifest["method"]
    return store.add_model(name=f"{parent.name}-{suffix}", kind="quantized", path=str(Path(out).resolve()),
                           parent_id=parent.id, dataset_id=parent.dataset_id,
                           config={"method": manifest["method"], "kernels": manifest["kernels"],
                                   "modules_per_format": {f: len(names) for f, names in
                                                          manifest["quantized_modules"].items()}},
                           params=manifest["params"], bytes=manifest["bytes"])


# ---- after SFT: preference optimization, RL and distillation (student/dpo.py, grpo.py, distill.py) ----


def _student_lineage(store: Store, model_dir: Path, domain_name: str, format: str | None = None,
                     **more: object) -> dict:
    """Lineage for a student trained further in its own format (direct or program; ``format``
    for a model that has none yet); refuses an agent-mode one (its answers are conversations)."""
    require_model_dir(model_dir)
    format = inherited_field(model_dir, "format") or format or "direct"
    if format not in ("direct", "program"):
        raise UserError(f"{model_dir}: a {format}-mode student; DPO, GRPO and distillation train direct- and "
                        "program-mode students only")
    domain = store.domain(domain_name)
    # the names DirectStudent lets it spell first: what the starting student was trained with, else
    # the domain's actions (and, for a plan, its lookup tools), as train_and_register records them
    names = inherited_field(model_dir, "function_names") or sorted(first_names(domain, format))
    return {"database": str(store.path.resolve()) if store.path else None, "format": format, "domain": domain.name,
            "function_names": list(names), **more}


def _register_after(store: Store, *, model_dir: Path, path: Path, suffix: str, kind: str, dataset_id: int | None,
                    config: dict) -> ModelRow:
    parent = _parent_row(store, Path(model_dir), name=Path(model_dir).name,
                         kind=read_manifest(model_dir).get("kind", "base"))
    manifest = read_manifest(path)
    return store.add_model(name=f"{parent.name}-{suffix}", kind=kind, path=str(Path(path).resolve()),
                           parent_id=parent.id, dataset_id=dataset_id if dataset_id is not None else parent.dataset_id,
                           config=config, params=manifest.get("params"), bytes=dir_bytes(path))


def dpo_and_register(store: Store, *, dataset_ref: str, model_dir: Path, out: Path, pairs: str = "both",
                     self_samples: int = 0, beta: float = 0.1, learning_rate: float = 5e-6, epochs: float = 1.0,
                     max_steps: int = -1, batch_size: int = 8, mode: str = "full", seed: int = 0,
                     bf16: bool | None = None) -> ModelRow:
    """DPO of the SFT student ``model_dir`` on preference pairs built from ``dataset_ref``'s tasks:
    the teacher's failed samples and/or the student's own wrong answers as the rejected side."""
    from student.dpo import DPORunConfig, self_pairs, teacher_pairs, train_dpo
    from student.train import cpu_has_fast_bf16

    try:
        config = DPORunConfig(model=str(model_dir), output_dir=str(out), pairs=pairs, self_samples=self_samples,
                              beta=beta, learning_rate=learning_rate, num_train_epochs=epochs, max_steps=max_steps,
                              per_device_train_batch_size=batch_size, mode=mode, seed=seed,
                              bf16=cpu_has_fast_bf16() if bf16 is None else bf16)
    except ValidationError as exc:
        raise _config_error(exc, "student dpo") from None
    dataset = store.dataset(dataset_ref)
    ref = f"{dataset.name}@{dataset.version}"
    lineage = _student_lineage(store, Path(model_dir), dataset.domain,
                               dataset={"name": dataset.name, "version": dataset.version, "id": dataset.id})
    built = []
    if config.pairs in ("teacher", "both"):
        built += teacher_pairs(store, ref, config.max_pairs_per_task, format=lineage["format"])
    if config.pairs in ("self", "both"):
        built += self_pairs(store, ref, model_dir, samples=config.self_samples, temperature=config.self_temperature,
                            seed=config.seed, max_pairs_per_task=config.max_pairs_per_task, format=lineage["format"])
    path = train_dpo(built, config, lineage=lineage)
    return _register_after(store, model_dir=Path(model_dir), path=path, suffix="dpo", kind="student",
                           dataset_id=dataset.id, config=config.model_dump())


def grpo_and_register(store: Store, *, model_dir: Path, out: Path, domain: str = "home", split: str = "train",
                      limit: int | None = None, max_steps: int = 100, num_generations: int = 4,
                      prompts_per_step: int = 2, max_completion_length: int | None = None, temperature: float = 1.0,
                      learning_rate: float = 1e-6, beta: float = 0.0, seed: int = 0,
                      bf16: bool | None = None) -> ModelRow:
    """GRPO of ``model_dir`` on a split's tasks, rewarded by the domain's verifier against gold.
    ``max_completion_length=None``: 48 tokens for a direct answer, 128 for a program plan."""
    from student.grpo import GRPORunConfig, train_grpo
    from student.train import cpu_has_fast_bf16

    if max_completion_length is None:
        max_completion_length = 128 if inherited_field(model_dir, "format") == "program" else 48
    try:
        config = GRPORunConfig(model=str(model_dir), output_dir=str(out), max_steps=max_steps,
                               num_generations=num_generations, prompts_per_step=prompts_per_step,
                               max_completion_length=max_completion_length, temperature=temperature,
                               learning_rate=learning_rate, beta=beta, seed=seed,
                               bf16=cpu_has_fast_bf16() if bf16 is None else bf16)
    except ValidationError as exc:
        raise _config_error(exc, "student grpo") from None
    verifier = store.domain(domain)
    tasks = [{"input": t.input, "context": t.context, "gold": t.gold}
             for t in store.tasks(domain=verifier.name, split=split, limit=limit) if t.gold is not None]
    if not tasks:
        raise UserError(f"no {split} tasks with gold for domain {verifier.name!r}: GRPO rewards answers against "
                        "gold (run `supertiny tasks generate` or import tasks first)")
    lineage = _student_lineage(store, Path(model_dir), verifier.name, split=split, tasks=len(tasks))
    path = train_grpo(tasks, verifier.compare, config, lineage=lineage, domain=verifier)
    return _register_after(store, model_dir=Path(model_dir), path=path, suffix="grpo", kind="student",
                           dataset_id=None, config=config.model_dump())


HEAL_LOSS_EXAMPLES = 64  # dataset examples the before/after completion loss is measured on
HEAL_DEV_TASKS = 20  # dev tasks the before/after exact match is measured on


def distill_and_register(store: Store, *, dataset_ref: str, model_dir: Path, out: Path, teacher: Path | None = None,
                         loss: str = "fkl", temperature: float = 1.0, top_k: int | None = None, alpha: float = 0.5,
                         learning_rate: float = 5e-5, epochs: float = 2.0, max_steps: int = -1, batch_size: int = 8,
                         seed: int = 0, bf16: bool | None = None, kind: str = "student",
                         measure: bool = False, quant_aware: str | None = None) -> ModelRow:
    """Logit distillation into ``model_dir`` on ``dataset_ref``: from a local ``teacher`` model
    directory, or from the top-k logprobs stored with the dataset's traces. ``kind="healed"``
    for a pruned model healed by its unpruned parent. ``measure``: completion loss on the
    dataset and exact match on dev tasks, before and after, into the manifest. ``quant_aware``
    ("int4-weight"): train for the int4 model the result will be quantized to."""
    from functools import partial

    from student.distill import DistillRunConfig, distill_student, logprob_examples, measure_student
    from student.train import cpu_has_fast_bf16

    try:
        config = DistillRunConfig(model=str(model_dir), output_dir=str(out), teacher=str(teacher) if teacher else None,
                                  loss=loss, temperature=temperature, top_k=top_k, alpha=alpha,
                                  learning_rate=learning_rate, num_train_epochs=epochs, max_steps=max_steps,
                                  per_device_train_batch_size=batch_size, seed=seed, quant_aware=quant_aware,
                                  bf16=cpu_has_fast_bf16() if bf16 is None else bf16)
    except ValidationError as exc:
        raise _config_error(exc, "student distill") from None
    dataset = store.dataset(dataset_ref)
    ref = f"{dataset.name}@{dataset.version}"
    # A base model learns in its teacher's format.
    lineage = _student_lineage(store, Path(model_dir), dataset.domain,
                               format=inherited_field(teacher, "format") if teacher is not None else None,
                               dataset={"name": dataset.name, "version": dataset.version, "id": dataset.id})
    if teacher is not None:
        require_model_dir(Path(teacher))
        examples = student_examples(store, ref, lineage["format"])
    elif lineage["format"] != "direct":
        raise UserError(f"{model_dir}: a {lineage['format']}-mode student learns from a local teacher model "
                        "(--teacher DIR); the log-probabilities stored with traces are for direct answers")
    else:
        examples = logprob_examples(store, ref)
    measure_fn = None
    if measure:
        verifier = store.domain(dataset.domain)
        dev = [t for t in store.tasks(domain=verifier.name, split="dev") if t.gold is not None][:HEAL_DEV_TASKS]
        measure_fn = partial(measure_student, examples=examples[:HEAL_LOSS_EXAMPLES], tasks=dev,
                             compare=verifier.compare, lineage=lineage, domain=verifier)
    path = distill_student(examples, config, lineage=lineage, measure=measure_fn)
    return _register_after(store, model_dir=Path(model_dir), path=path,
                           suffix="distilled" if kind == "student" else kind, kind=kind, dataset_id=dataset.id,
                           config=config.model_dump())
