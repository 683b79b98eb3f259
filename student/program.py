"""Program mode: the teacher's trajectory compiled into one line the student writes, run by code.

The teacher needs several model calls: look things up, read the results, call the action. The
lookups themselves are plain code, so the student writes the whole plan at once — the lookups,
with the user's own words as arguments, then the action with references into their results —
and :func:`run_program` executes it with the domain's real tools, no further model call:

    prompt:      "now=2026-11-09T14:09 weekday=Monday\\nSet alarm on sunday at 6:45 pm\\n=>"
    completion:  ' resolve_datetime(expression="on sunday at 6:45 pm", now=$now); set_alarm(time=$1.datetime)'

``$N`` is the result of the N-th statement followed by a path (``$1[0].name``, ``$2.city``);
``$key`` is a value of the request's context. Why: copying "on sunday at 6:45 pm" or "cellar"
out of the request is easy for a 135M model; calendar arithmetic, and knowing that the cellar is
``light.basement`` or how an unseen song is spelled, are not — the tools know them.

The programs are derived from verified teacher traces (:func:`program_from_trace`): every
argument of the final call that a successful lookup returned becomes a reference to it; lookups
nothing refers to are dropped, and arguments equal to a tool's default are left out.
"""
from __future__ import annotations

import json
import random
import re
from typing import Any, Sequence, get_args

from dataengine.verify import find_value_path
from student.format import PROMPT_END, decode_value, direct_prompt, split_call

__all__ = ["PROMPT_END", "ProgramError", "completion_call", "made_up_words", "name_swapped_examples", "program_examples",
           "program_from_trace", "parse_program", "run_program", "trace_completions", "with_name_swaps"]

_REF = re.compile(r"^\$(?:(\d+)((?:\[\d+\]|\.[A-Za-z_]\w*)*)|([A-Za-z_]\w*))$")
_STEP = re.compile(r"\[(\d+)\]|\.([A-Za-z_]\w*)")


class ProgramError(ValueError):
    """A program that does not parse or cannot run: the student's answer is wrong, not a crash."""


class Ref(str):
    """An argument that refers to an earlier result or a context value, written as is."""


# ---- traces -> programs ---------------------------------------------------------------------


def program_from_trace(tool_calls: Sequence[Any], final_call: dict[str, Any], context: dict[str, Any] | None,
                       tool_defaults: dict[str, dict[str, Any]] | None = None) -> str:
    """A verified trace's lookups and final call as one program line (no leading space).

    ``tool_calls``: rows with ``name``, ``args``, ``result``, ``error`` in call order (the final
    action's own row, if present, is ignored). ``tool_defaults``: tool name -> argument defaults,
    left out of the program when the teacher passed them explicitly.
    """
    context = context or {}
    tool_defaults = tool_defaults or {}
    lookups = [c for c in tool_calls if c.error is None and c.name != final_call["name"] and c.result is not None]
    # Each final argument refers to the last lookup that returned it (the teacher's last word).
    references: dict[str, tuple[int, str]] = {}
    for key, value in final_call.get("arguments", {}).items():
        if value is None or isinstance(value, bool):
            continue
        for index in reversed(range(len(lookups))):
            path = find_value_path(lookups[index].result, value)
            if path is not None:
                references[key] = (index, path)
                break
    used = sorted({index for index, _ in references.values()})
    number = {index: n for n, index in enumerate(used, start=1)}
    context_values = {value: key for key, value in context.items() if isinstance(value, str)}

    statements = []
    for index in used:
        call = lookups[index]
        defaults = tool_defaults.get(call.name, {})
        args = {}
        for key, value in (call.args or {}).items():
            if key in defaults and defaults[key] == value:
                continue
            args[key] = Ref(f"${context_values[value]}") if isinstance(value, str) and value in context_values else value
        statements.append(_format(call.name, args))
    final_args = {key: (Ref(f"${number[references[key][0]]}{references[key][1]}") if key in references else value)
                  for key, value in final_call.get("arguments", {}).items()}
    statements.append(_format(final_call["name"], final_args))
    return "; ".join(statements)


