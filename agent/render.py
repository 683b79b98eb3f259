"""Rich rendering of agent steps, shared by ``agent run`` and the debugger (``agent chat``)."""
from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def render_update(console: Console, node: str, update: dict[str, Any]) -> None:
    """Print one graph update: model output, tool calls with results, or the end state. What models,
    tools and people wrote is escaped: a ``[/x]`` in a result is text, not rich markup."""
    if node == "call_model":
        for message in update.get("messages", []):
            usage = message.usage_metadata or {}
            latency = message.response_metadata.get("latency_ms", 0)
            console.print(f"[bold cyan]model[/] call {update.get('model_calls')}  "
                          f"[dim]{latency:.0f} ms, {usage.get('input_tokens', 0)}+{usage.get('output_tokens', 0)} tokens[/]")
            if message.content:
                console.print(f"  [italic]{escape(str(message.content))}[/]")
            for call in message.tool_calls:
                args = json.dumps(call["args"], ensure_ascii=False)
                console.print(f"  [yellow]→ {escape(call['name'])}[/]({escape(args)})")
            for bad in getattr(message, "invalid_tool_calls", None) or []:
                name, args = escape(str(bad.get("name"))), escape(str(bad.get("args")))
                console.print(f"  [red]→ malformed call {name}[/]: {args}")
    elif node == "run_tools":
        for event in update.get("tool_events", []):
            if event["error"]:
                console.print(f"  [red]✗ {escape(event['name'])}[/]: {escape(event['error'])}  "
                              f"[dim]{event['latency_ms']:.1f} ms[/]")
            else:
                result = json.dumps(event["result"], ensure_ascii=False)
                console.print(f"  [green]✓ {escape(event['name'])}[/] → {escape(result[:200])}  "
                              f"[dim]{event['latency_ms']:.1f} ms[/]")
    elif node == "submit_action":
        if update.get("final_call"):
            call = update["final_call"]
            console.print(f"[bold green]action[/] {escape(call_text(call['name'], call['arguments']))}")
        for event in update.get("tool_events", []):
            console.print(f"  [red]✗ {escape(event['name'])}[/]: {escape(str(event['error']))}")
    elif node in ("no_call", "budget_exhausted"):
        console.print(f"[bold red]stopped[/]: {node.replace('_', ' ')}")
    elif node == "error":
        console.print(f"[bold red]error[/]: {escape(str(update['error']))}")


# ---- the debugger's views (``supertiny agent chat``) ------------------------------------------
# Everything shown here may hold text a model or a person wrote, so it is markup-escaped.


def call_text(name: str, args: Any) -> str:
    """``name({"arg": ...})``: one tool call as people read it (plain text, not markup)."""
    return f"{name}({json.dumps(args, ensure_ascii=False)})"


def render_pending_calls(console: Console, node: str, calls: list[dict[str, Any]],
                         answers: dict[str, str]) -> None:
    """The tool calls a step-mode pause is holding, numbered for ``:edit N`` / ``:result N`` / ``:skip N``.
    ``answers`` maps a call id to what the user decided instead of running it."""
    plural = "s" if len(calls) != 1 else ""
    console.print(f"[bold magenta]paused[/] before {node}: {len(calls)} pending call{plural}")
    for number, call in enumerate(calls, start=1):
        decided = f"  [magenta]({escape(answers[call['id']])})[/]" if call["id"] in answers else ""
        console.print(f"  [bold]{number}[/] [yellow]{escape(call_text(call['name'], call['args']))}[/]{decided}",
                      highlight=False)


def message_line(message: Any) -> str:
    """One message on one line: role-specific, tool calls as ``→ name({...})``."""
    text = str(message.content or "")
    if message.type == "system":
        return (text.splitlines() or [""])[0] + " …"
    if message.type == "tool":
        mark = "✗" if getattr(message, "status", "") == "error" else "✓"
        return f"{mark} {message.name}: {text[:300]}"
    calls = [f"→ {call_text(call['name'], call['args'])}" for call in getattr(message, "tool_calls", None) or []]
    return " ".join([text] + calls if text else calls)


def render_messages(console: Console, messages: list[Any], values: dict[str, Any], next_nodes: tuple[str, ...]) -> None:
    """``:state``: every message of the branch, then the counters the graph routes on."""
    for message in messages:
        console.print(f"[cyan]{message.type:>6}[/] {escape(message_line(message))}", highlight=False)
    final = values.get("final_call")
    summary = (f"model_calls={values.get('model_calls', 0)} status={values.get('status')} "
               f"next={', '.join(next_nodes) or '(end)'} tool_events={len(values.get('tool_events', []))}")
    if final:
        summary += f" final_call={call_text(final['name'], final['arguments'])}"
    console.print(f"[dim]{escape(summary)}[/]", highlight=False)


def render_outcome(console: Console, branch: str, values: dict[str, Any]) -> None:
    """One line when a branch reaches the end."""
    final = values.get("final_call")
    tokens = sum((m.usage_metadata or {}).get("total_tokens", 0) for m in values.get("messages", [])
                 if m.type == "ai")
    answer = call_text(final["name"], final["arguments"]) if final else "no action"
    line = f"{values.get('status')} · {answer} · {values.get('model_calls', 0)} model calls · {tokens} tokens"
    console.print(f"[bold]{escape(branch)} finished[/]: {escape(line)}", highlight=False)


def render_table(console: Console, title: str, columns: list[str], rows: list[list[str]]) -> None:
    """The debugger's listings (:history, :branches): plain rows under a title."""
    table = Table(title=escape(title), title_justify="left", show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*map(escape, row))
    console.print(table)


def render_divergence(console: Console, step: int | None, reason: str, columns: tuple[str, str],
                      rows: list[tuple[str, str, str]]) -> None:
    """:replay's verdict: the first step where the runs differ, side by side (or that none does).
    ``rows`` are (what, stored, replayed)."""
    if step is None:
        console.print(f"[bold green]no divergence[/]: {escape(reason)}", highlight=False)
    else:
        console.print(f"[bold red]diverges at step {step}[/]: {escape(reason)}", highlight=False)
    table = Table(show_edge=False)
    table.add_column("")
    table.add_column(escape(columns[0]), overflow="fold", ratio=1)
    table.add_column(escape(columns[1]), overflow="fold", ratio=1)
    for row in rows:
        table.add_row(*map(escape, row))
    console.print(table)
