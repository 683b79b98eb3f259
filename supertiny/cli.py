"""``supertiny``: thin noun groups over the library.

    supertiny tasks     generate | import | list
    supertiny agent     run | chat | generate
    supertiny traces    list | show | verify
    supertiny dataset   build | list | export
    supertiny student   train
    supertiny compress  prune | quantize
    supertiny models    list
    supertiny eval
    supertiny demo

Every command takes the global ``--db`` (or ``SUPERTINY_DB``); data commands take ``--json``.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from supertiny.errors import UserError
from supertiny.output import console, emit, err_console, evaluation_table

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Turn an LLM function-calling pipeline into a super-tiny model.")
tasks_app = typer.Typer(no_args_is_help=True, help="Tasks: requests with context and gold calls.")
agent_app = typer.Typer(no_args_is_help=True, help="The teacher agent: single runs and batch generation.")
traces_app = typer.Typer(no_args_is_help=True, help="Stored agent runs.")
dataset_app = typer.Typer(no_args_is_help=True, help="Versioned datasets built from verified traces.")
student_app = typer.Typer(no_args_is_help=True, help="Train the student.")
compress_app = typer.Typer(no_args_is_help=True, help="Prune and quantize a model directory.")
models_app = typer.Typer(no_args_is_help=True, help="Registered model artifacts and their lineage.")
for name, sub in [("tasks", tasks_app), ("agent", agent_app), ("traces", traces_app), ("dataset", dataset_app),
                  ("student", student_app), ("compress", compress_app), ("models", models_app)]:
    app.add_typer(sub, name=name)

STATE: dict[str, Optional[Path]] = {"db": None}
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DomainOpt = Annotated[str, typer.Option("--domain", help="Built-in domain name, importable module or .py file.")]
ModelOpt = Annotated[str, typer.Option("--model", help="'planner' (offline) or 'openai:<model>'.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="OpenAI-compatible endpoint (or OPENAI_BASE_URL).")]
ApiKeyOpt = Annotated[Optional[str], typer.Option("--api-key", help="API key (or OPENAI_API_KEY).")]
# The endpoint bundle shared by agent run / generate / chat (agent.backends.ModelOptions).
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", help="Most completion tokens per model call.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds before an HTTP request is abandoned.")]
RetriesOpt = Annotated[int, typer.Option("--max-retries", help="Client retries on 429, 5xx and timeouts.")]
ParallelOpt = Annotated[Optional[bool], typer.Option("--parallel-tool-calls/--no-parallel-tool-calls",
                                                     help="Several tool calls per turn (default: the endpoint's).")]
LogprobsOpt = Annotated[int, typer.Option("--top-logprobs", help="Store this many top log-probs per token (0: off).")]
ContextOpt = Annotated[Optional[str], typer.Option(
    "--context", help='Request context as a JSON object, e.g. \'{"limit": 500}\'; default: now and weekday.')]


def parse_request_options(now: Optional[str], context: Optional[str]) -> tuple[Optional[datetime], Optional[dict]]:
    """``--now`` and ``--context`` checked and parsed, for ``agent.run.context_for_request`` to combine
    into a request's context (``agent chat`` does that per request, at the minute it is typed)."""
    try:
        moment = datetime.fromisoformat(now) if now else None
    except ValueError:
        raise UserError(f"--now: not an ISO 8601 time: {now!r} (e.g. 2026-03-14T09:30)") from None
    if context is None:
        return moment, None
    try:
        parsed = json.loads(context)
    except json.JSONDecodeError as exc:
        raise UserError(f"--context: not JSON ({exc.msg} at column {exc.colno}): {context!r}") from None
    if not isinstance(parsed, dict):
        raise UserError(f"--context: must be a JSON object, got {context!r}")
    return moment, parsed


def endpoint_options(max_tokens: Optional[int], timeout: float, max_retries: int, parallel_tool_calls: Optional[bool],
                     top_logprobs: int) -> dict:
    return {"max_tokens": max_tokens, "timeout": timeout, "max_retries": max_retries,
            "parallel_tool_calls": parallel_tool_calls, "top_logprobs": top_logprobs}


@app.callback()
def _global(db: Annotated[Optional[Path], typer.Option("--db", envvar="SUPERTINY_DB",
                                                       help="SQLite file (default db/supertiny.db).")] = None) -> None:
    STATE["db"] = db


