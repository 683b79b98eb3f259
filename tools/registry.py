"""Domains: what the teacher can do, and how its answers are judged.

A domain is a plain Python module that defines ``DOMAIN = Domain(...)``:

- ``lookup_functions``: tools the agent calls while solving (typed functions or pydantic models
  with a ``run`` method); their JSON schema comes from type hints and the docstring.
- ``action_functions``: final-answer functions (or pydantic models); calling one ends the task
  and that call is the answer.
- ``system_prompt``: what the teacher is told.
- ``compare``: gold comparison (default: :func:`dataengine.verify.compare_calls`, BFCL-AST style).
- ``check``: an optional programmatic check of an answer that needs no gold.
- ``generate_tasks`` / ``load_tasks``: optional task generator and file loader.
- ``planner``: optional offline chat model factory, used by ``--model planner``.
- ``slot_metrics``: the actions are intents and their arguments slots; ``supertiny eval`` then
  also reports intent accuracy, slot F1 and sentence accuracy.
- ``values_from_request``: every string argument is a span of the request; direct-mode students
  then decode their quoted values as spans of it.
- ``copied_names``: lookup arguments that copy a name out of the request, from an open set
  (songs, cities, rooms): program-mode training can add copies of its examples with those
  names made up (``student train --name-swaps N``).

``get_domain`` returns a built-in domain by name, or imports a module path or ``.py`` file.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel

from supertiny.errors import UserError


def as_tool(fn: Callable | type[BaseModel]) -> BaseTool:
    """A typed function or a pydantic model -> a LangChain tool.

    A function's JSON schema comes from its type hints and Google-style docstring. A pydantic
    model's schema is the model itself (field descriptions included); calling the tool validates
    the arguments into the model and returns ``instance.run()`` when it has a ``run`` method,
    else the validated arguments (what an action needs).
    """
    if isinstance(fn, type) and issubclass(fn, BaseModel):
        model = fn

        def call(**kwargs: Any) -> Any:
            instance = model(**kwargs)
            return instance.run() if hasattr(instance, "run") else instance.model_dump(exclude_none=True)

        return StructuredTool.from_function(call, name=model.__name__, description=(model.__doc__ or "").strip(),
                                            args_schema=model)
    return StructuredTool.from_function(fn, parse_docstring=True)


@dataclass
class Task:
    """A task as stored: ``gold`` is ``{"name": ..., "arguments": {...}}`` (or None: no gold)."""

    id: str
    domain: str
    split: str
    input: str
    context: dict[str, Any]
    gold: dict[str, Any] | None
    slice: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _default_compare(predicted: dict[str, Any] | None, gold: dict[str, Any]) -> dict[str, Any]:
    from dataengine.verify import compare_calls

    return compare_calls(predicted, gold)


@dataclass
class Domain:
    name: str
    system_prompt: str
    lookup_functions: list[Callable | type[BaseModel]]
    action_functions: list[Callable | type[BaseModel]]
    # (predicted call or None, gold call) -> {"exact": bool, "name_match": bool, "arg_f1": float, ...}
    compare: Callable[[dict[str, Any] | None, dict[str, Any]], dict[str, Any]] = _default_compare
    # (predicted call, task input, task context) -> None when the answer passes, else why it fails
    check: Callable[[dict[str, Any], str, dict[str, Any]], str | None] | None = None
    generate_tasks: Callable[..., list[Task]] | None = None  # (seed=, n_train=, n_dev=, n_test=) -> tasks
    load_tasks: Callable[[Path], list[Task]] | None = None  # a file in the domain's own format -> tasks
    planner: Callable[..., BaseChatModel] | None = None  # (temperature=, seed=) -> offline chat model
    # True when the actions are intents and their arguments slots (SNIPS-style): `supertiny eval` then
    # also reports intent accuracy, slot F1 and sentence accuracy (student/intent_slot.py)
    slot_metrics: bool = False
    # True when every string argument is a verbatim span of the user's request (SNIPS slots): a
    # direct-mode student then decodes its quoted values as spans of it (student/generate.py)
    values_from_request: bool = False
    # lookup tool -> its arguments that copy a name from the request, e.g. {"find_city": ("name",)}:
    # `student train --name-swaps N` makes up new names there (student/program.py)
    copied_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tools: list[BaseTool] = field(init=False)
    actions: list[BaseTool] = field(init=False)

    def __post_init__(self) -> None:
        self.tools = [as_tool(fn) for fn in self.lookup_functions]
        self.actions = [as_tool(fn) for fn in self.action_functions]
        if not self.actions:
            raise ValueError(f"domain {self.name!r} needs at least one action function (the final answer)")
        names = [t.name for t in self.tools + self.actions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"domain {self.name!r}: tool names must be unique, repeated: {', '.join(duplicates)}")

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

    from agent.planner import HomePlannerChatModel

    return Domain(
        name="home",
        system_prompt=HOME_SYSTEM_PROMPT,
        lookup_functions=functions.LOOKUP_FUNCTIONS,
        action_functions=functions.ACTION_FUNCTIONS,
        generate_tasks=tasks.generate_tasks,
        planner=HomePlannerChatModel,
        # songs, artists, playlists, cities and rooms come from catalogs that grow; device types
        # and time expressions are closed sets the student can learn whole
        copied_names={"search_music": ("query",), "find_city": ("name",), "find_device": ("room",)},
    )


UNITS_SYSTEM_PROMPT = """You solve multi-step arithmetic and unit-conversion word problems.
Do not compute in your head: use calculate for every arithmetic step and convert for every
change of unit (temperatures included). Answer in the unit the question asks for. When you
have the final number, call submit_answer once with the value and that unit's symbol."""