def _format(name: str, arguments: dict[str, Any]) -> str:
    """Like :func:`student.format.format_call`, with references written bare."""
    parts = [f"{key}={value}" if isinstance(value, Ref) else f"{key}={json.dumps(value, ensure_ascii=False)}"
             for key, value in arguments.items() if value is not None]
    return f"{name}({', '.join(parts)})"


def tool_defaults_of(domain: Any) -> dict[str, dict[str, Any]]:
    """Tool name -> {argument: default} from the domain's lookup tool schemas."""
    defaults: dict[str, dict[str, Any]] = {}
    for tool in domain.tools:
        schema = tool.args_schema.model_json_schema() if hasattr(tool.args_schema, "model_json_schema") else (tool.args_schema or {})
        defaults[tool.name] = {key: spec["default"] for key, spec in schema.get("properties", {}).items() if "default" in spec}
    return defaults


def program_examples(store: Any, ref: str) -> list[dict[str, str]]:
    """Program-mode pairs for the student: the request and context -> the teacher's plan."""
    from dataengine.curate import items_with_reviewed_answers

    dataset = store.dataset(ref)
    traces = [trace for trace, _ in items_with_reviewed_answers(store, dataset) if trace.final_call]
    completions = trace_completions(store, traces, "program", store.domain(dataset.domain))
    return [{"prompt": direct_prompt(trace.input, trace.context), "completion": completions[trace.id]}
            for trace in traces]


def made_up_words(tokenizer: Any, exclude: set[str], min_length: int = 3, max_length: int = 10) -> list[str]:
    """Lower-case whole words of ``tokenizer``'s vocabulary (tokens that start a word) that are
    not in ``exclude``: material for names the student has never seen."""
    words = set()
    for token in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        text = tokenizer.convert_tokens_to_string([token])
        word = text[1:]
        if text.startswith(" ") and word.isascii() and word.isalpha() and word.islower() \
                and min_length <= len(word) <= max_length and word not in exclude:
            words.add(word)
    return sorted(words)


def _like(words: list[str], pattern: str) -> str:
    """``words`` joined, each cased like the word at the same place of ``pattern`` (upper, capitalised, lower)."""
    shapes = pattern.split()
    out = []
    for word, shape in zip(words, shapes):
        if len(shape) > 1 and shape.isupper():
            out.append(word.upper())
        elif shape[:1].isupper():
            out.append(word.capitalize())
        else:
            out.append(word)
    return " ".join(out)


def name_swapped_examples(examples: Sequence[dict[str, str]], domain: Any, words: Sequence[str], copies: int,
                          seed: int = 0) -> list[dict[str, str]]:
    """New program-mode examples in which the names a plan's lookups copy from the request are
    replaced by made-up ones, in the request and the plan alike.

    With a small catalog every train request names the same few songs, artists and cities, and
    a student learns them by heart instead of learning to copy whatever name the request holds;
    names it has never seen then come out truncated, merged or dropped. For each example whose
    lookups take a name (the domain's ``copied_names``) found verbatim, ignoring case, in the
    request — ``search_music(query="hey jude")`` for "play Hey Jude" — ``copies`` new examples,
    each with every such span replaced by as many random ``words``, cased like the original
    (``search_music(query="velvet orbit")`` for "play Velvet Orbit"). Everything else stays. The
    plan is never run: the tools would find nothing, and that is not what these examples teach.
    """
    rng = random.Random(seed)
    names = domain.copied_names
    pool = list(words)
    swapped = []
    for example in examples:
        head, _, request = example["prompt"][: -len(PROMPT_END)].rpartition("\n")
        try:
            statements = parse_program(example["completion"])
        except ProgramError:
            continue
        values = sorted({value for name, args in statements[:-1] for key, value in args.items()
                         if key in names.get(name, ()) and isinstance(value, str) and not isinstance(value, Ref)
                         and value.strip()}, key=len, reverse=True)
        spans = [(value, re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE)) for value in values]
        spans = [(value, pattern) for value, pattern in spans if pattern.search(request)]
        for _ in range(copies if spans else 0):
            new_request, completion = request, example["completion"]
            for value, pattern in spans:
                found = pattern.search(new_request)
                if found is None:  # inside a longer span already replaced
                    continue
                fresh = rng.sample(pool, len(value.split()))
                new_request = new_request[: found.start()] + _like(fresh, found.group()) + new_request[found.end():]
                completion = completion.replace(json.dumps(value, ensure_ascii=False),
                                                json.dumps(_like(fresh, value), ensure_ascii=False))
            prompt = f"{head}\n{new_request}{PROMPT_END}" if head else f"{new_request}{PROMPT_END}"
            swapped.append({"prompt": prompt, "completion": completion})
    return swapped