def store():
    from dataengine.store import Store

    return Store(STATE["db"])


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)


# ---- tasks ----------------------------------------------------------------------------------


@tasks_app.command("generate")
def tasks_generate(domain: DomainOpt = "home", seed: int = 0, train: int = 400, dev: int = 60, test: int = 120,
                   as_json: JsonOpt = False) -> None:
    """Generate a domain's seeded train/dev/test tasks (idempotent for a seed)."""
    d = store().domain(domain)
    if d.generate_tasks is None:
        raise UserError(f"domain {d.name!r} has no task generator: import tasks with `supertiny tasks import`")
    inserted, present = store().add_tasks(d.generate_tasks(seed=seed, n_train=train, n_dev=dev, n_test=test))
    emit([{"domain": d.name, "seed": seed, "inserted": inserted, "already_present": present}], as_json=as_json)


@tasks_app.command("import")
def tasks_import(path: Path, domain: DomainOpt = "home", as_json: JsonOpt = False) -> None:
    """Import tasks from JSONL ({"input", "context", "gold", "split", "slice", "id"} per line), or
    from any file the domain's own task loader reads."""
    d = store().domain(domain)
    if d.load_tasks is not None and path.suffix != ".jsonl":
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        inserted, present = store().add_tasks(d.load_tasks(path))
    else:
        inserted, present = store().import_tasks_jsonl(path, d.name)
    emit([{"file": str(path), "inserted": inserted, "already_present": present}], as_json=as_json)


@tasks_app.command("list")
def tasks_list(domain: Annotated[Optional[str], typer.Option()] = None, split: Optional[str] = None,
               limit: int = 20, as_json: JsonOpt = False) -> None:
    """List tasks."""
    rows = [t.model_dump() for t in store().tasks(domain=domain, split=split, limit=limit)]
    emit(rows, as_json=as_json, title="tasks", columns=["id", "split", "slice", "input", "gold"])


# ---- agent ----------------------------------------------------------------------------------


@agent_app.command("run")
def agent_run(text: str, domain: DomainOpt = "home", model: ModelOpt = "planner",
              now: Annotated[Optional[str], typer.Option(help="Local time for the request (ISO 8601); default: now.")] = None,
              context: ContextOpt = None,
              temperature: float = 0.0, seed: int = 0, max_model_calls: int = 6,
              label: Annotated[Optional[str], typer.Option(help="Label stored with the trace.")] = None,
              base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, max_tokens: MaxTokensOpt = None,
              timeout: TimeoutOpt = 60.0, max_retries: RetriesOpt = 2, parallel_tool_calls: ParallelOpt = None,
              top_logprobs: LogprobsOpt = 0, as_json: JsonOpt = False) -> None:
    """Run the teacher on one request, print each step and store the trace."""
    from agent.backends import make_chat_model
    from agent.render import render_update
    from agent.run import context_for_request, run_request
    d = store().domain(domain)
    request_context = context_for_request(*parse_request_options(now, context))
    chat = make_chat_model(model, domain=d, temperature=temperature, seed=seed, base_url=base_url, api_key=api_key,
                           **endpoint_options(max_tokens, timeout, max_retries, parallel_tool_calls, top_logprobs))
    on_update = None if as_json else (lambda node, update: render_update(console, node, update))
    result = run_request(d, chat, text, request_context, max_model_calls=max_model_calls, on_update=on_update)
    trace_id = store().add_trace(result, domain=d.name, model=model, input=text, context=request_context, label=label)
    summary = {"trace_id": trace_id, "status": result.status, "final_call": result.final_call,
               "model_calls": result.model_calls, "tokens": result.prompt_tokens + result.completion_tokens,
               "latency_ms": result.latency_ms, "error": result.error}
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        console.print(f"[dim]trace {trace_id} stored · {result.status} · {result.model_calls} model calls · "
                      f"{summary['tokens']} tokens · {result.latency_ms:.0f} ms[/]")
    if result.status == "error":
        raise typer.Exit(1)