def _units_domain() -> Domain:
    from tools.units import functions, tasks
    from tools.units.planner import UnitsPlannerChatModel

    return Domain(
        name="units",
        system_prompt=UNITS_SYSTEM_PROMPT,
        lookup_functions=functions.LOOKUP_FUNCTIONS,
        action_functions=functions.ACTION_FUNCTIONS,
        compare=functions.compare_answers,
        check=functions.check_answer,
        generate_tasks=tasks.generate_tasks,
        planner=UnitsPlannerChatModel,
    )


SNIPS_SYSTEM_PROMPT = """You are the language-understanding step of a voice assistant.
Call exactly one of the intent functions for the user's request. Copy slot values verbatim from
the request (the user's own words and spelling); leave out slots the request does not mention."""


def _snips_domain() -> Domain:
    from tools.snips import functions, tasks

    return Domain(
        name="snips",
        system_prompt=SNIPS_SYSTEM_PROMPT,
        lookup_functions=[],
        action_functions=functions.ACTION_FUNCTIONS,
        load_tasks=tasks.load_tasks,
        slot_metrics=True,
        values_from_request=True,
    )


BUILTIN_DOMAINS = {"home": _home_domain, "units": _units_domain, "snips": _snips_domain}


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
    except (ImportError, FileNotFoundError) as exc:
        missing = getattr(exc, "name", None) or ""
        module_itself_missing = isinstance(exc, FileNotFoundError) or (
            not name.endswith(".py") and (name == missing or name.startswith(missing + ".")))
        if not module_itself_missing:
            raise UserError(f"domain {name!r} failed to import: {exc}") from None
        raise UserError(
            f"unknown domain {name!r}: built-in domains are {', '.join(BUILTIN_DOMAINS)}; "
            "or give an importable module or .py file that defines DOMAIN"
        ) from None
    except Exception as exc:  # the user's module itself is broken: say where
        raise UserError(f"domain {name!r} failed to load: {type(exc).__name__}: {exc}") from None
    domain = getattr(module, "DOMAIN", None)
    if not isinstance(domain, Domain):
        raise UserError(f"domain module {name!r} does not define DOMAIN = tools.registry.Domain(...)")
    return domain


def call_to_json(call: dict[str, Any] | None) -> str:
    return json.dumps(call, sort_keys=True, ensure_ascii=False)
