"""Rich views of stored things for people: a trace as a tree of its steps, a model's lineage as
a tree, and the difference of two dataset versions. ``--json`` prints the underlying data instead."""
from __future__ import annotations

import json
from typing import Any, Sequence

from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from student.format import format_call

MAX_VALUE_CHARS = 160  # a tool result can be a page of JSON: the tree shows its start, --json shows it all


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return escape(text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…")


def _ms(value: float | None) -> str:
    return "? ms" if value is None else f"{value:.1f} ms"


# ---- a trace -----------------------------------------------------------------------------------


def trace_tree(trace: Any, model_calls: Sequence[Any], tool_calls: Sequence[Any], scores: Sequence[Any]) -> Tree:
    """The request, then each model call with the tool calls it asked for (arguments, result or
    error, latency) and the final call, then the scores. Model call N is the N-th assistant
    message; a tool call row belongs to the model call of its ``step``."""
    where = f"task {trace.task_id}" if trace.task_id else "ad-hoc request"
    if trace.job_id is not None:
        where += f" · job {trace.job_id} sample {trace.sample_index}"
    status_style = "green" if trace.status == "ok" else "red"
    root = Tree(f"[bold]trace {trace.id}[/] · [{status_style}]{trace.status}[/] · {escape(trace.model)} · "
                f"{escape(where)}\n[dim]{trace.model_calls} model calls · {trace.prompt_tokens}+"
                f"{trace.completion_tokens} tokens · {_ms(trace.latency_ms)} · {trace.created_at}[/]")
    context = " ".join(f"{k}={v}" for k, v in (trace.context or {}).items())
    root.add(f"[cyan]request[/] {escape(trace.input)}" + (f"\n[dim]context {escape(context)}[/]" if context else ""))
    if trace.label or trace.note:
        root.add(f"[dim]label {escape(trace.label or '')} {escape(trace.note or '')}[/]")

    assistant_turns = [m for m in trace.messages if m.get("role") == "assistant"]
    rows_by_step: dict[int, list[Any]] = {}
    for row in tool_calls:
        rows_by_step.setdefault(row.step, []).append(row)
    final_shown = False
    for call in model_calls:
        reported = f" · {escape(call.model)}" if call.model else ""
        node = root.add(f"[bold]model call {call.step}[/] · {call.prompt_tokens}+{call.completion_tokens} tokens · "
                        f"{_ms(call.latency_ms)} · {escape(call.finish_reason or '-')}{reported}")
        if call.error:
            node.add(f"[red]error[/] {escape(call.error)}")
        message = assistant_turns[call.step - 1] if call.step <= len(assistant_turns) else {}
        if message.get("content"):
            node.add(f"[dim]says[/] {_short(message['content'])}")
        unmatched = list(rows_by_step.pop(call.step, []))
        for requested in message.get("tool_calls") or []:
            name = requested["function"]["name"]
            row = next((r for r in unmatched if r.name == name), None)
            if row is not None:
                unmatched.remove(row)
                node.add(_tool_line(row))
            elif trace.final_call and name == trace.final_call.get("name") and not final_shown:
                node.add(f"[bold green]⇒ final call[/] {escape(format_call(trace.final_call))}")
                final_shown = True
            else:
                node.add(f"[dim]→ {escape(name)}({_short(requested['function']['arguments'])}) · not run[/]")
        for row in unmatched:
            node.add(_tool_line(row))
    for step in sorted(rows_by_step):  # tool calls of a model call that has no row (older traces)
        for row in rows_by_step[step]:
            root.add(_tool_line(row))
    if trace.final_call and not final_shown:
        root.add(f"[bold green]⇒ final call[/] {escape(format_call(trace.final_call))}")
    if trace.error:
        root.add(f"[red]error[/] {escape(trace.error)}")
    if scores:
        score_node = root.add("[bold]scores[/]")
        for score in scores:
            style = "green" if score.value >= 1.0 else "yellow" if score.value > 0 else "red"
            details = {k: v for k, v in (score.details or {}).items() if k != "provenance" and v not in (None, [], {})}
            score_node.add(f"[{style}]{escape(score.scorer)} {score.value:g}[/] [dim]{_short(details)}[/]")
    else:
        root.add("[dim]no scores (run `supertiny traces verify`)[/]")
    return root


def _tool_line(row: Any) -> str:
    call = f"{escape(row.name)}({_short(row.args)})"
    if row.error:
        return f"[red]✗ {call}[/] {_short(row.error)} [dim]{_ms(row.latency_ms)}[/]"
    return f"[green]✓[/] {call} → {_short(row.result)} [dim]{_ms(row.latency_ms)}[/]"


# ---- a model's lineage -----------------------------------------------------------------------------


def lineage_tree(node: dict[str, Any]) -> Tree:
    """``dataengine.lineage.model_lineage``'s result as a tree: the model, its dataset version with
    the jobs and teachers its traces came from, then its parent model, recursively."""
    root = Tree(_model_label(node["model"]))
    _add_model_children(root, node)
    return root


def _model_label(model: dict[str, Any]) -> str:
    if model.get("missing"):
        return f"[red]model {model['id']} (no longer registered)[/]"
    params = f" · {model['params']:,} params" if model.get("params") else ""
    return (f"[bold]model {model['id']}[/] {escape(model['name'])} ({escape(model['kind'])}){params}\n"
            f"[dim]{escape(model['path'])}[/]")


def _add_model_children(tree: Tree, node: dict[str, Any]) -> None:
    dataset = node.get("dataset")
    if dataset is not None:
        if dataset.get("missing"):
            tree.add(f"[red]dataset {dataset['id']} (no longer stored)[/]")
        else:
            spec = " ".join(f"{k}={v}" for k, v in dataset["spec"].items()
                            if not isinstance(v, (dict, list)) and v is not None)
            data_node = tree.add(f"[bold]dataset {escape(dataset['ref'])}[/] · {escape(dataset['domain'])} · "
                                 f"{dataset['items']} items\n[dim]{escape(spec)}[/]")
            for source in dataset["sources"]:
                data_node.add(_source_label(source))
    parent = node.get("parent")
    if parent is not None:
        parent_tree = tree.add("[dim]parent[/] " + _model_label(parent["model"]))
        _add_model_children(parent_tree, parent)


def _source_label(source: dict[str, Any]) -> str:
    ids = source["trace_ids"]
    shown = ", ".join(map(str, ids)) if len(ids) <= 4 else f"{ids[0]} … {ids[-1]}"
    traces = f"{source['traces']} traces (ids {shown})"
    job = source["job"]
    if job is None:
        origin = "no job (ad-hoc runs)"
    else:
        origin = (f"job {job['id']} · {escape(job['kind'])} on {escape(job['split'])} ×{job['samples']} · "
                  f"T={job['temperature']:g} seed {job['seed']} · {escape(job['status'])}")
    reported = f"\n[dim]the endpoint reported: {escape(', '.join(source['reported_models']))}[/]" \
        if source["reported_models"] else ""
    return f"{traces} ← {origin} ← teacher [bold]{escape(source['teacher'])}[/]{reported}"


# ---- two dataset versions --------------------------------------------------------------------------


def diff_table(diff: dict[str, Any]) -> Table:
    """One row per added, removed or changed item of ``dataengine.lineage.dataset_diff``."""
    a, b = diff["from"], diff["to"]
    table = Table(title=f"{a['ref']} ({a['items']} items) → {b['ref']} ({b['items']} items): "
                        f"{len(diff['added'])} added, {len(diff['removed'])} removed, "
                        f"{len(diff['changed'])} changed, {diff['unchanged']} unchanged")
    for column in ("", "task", "trace", "final call"):
        table.add_column(column, overflow="fold")
    for item in diff["added"]:
        table.add_row("[green]+[/]", escape(str(item["task_id"])), str(item["trace_id"]), _call(item["final_call"]))
    for item in diff["removed"]:
        table.add_row("[red]-[/]", escape(str(item["task_id"])), str(item["trace_id"]), _call(item["final_call"]))
    for item in diff["changed"]:
        call = (f"{_call(item['from_call'])} → {_call(item['to_call'])}" if item["answer_changed"]
                else f"{_call(item['to_call'])} [dim](same answer)[/]")
        table.add_row("[yellow]~[/]", escape(str(item["task_id"])), f"{item['from_trace']} → {item['to_trace']}", call)
    return table


def _call(call: dict[str, Any] | None) -> str:
    return escape(format_call(call)) if call else "[dim]none[/]"