@agent_app.command("chat")
def agent_chat(domain: DomainOpt = "home", model: ModelOpt = "planner", temperature: float = 0.0, seed: int = 0,
               max_model_calls: int = 6,
               now: Annotated[Optional[str], typer.Option(help="Local time for requests (ISO 8601); default: now.")] = None,
               context: ContextOpt = None,
               checkpoints: Annotated[Optional[Path], typer.Option(
                   help="SQLite file for the session's checkpoints (default: checkpoints.db next to --db).")] = None,
               step: Annotated[bool, typer.Option("--step", help="Start in step mode (pause before tool calls).")] = False,
               base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None, max_tokens: MaxTokensOpt = None,
               timeout: TimeoutOpt = 60.0, max_retries: RetriesOpt = 2, parallel_tool_calls: ParallelOpt = None,
               top_logprobs: LogprobsOpt = 0) -> None:
    """Interactive step-debugger: type a request and watch each step; pause before tool calls,
    edit or answer them, rewind, branch, save traces and replay them (:help inside)."""
    from agent.debugger import DebuggerShell, DebugSession, enable_line_editing, open_checkpointer

    moment, fixed_context = parse_request_options(now, context)
    s = store()
    checkpoints = checkpoints or s.path.parent / "checkpoints.db"
    session = DebugSession(s.domain(domain), s, open_checkpointer(checkpoints), model=model, temperature=temperature,
                           seed=seed, max_model_calls=max_model_calls, now=moment, context=fixed_context,
                           model_options={"base_url": base_url, "api_key": api_key,
                                          **endpoint_options(max_tokens, timeout, max_retries, parallel_tool_calls,
                                                             top_logprobs)})
    session.step_mode = step
    enable_line_editing()
    try:
        DebuggerShell(session, console, checkpoints=checkpoints).loop()
    finally:
        session.close()


@agent_app.command("generate")
def agent_generate(split: str = "train", samples: int = 4, concurrency: int = 8, domain: DomainOpt = "home",
                   model: ModelOpt = "planner", temperature: float = 0.7, seed: int = 0,
                   limit: Annotated[Optional[int], typer.Option(help="Only the first N tasks.")] = None,
                   max_model_calls: int = 6, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None,
                   max_tokens: MaxTokensOpt = None, timeout: TimeoutOpt = 60.0, max_retries: RetriesOpt = 2,
                   parallel_tool_calls: ParallelOpt = None, top_logprobs: LogprobsOpt = 0,
                   as_json: JsonOpt = False) -> None:
    """Run the teacher over a split's tasks, N samples each; re-run to resume."""
    from agent.batch import GenerateConfig, generate

    config = GenerateConfig(domain=domain, split=split, model=model, samples=samples, temperature=temperature,
                            seed=seed, concurrency=concurrency, max_model_calls=max_model_calls, limit=limit,
                            base_url=base_url, api_key=api_key,
                            model_options=endpoint_options(max_tokens, timeout, max_retries, parallel_tool_calls,
                                                           top_logprobs))
    with progress() as bar:
        task = bar.add_task(f"teacher {model} on {split}", total=None, info="")

        def on_progress(done: int, total: int, errors: int) -> None:
            bar.update(task, completed=done, total=total, info=f"not ok: {errors}")

        counts = generate(store(), config, on_progress=on_progress)
    emit([counts], as_json=as_json, title="generation job")


# ---- traces ---------------------------------------------------------------------------------


@traces_app.command("list")
def traces_list(job: Optional[int] = None, status: Optional[str] = None, split: Optional[str] = None,
                domain: Annotated[Optional[str], typer.Option()] = None, limit: int = 20, as_json: JsonOpt = False) -> None:
    """List the newest traces."""
    rows = [t.model_dump(exclude={"messages"}) for t in store().traces(job_id=job, status=status, split=split,
                                                                        domain=domain, limit=limit)]
    emit(rows, as_json=as_json, title="traces",
         columns=["id", "task_id", "job_id", "sample_index", "model", "status", "final_call", "model_calls",
                  "prompt_tokens", "latency_ms"])


