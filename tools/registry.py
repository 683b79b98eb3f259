"""Domains: what the teacher can do, and how its answers are judged.

A domain bundles its lookup tools (called while solving), its action functions (calling one
is the answer), a system prompt, a task generator and a verifier. ``get_domain`` returns a
built-in domain by name or imports a user's module that defines ``DOMAIN``.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from langchain_core.tools import BaseTool, StructuredTool

from supertiny.errors import UserError


def as_tool(fn: Callable) -> BaseTool:
    """A plain typed function -> a LangChain tool; the JSON schema comes from hints and docstring."""
    return StructuredTool.from_function(fn, parse_docstring=True)


@dataclass
class Domain:
    name: str
    system_prompt: str
    lookup_functions: list[Callable]
    action_functions: list[Callable]
    generate_tasks: Callable[..., list]  # (seed=..., n_train=..., ...) -> list[Task]
    tools: list[BaseTool] = field(init=False)
    actions: list[BaseTool] = field(init=False)

    def __post_init__(self) -> None:
        self.tools = [as_tool(fn) for fn in self.lookup_functions]
        self.actions = [as_tool(fn) for fn in self.action_functions]

    @property
    def action_names(self) -> set[str]:
        return {tool.name for tool in self.actions}

    def render_request(self, text: str, context: dict[str, Any]) -> str:
        """The user message the teacher sees: the request plus its context."""
        ctx = " ".join(f"{key}={value}" for key, value in context.items())
        return f"Context: {ctx}\nRequest: {text}" if ctx else f"Request: {text}"


HOME_SYSTEM_PROMPT = """You are the planner of a smart-home voice assistant.
Turn the user's request into exactly one call of an action function (play_music,
add_to_playlist, set_alarm, set_timer, control_device, get_weather).
Action arguments must be canonical: never copy the user's words into them. First call the
lookup tools to get canonical values: search_music for titles, artists and playlists;
find_device for device ids; find_city for cities; resolve_datetime (pass the context's now)
for days and times; resolve_duration for durations. Then call the action function once.
Only name an artist when the user named one."""


def _home_domain() -> Domain:
    from tools.home import functions, tasks

    return Domain(
        name="home",
        system_prompt=HOME_SYSTEM_PROMPT,
        lookup_functions=functions.LOOKUP_FUNCTIONS,
        action_functions=functions.ACTION_FUNCTIONS,
        generate_tasks=tasks.generate_tasks,
    )


BUILTIN_DOMAINS = {"home": _home_domain}


def get_domain(name: str) -> Domain:
    """A built-in domain by name, or ``DOMAIN`` from an importable module or a ``.py`` file."""
    if name in BUILTIN_DOMAINS:
        return BUILTIN_DOMAINS[name]()
    try:
        if name.endswith(".py"):
            path = Path(name)
            if not path.is_file():
                raise FileNotFoundError(name)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(name)
    except (ImportError, FileNotFoundError):
        raise UserError(
            f"unknown domain {name!r}: built-in domains are {', '.join(BUILTIN_DOMAINS)}; "
            "or give an importable module or .py file that defines DOMAIN"
        ) from None
    domain = getattr(module, "DOMAIN", None)
    if not isinstance(domain, Domain):
        raise UserError(f"domain module {name!r} does not define DOMAIN = tools.registry.Domain(...)")
    return domain


def call_to_json(call: dict[str, Any] | None) -> str:
    return json.dumps(call, sort_keys=True, ensure_ascii=False)
