"""Rich rendering of agent steps, shared by ``agent run`` (and later the debugger)."""
from __future__ import annotations

import json
from typing import Any

from rich.console import Console


def render_update(console: Console, node: str, update: dict[str, Any]) -> None:
    """Print one graph update: model output, tool calls with results, or the end state."""
    if node == "call_model":
        for message in update.get("messages", []):
            usage = message.usage_metadata or {}
            latency = message.response_metadata.get("latency_ms", 0)
            console.print(f"[bold cyan]model[/] call {update.get('model_calls')}  "
                          f"[dim]{latency:.0f} ms, {usage.get('input_tokens', 0)}+{usage.get('output_tokens', 0)} tokens[/]")
            if message.content:
                console.print(f"  [italic]{message.content}[/]")
            for call in message.tool_calls:
                console.print(f"  [yellow]→ {call['name']}[/]({json.dumps(call['args'], ensure_ascii=False)})")
            for bad in getattr(message, "invalid_tool_calls", None) or []:
                console.print(f"  [red]→ malformed call {bad.get('name')}[/]: {bad.get('args')}")
    elif node == "run_tools":
        for event in update.get("tool_events", []):
            if event["error"]:
                console.print(f"  [red]✗ {event['name']}[/]: {event['error']}  [dim]{event['latency_ms']:.1f} ms[/]")
            else:
                result = json.dumps(event["result"], ensure_ascii=False)
                console.print(f"  [green]✓ {event['name']}[/] → {result[:200]}  [dim]{event['latency_ms']:.1f} ms[/]")
    elif node == "submit_action":
        if update.get("final_call"):
            call = update["final_call"]
            console.print(f"[bold green]action[/] {call['name']}({json.dumps(call['arguments'], ensure_ascii=False)})")
        for event in update.get("tool_events", []):
            console.print(f"  [red]✗ {event['name']}[/]: {event['error']}")
    elif node in ("no_call", "budget_exhausted"):
        console.print(f"[bold red]stopped[/]: {node.replace('_', ' ')}")
    elif node == "error":
        console.print(f"[bold red]error[/]: {update['error']}")