@traces_app.command("show")
def traces_show(trace_id: int, as_json: JsonOpt = False) -> None:
    """One trace: its messages and tool calls."""
    s = store()
    trace = s.trace(trace_id)
    tool_calls = [c.model_dump() for c in s.tool_calls(trace_id)]
    if as_json:
        print(json.dumps({**trace.model_dump(), "tool_calls": tool_calls}, indent=2, ensure_ascii=False))
        return
    console.print(f"[bold]trace {trace.id}[/] task={trace.task_id} model={trace.model} status={trace.status}")
    for message in trace.messages:
        body = message.get("content") or ""
        if message.get("tool_calls"):
            body += " ".join(f"→ {c['function']['name']}({c['function']['arguments']})" for c in message["tool_calls"])
        console.print(f"[cyan]{message['role']:>9}[/] {body}")
    emit(tool_calls, as_json=False, title="tool calls", columns=["position", "name", "args", "result", "error", "latency_ms"])


@traces_app.command("verify")
def traces_verify(split: str = "train", domain: DomainOpt = "home", as_json: JsonOpt = False) -> None:
    """Score every trace of a split against gold (scorer 'gold_match')."""
    from dataengine.curate import verify_traces

    emit([verify_traces(store(), domain=domain, split=split)], as_json=as_json, title="verification")


# ---- datasets -------------------------------------------------------------------------------


@dataset_app.command("build")
def dataset_build(name: str, split: str = "train", domain: DomainOpt = "home", min_score: float = 1.0,
                  model: Annotated[Optional[str], typer.Option(help="Only traces of this teacher model.")] = None,
                  as_json: JsonOpt = False) -> None:
    """Best-of-N rejection sampling: one verified trace per task, as a new version NAME@N."""
    from dataengine.curate import best_of_n

    dataset, counts = best_of_n(store(), name=name, domain=domain, split=split, min_score=min_score, model=model)
    emit([{"dataset": f"{dataset.name}@{dataset.version}", **counts}], as_json=as_json, title="dataset")


@dataset_app.command("list")
def dataset_list(as_json: JsonOpt = False) -> None:
    """List datasets and versions."""
    s = store()
    rows = [{"dataset": f"{d.name}@{d.version}", "domain": d.domain, "items": len(s.dataset_items(d.id)),
             "spec": d.spec, "created_at": d.created_at} for d in s.datasets()]
    emit(rows, as_json=as_json, title="datasets")


@dataset_app.command("export")
def dataset_export(name: str, out: Annotated[Optional[Path], typer.Option("--out", "-o")] = None,
                   format: Annotated[str, typer.Option(help="chat (OpenAI messages + tools) or direct (prompt/completion).")] = "chat") -> None:
    """Write a dataset as JSONL (to stdout without --out)."""
    from dataengine.export import chat_records, direct_examples, write_jsonl

    if format not in ("chat", "direct"):
        raise UserError(f"--format must be 'chat' or 'direct', not {format!r}")
    records = chat_records(store(), name) if format == "chat" else direct_examples(store(), name)
    if out is None:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        write_jsonl(records, out)
        err_console.print(f"wrote {len(records)} records to {out}")


# ---- student, compress, models ----------------------------------------------------------------


@student_app.command("train")
def student_train(dataset: Annotated[str, typer.Option(help="NAME or NAME@N.")],
                  out: Annotated[Path, typer.Option(help="Output model directory.")],
                  base: Annotated[str, typer.Option(help="'smollm2-135m' or a local model directory.")] = "smollm2-135m",
                  mode: str = "full", epochs: float = 2.0, max_steps: int = -1, learning_rate: Optional[float] = None,
                  batch_size: int = 8,
                  bf16: Annotated[Optional[bool], typer.Option(
                      help="bf16 autocast (float32 weights). Default: on when the CPU has native bf16.")] = None,
                  as_json: JsonOpt = False) -> None:
    """Supervised fine-tuning (TRL SFTTrainer) of a direct-mode student."""
    from supertiny.pipeline import train_and_register

    row = train_and_register(store(), dataset_ref=dataset, base=base, out=out, mode=mode, epochs=epochs,
                             max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size, bf16=bf16)
    emit([row.model_dump()], as_json=as_json, title="student", columns=["id", "name", "kind", "path", "params", "bytes"])


@compress_app.command("prune")
def compress_prune(model_dir: Path, out: Annotated[Path, typer.Option()], ratio: float = 0.8,
                   calibration_dataset: Annotated[Optional[str], typer.Option(help="Dataset whose prompts calibrate.")] = None,
                   as_json: JsonOpt = False) -> None:
    """Depth pruning by block influence to a target parameter ratio."""
    from supertiny.pipeline import prune_and_register

    row = prune_and_register(store(), model_dir=model_dir, out=out, ratio=ratio, calibration_dataset=calibration_dataset)
    emit([row.model_dump()], as_json=as_json, title="pruned", columns=["id", "name", "kind", "path", "params", "bytes"])


