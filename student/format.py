"""Direct-mode text format: the student's whole interface.

The teacher needs a long system prompt, tool schemas and several model calls per request.
The student maps ``context + utterance`` straight to the final call in one short completion:

    prompt:      "now=2026-03-14T09:30 weekday=Saturday\n"
                 "next=Sun 03-15,Mon 03-16,Tue 03-17,Wed 03-18,Thu 03-19,Fri 03-20,Sat 03-21\n"
                 "turn off the kitchen lights\n=>"
    completion:  ' control_device(device_id="light.kitchen", action="off")'

When the context has a ``now``, the prompt also lists the dates of the next seven days. The
teacher resolves "on friday" with a tool; a 135M student cannot do calendar arithmetic
reliably, but it can copy a date from its prompt. The line is computed from ``now`` alone, at
training and at inference, so it costs ~40 prompt tokens and no model call.

Values are JSON literals so that strings, numbers and nulls round-trip exactly.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

PROMPT_END = "\n=>"


def next_days_line(now: Any) -> str | None:
    """``next=Sun 03-15,Mon 03-16,...``: the seven days after ``now``; None when ``now`` is not ISO."""
    try:
        today = datetime.fromisoformat(str(now))
    except ValueError:
        return None
    days = (today + timedelta(days=offset) for offset in range(1, 8))
    return "next=" + ",".join(day.strftime("%a %m-%d") for day in days)


def direct_prompt(text: str, context: dict[str, Any] | None) -> str:
    """The student's prompt: the context line (none when empty), the next days when the context
    has a ``now``, the utterance, and the arrow it completes."""
    context = context or {}
    lines = [" ".join(f"{key}={value}" for key, value in context.items())] if context else []
    calendar = next_days_line(context["now"]) if "now" in context else None
    if calendar:
        lines.append(calendar)
    return "\n".join(lines + [text.strip()]) + PROMPT_END


def format_call(call: dict[str, Any]) -> str:
    """``{"name": ..., "arguments": {...}}`` -> ``name(key=value, ...)``; null arguments are left out."""
    args = ", ".join(
        f"{key}={json.dumps(value, ensure_ascii=False)}"
        for key, value in call.get("arguments", {}).items()
        if value is not None
    )
    return f"{call['name']}({args})"


def direct_completion(call: dict[str, Any]) -> str:
    """The target the student is trained to produce after :func:`direct_prompt`."""
    return " " + format_call(call)


_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\((.*)\)\s*$")
_ARG = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)')


def parse_call(text: str) -> dict[str, Any] | None:
    """Parse the first line of a completion back into a call; ``None`` when it is not one."""
    line = text.strip().split("\n", 1)[0]
    match = _CALL.match(line)
    if not match:
        return None
    name, body = match.groups()
    arguments: dict[str, Any] = {}
    pos = 0
    while pos < len(body):
        arg = _ARG.match(body, pos)
        if not arg or arg.end() == pos:
            return None
        key, raw = arg.group(1), arg.group(2).strip()
        try:
            arguments[key] = json.loads(raw)
        except json.JSONDecodeError:
            if raw.startswith('"'):
                return None  # an unterminated string: not a call
            arguments[key] = raw  # an unquoted word: keep it, the verifier decides
        pos = arg.end()
    return {"name": name, "arguments": arguments}
