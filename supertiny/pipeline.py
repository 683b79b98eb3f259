"""Glue between the store and the model jobs: run a job, then register its artifact with
lineage (model -> parent model, model -> dataset version) in the ``models`` table."""
from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from dataengine.schema import ModelRow
from dataengine.store import Store
from student.manifest import dir_bytes, read_manifest
from supertiny.errors import UserError


def _config_error(exc: ValidationError, where: str) -> UserError:
    err = exc.errors()[0]
    return UserError(f"{where}: field {'.'.join(map(str, err['loc']))!r}: {err['msg']}")


def require_model_dir(model_dir: Path) -> None:
    if not (Path(model_dir) / "config.json").is_file():
        raise UserError(f"model path not found: {model_dir} (expected a model directory with config.json)")


def _parent_row(store: Store, model_dir: Path, name: str, kind: str = "base") -> ModelRow:
    path = str(model_dir.resolve())
    return store.model_by_path(path) or store.add_model(name=name, kind=kind, path=path,
                                                        config=read_manifest(model_dir).get("config") or {},
                                                        bytes=dir_bytes(model_dir))


def train_and_register(store: Store, *, dataset_ref: str, base: str, out: Path, mode: str = "full",
                       epochs: float = 2.0, max_steps: int = -1, learning_rate: float | None = None,
                       batch_size: int = 8, seed: int = 0, kind: str = "student",
                       bf16: bool | None = None, lora_r: int = 16) -> ModelRow:
    """SFT ``base`` on a dataset's direct-mode pairs. ``kind="healed"`` when ``base`` is a pruned
    model being repaired on the data it will serve (its parent row is then the pruned model).
    ``bf16=None`` autocasts to bf16 exactly when the CPU has native bf16 arithmetic."""
    from dataengine.export import direct_examples
    from student.train import SFTRunConfig, cpu_has_fast_bf16, train_student

    dataset = store.dataset(dataset_ref)
    examples = direct_examples(store, f"{dataset.name}@{dataset.version}")
    try:
        config = SFTRunConfig(base_model=base, output_dir=str(out), mode=mode, num_train_epochs=epochs,
                              max_steps=max_steps, per_device_train_batch_size=batch_size, seed=seed,
                              bf16=cpu_has_fast_bf16() if bf16 is None else bf16,
                              lora_r=lora_r, lora_alpha=2 * lora_r,
                              learning_rate=learning_rate or (5e-4 if mode == "lora" else 5e-5))
    except ValidationError as exc:
        raise _config_error(exc, "student train") from None
    lineage = {"dataset": {"name": dataset.name, "version": dataset.version, "id": dataset.id},
               "database": str(store.path.resolve()),
               # the student may only answer with these: DirectStudent constrains the name to them
               "function_names": sorted(store.domain(dataset.domain).action_names)}
    path = train_student(examples, config, lineage=lineage)
    manifest = read_manifest(path)
    parent = _parent_row(store, Path(manifest["parent"]), name=base)
    name = f"student-{dataset.name}@{dataset.version}" if kind == "student" else f"{parent.name}-{kind}"
    return store.add_model(name=name, kind=kind,
                           path=str(Path(path).resolve()), parent_id=parent.id, dataset_id=dataset.id,
                           config=config.model_dump(), params=manifest.get("params"), bytes=dir_bytes(path))


def calibration_texts(store: Store, dataset_ref: str | None, limit: int = 64) -> list[str]:
    """Prompts the model will really see: a dataset's direct-mode pairs, else stored tasks."""
    from dataengine.export import direct_examples
    from student.format import direct_prompt

    if dataset_ref:
        return [ex["prompt"] + ex["completion"] for ex in direct_examples(store, dataset_ref)[:limit]]
    texts = [direct_prompt(t.input, t.context) for t in store.tasks(split="train", limit=limit)]
    if not texts:
        raise UserError("no calibration texts: pass --calibration-dataset or generate tasks first")
    return texts


def prune_and_register(store: Store, *, model_dir: Path, out: Path, ratio: float,
                       calibration_dataset: str | None = None) -> ModelRow:
    from compress.prune import PruneConfig, prune_depth

    require_model_dir(model_dir)
    try:
        config = PruneConfig(target_param_ratio=ratio)
    except ValidationError as exc:
        raise _config_error(exc, "compress prune") from None
    manifest = prune_depth(model_dir, out, config, calibration_texts(store, calibration_dataset))
    parent = _parent_row(store, Path(model_dir), name=Path(model_dir).name, kind=read_manifest(model_dir).get("kind", "base"))
    return store.add_model(name=f"{parent.name}-pruned{ratio:g}", kind="pruned", path=str(Path(out).resolve()),
                           parent_id=parent.id, dataset_id=parent.dataset_id, config=manifest["config"],
                           params=manifest["params_after"], bytes=manifest["bytes"])


def quantize_and_register(store: Store, *, model_dir: Path, out: Path) -> ModelRow:
    from compress.quantize import quantize_int8

    require_model_dir(model_dir)
    manifest = quantize_int8(model_dir, out)
    parent = _parent_row(store, Path(model_dir), name=Path(model_dir).name, kind=read_manifest(model_dir).get("kind", "base"))
    return store.add_model(name=f"{parent.name}-int8", kind="quantized", path=str(Path(out).resolve()),
                           parent_id=parent.id, dataset_id=parent.dataset_id,
                           config={"method": manifest["method"], "quantized_modules": manifest["quantized_modules"]},
                           params=manifest["params"], bytes=manifest["bytes"])