@compress_app.command("heal")
def compress_heal(model_dir: Path, dataset: Annotated[str, typer.Option(help="NAME or NAME@N to heal on.")],
                  out: Annotated[Path, typer.Option()], epochs: float = 1.0, max_steps: int = -1,
                  learning_rate: float = 1e-4, as_json: JsonOpt = False) -> None:
    """Short fine-tune of a pruned model on the dataset it serves, to recover what pruning broke."""
    from supertiny.pipeline import require_model_dir, train_and_register

    require_model_dir(model_dir)
    row = train_and_register(store(), dataset_ref=dataset, base=str(model_dir), out=out, epochs=epochs,
                             max_steps=max_steps, learning_rate=learning_rate, kind="healed")
    emit([row.model_dump()], as_json=as_json, title="healed", columns=["id", "name", "kind", "path", "params", "bytes"])


@compress_app.command("quantize")
def compress_quantize(model_dir: Path, out: Annotated[Path, typer.Option()], as_json: JsonOpt = False) -> None:
    """int8 dynamic quantization of the linear layers."""
    from supertiny.pipeline import quantize_and_register

    row = quantize_and_register(store(), model_dir=model_dir, out=out)
    emit([row.model_dump()], as_json=as_json, title="quantized", columns=["id", "name", "kind", "path", "params", "bytes"])


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Registered models with parent and dataset lineage."""
    rows = [m.model_dump() for m in store().models()]
    emit(rows, as_json=as_json, title="models",
         columns=["id", "name", "kind", "parent_id", "dataset_id", "params", "bytes", "path"])


# ---- eval and demo --------------------------------------------------------------------------


@app.command("eval")
def eval_command(split: str = "test", domain: DomainOpt = "home",
                 teacher: Annotated[Optional[str], typer.Option(help="Teacher model spec; '' to skip.")] = "planner",
                 model: Annotated[Optional[list[str]], typer.Option(
                     "--model", help="LABEL=MODEL_DIR, repeatable. Default: latest student and quantized models.")] = None,
                 limit: Optional[int] = None, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Teacher, student and compressed student on the same tasks: one table, stored in the db."""
    from student.evaluate import run_eval

    s = store()
    students = []
    for item in model or []:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise UserError(f"--model {item!r}: use LABEL=MODEL_DIR, e.g. student=artifacts/demo/student")
        students.append((label, path))
    if model is None:
        for kind, label in (("student", "student"), ("quantized", "compressed")):
            row = s.latest_model(kind)
            if row:
                students.append((label, row.path))
    with progress() as bar:
        def on_model(label: str, total: int):
            task = bar.add_task(f"eval {label}", total=total, info="")
            return lambda: bar.advance(task)

        run_id, rows = run_eval(s, domain=domain, split=split, teacher=teacher or None, students=students,
                                limit=limit, base_url=base_url, api_key=api_key, on_model=on_model)
    if as_json:
        print(json.dumps([r.model_dump() for r in rows], indent=2))
    else:
        console.print(evaluation_table(rows, title=f"eval {run_id} on {domain}/{split}"))


@app.command("demo")
def demo_command(quick: Annotated[bool, typer.Option(help="Tiny model and fewer tasks: a few minutes.")] = False,
                 out: Annotated[Path, typer.Option(help="Where model artifacts go.")] = Path("artifacts/demo"),
                 seed: int = 0) -> None:
    """The whole chain on embedded defaults: tasks → teacher traces → verify → dataset →
    student → prune + quantize → eval."""
    from supertiny.demo import DemoConfig, run_demo

    run_demo(store(), DemoConfig.quick(out, seed) if quick else DemoConfig.full(out, seed), console)


def main() -> None:
    """Entry point: user errors are one line on stderr and exit 1; usage errors exit 2."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        err_console.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.exceptions.Abort:
        err_console.print("Aborted.")
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("Interrupted: finished work is stored; re-run the same command to resume.")
        sys.exit(130)


if __name__ == "__main__":
    main()