def with_name_swaps(examples: list[dict[str, str]], domain: Any, tokenizer: Any, copies: int,
                    seed: int = 0) -> list[dict[str, str]]:
    """``examples`` plus :func:`name_swapped_examples` of them, the made-up names drawn from the
    words of ``tokenizer`` (the student's own) that no request of ``examples`` uses, so that no
    made-up name holds a word such as "by" or "playlist" that shapes a request."""
    from supertiny.errors import UserError

    if not domain.copied_names:
        raise UserError(f"--name-swaps: domain {domain.name!r} declares no copied_names (the lookup arguments "
                        "that copy a name from the request); leave --name-swaps at 0")
    used = {word for example in examples for word in re.findall(r"[a-z]+", example["prompt"].lower())}
    words = made_up_words(tokenizer, used)
    if len(words) < 100:
        raise UserError(f"--name-swaps: the student's tokenizer has only {len(words)} whole words that no request "
                        "uses, too few to make up names from; leave --name-swaps at 0")
    return examples + name_swapped_examples(examples, domain, words, copies, seed)


def trace_completions(store: Any, traces: Sequence[Any], format: str, domain: Any) -> dict[int, str]:
    """Trace id -> the student's completion for that trace's answer (leading space): the final
    call in the direct format, or the trace's lookups and call as a program line."""
    from student.format import direct_completion

    if format != "program":
        return {trace.id: direct_completion(trace.final_call) for trace in traces if trace.final_call}
    defaults = tool_defaults_of(domain)
    calls = store.tool_calls_by_trace(trace.id for trace in traces)
    return {trace.id: " " + program_from_trace(calls.get(trace.id, []), trace.final_call, trace.context, defaults)
            for trace in traces if trace.final_call}


def completion_call(raw: str, format: str, domain: Any, context: dict[str, Any] | None) -> dict[str, Any] | None:
    """The call a student's one-line answer stands for: parsed (direct), or its plan run with the
    domain's tools (program); None when it is not a call or the plan does not run."""
    from student.format import parse_call

    if format != "program":
        return parse_call(raw)
    try:
        return run_program(parse_program(raw), domain, context)
    except ProgramError:
        return None


# ---- programs -> calls ----------------------------------------------------------------------


def _split_statements(text: str) -> list[str]:
    """Split on ``;`` outside string literals."""
    statements, current, in_string, escaped = [], [], False, False
    for char in text:
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
        elif char == '"':
            in_string = True
        elif char == ";":
            statements.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def parse_program(text: str) -> list[tuple[str, dict[str, Any]]]:
    """One program line -> [(name, arguments)], references kept as :class:`Ref` strings."""
    line = text.strip().split("\n", 1)[0]
    statements = _split_statements(line)
    if not statements:
        raise ProgramError("empty program")
    parsed = []
    for statement in statements:
        split = split_call(statement)
        if split is None:
            raise ProgramError(f"not a call: {statement!r}")
        name, raw_arguments = split
        arguments: dict[str, Any] = {}
        for key, raw in raw_arguments:
            if raw.startswith("$"):
                if not _REF.match(raw):
                    raise ProgramError(f"bad reference {raw!r} in {statement!r}")
                arguments[key] = Ref(raw)
            else:
                try:
                    arguments[key] = decode_value(raw)
                except ValueError as exc:
                    raise ProgramError(str(exc)) from None
        parsed.append((name, arguments))
    return parsed


def _resolve(ref: Ref, results: list[Any], context: dict[str, Any]) -> Any:
    match = _REF.match(ref)
    if match.group(3) is not None:
        if match.group(3) not in context:
            raise ProgramError(f"{ref}: the request's context has no {match.group(3)!r}")
        return context[match.group(3)]
    n = int(match.group(1))
    if not 1 <= n <= len(results):
        raise ProgramError(f"{ref}: there is no statement {n} before it")
    value = results[n - 1]
    for index, key in _STEP.findall(match.group(2)):
        try:
            value = value[int(index)] if index else value[key]
        except (IndexError, KeyError, TypeError):
            raise ProgramError(f"{ref}: result {n} has nothing at {match.group(2)}") from None
    return value


def run_program(program: list[tuple[str, dict[str, Any]]], domain: Any,
                context: dict[str, Any] | None) -> dict[str, Any]:
    """Run the lookups with the domain's tools and return the final action call.

    Every statement but the last must be a lookup tool, the last an action. A tool that fails
    (unknown room, bad arguments) raises :class:`ProgramError`: the answer is wrong, as when the
    teacher gives up.
    """
    context = context or {}
    tools = {tool.name: tool for tool in domain.tools}
    *lookups, (final_name, final_args) = program
    results: list[Any] = []
    for name, arguments in lookups:
        if name not in tools:
            raise ProgramError(f"{name} is not a lookup tool of domain {domain.name!r}")
        args = {k: _resolve(v, results, context) if isinstance(v, Ref) else v for k, v in arguments.items()}
        try:
            result = tools[name].invoke(args)
        except Exception as exc:  # a tool's own error: the plan was wrong
            raise ProgramError(f"{name}: {exc}") from None
        # Paths were learned on results as stored (JSON), so read them as JSON here too.
        results.append(json.loads(json.dumps(result, default=str)))
    actions = {tool.name: tool for tool in domain.actions}
    if final_name not in actions:
        raise ProgramError(f"the last statement must call an action of domain {domain.name!r}, not {final_name}")
    args = {k: _resolve(v, results, context) if isinstance(v, Ref) else v for k, v in final_args.items()}
    args = {k: v for k, v in args.items() if v is not None}
    for key, value in final_args.items():
        if isinstance(value, Ref):
            _check_kind(key, value, results, [tools[name] for name, _ in lookups])
    _check_arguments(actions[final_name], args)
    return {"name": final_name, "arguments": args}


def _check_kind(key: str, ref: Ref, results: list[Any], lookups: list[Any]) -> None:
    """A lookup that labels what it found decides which argument its ``name`` fills.

    ``search_music`` returns items like ``{"kind": "artist", "name": "Queen"}`` and takes a
    ``kind`` among song/artist/playlist. ``play_music(song=$1[0].name)`` on an artist is a wrong
    plan, as it would be for the teacher reading that result, so it fails here and the student
    samples another. Only arguments named after one of the tool's kinds are checked.
    """
    match = _REF.match(ref)
    if match.group(1) is None or not match.group(2).endswith(".name"):
        return
    n = int(match.group(1))
    kind_field = lookups[n - 1].args_schema.model_fields.get("kind")
    kinds = set(get_args(kind_field.annotation)) if kind_field is not None else set()
    if key not in kinds:
        return
    item = _resolve(Ref(ref[: -len(".name")]), results, {})
    if isinstance(item, dict) and item.get("kind") in kinds and item["kind"] != key:
        raise ProgramError(f"{key}={ref} is {item['name']!r} of kind {item['kind']!r}, not {key!r}")


def _check_arguments(action: Any, args: dict[str, Any]) -> None:
    """The action's own schema decides: unknown or ill-typed arguments make the plan wrong."""
    from pydantic import ValidationError

    schema = action.args_schema
    unknown = sorted(set(args) - set(schema.model_fields))
    if unknown:
        raise ProgramError(f"{action.name} has no argument {', '.join(unknown)}")
    try:
        schema.model_validate(args)
    except ValidationError as exc:
        raise ProgramError(f"{action.name}: {exc.errors()[0]['msg']}") from None
