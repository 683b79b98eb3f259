"""LLM-as-judge: an OpenAI-compatible model grades each trace's answer against a rubric.

The judge sees the request, its context, the steps the teacher took (tool calls and results),
the final action call and the domain's action schemas; it is asked for one JSON object
``{"score": 1..5, "rationale": "..."}``. The score is stored as scorer ``judge`` (or another
name, to keep several judges side by side) with value ``(score - 1) / 4`` in [0, 1]; details
hold the raw score, the rationale, the model asked and the model the endpoint reported, and
the provenance (model, endpoint, temperature, rubric source and hash).

The rubric is the grading criteria only: a built-in one per task kind (the domain: ``home``,
``units``, or a generic one), or any text file (``--rubric FILE``). The reply format is added
by this module, so a custom rubric cannot break parsing.

A reply that cannot be parsed, or a request that fails for that trace (a 500 after retries, a
timeout), is stored as a *failed* judgement: value 0, ``details.failed = true``, the error and
the raw reply. Re-running judges failed and missing traces again and skips the ones already
judged under the same provenance (``force`` re-judges everything). A wrong key, an unknown
model or an unreachable endpoint stops the run with one line: every other call would fail too.
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from dataengine.provenance import text_sha256, with_provenance
from dataengine.schema import ToolCallRow, TraceRow
from dataengine.store import Store
from supertiny.errors import UserError

JUDGE_SCORER = "judge"
JUDGE_VERSION = "1"
SCALE = (1, 5)  # what the judge is asked for; stored values are rescaled to [0, 1]
RESULT_CHARS = 400  # a tool result longer than this is cut in the judge's prompt
RAW_CHARS = 4000  # how much of an unparseable reply is kept

REPLY_FORMAT = f"""Reply with exactly one JSON object and nothing else:
{{"score": <integer from {SCALE[0]} to {SCALE[1]}>, "rationale": "<one or two sentences: why this score>"}}"""

DEFAULT_RUBRICS = {
    "home": """You grade the final action of a smart-home voice assistant.
The assistant turned a spoken request into one action call, after looking up canonical values
with tools. Judge only the final action call, using the tool results as evidence:
- the action function is the one the user asked for;
- every argument is canonical and right: device ids from find_device, titles, artists and
  playlists from search_music, cities from find_city, times resolved from the context's `now`,
  durations in ISO 8601;
- nothing the user did not ask for (for example an artist they never named), nothing missing.
5 = exactly what the user asked; 4 = right, with a harmless extra or missing optional argument;
3 = partly right; 2 = an argument wrong enough to change the outcome; 1 = wrong action or no
useful answer.""",
    "units": """You grade the answer to a multi-step arithmetic and unit-conversion word problem.
Recompute the problem yourself, step by step, before you grade. The answer is a submit_answer
call with a value and a unit:
- the value is right to within 0.1 %;
- the unit is the one the question asks for;
- the value is physically possible.
5 = right value in the asked unit; 3 = right quantity in another unit, or a small rounding
slip; 1 = wrong value or no answer.""",
    "default": """You grade the final answer of a tool-using assistant: one call of an action function.
Judge whether the call does what the user asked, with arguments that are correct, complete and
supported by the tool results, and nothing the user did not ask for.
5 = exactly right; 4 = right with a harmless imperfection; 3 = partly right; 2 = mostly wrong;
1 = wrong or no useful answer.""",
}


class JudgeReplyError(ValueError):
    """What a judge wrote could not be read as a score."""


@dataclass(frozen=True)
class Rubric:
    text: str
    source: str  # "built-in:home" or the file it was read from

    @property
    def sha256(self) -> str:
        return text_sha256(self.text)


def load_rubric(path: str | Path | None, domain: str) -> Rubric:
    """The rubric in ``path``, or the built-in one for the domain (task kind)."""
    if path is None:
        kind = domain if domain in DEFAULT_RUBRICS else "default"
        return Rubric(DEFAULT_RUBRICS[kind], f"built-in:{kind}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: rubric file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: rubric is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise UserError(f"{path}: rubric is empty: write the grading criteria in it")
    return Rubric(text.strip(), str(path.resolve()))


# ---- what the judge reads -------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


def describe_actions(domain: Any) -> str:
    """One line per action function: its name, description and JSON-schema parameters."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    lines = []
    for tool in domain.actions:
        function = convert_to_openai_tool(tool)["function"]
        parameters = json.dumps(function.get("parameters", {}).get("properties", {}), ensure_ascii=False)
        lines.append(f"- {function['name']}: {function.get('description', '').strip()} Parameters: {parameters}")
    return "\n".join(lines)


def judge_request(trace: TraceRow, tool_calls: list[ToolCallRow], actions: str) -> str:
    """The user message of one judgement: the trace as plain text."""
    context = " ".join(f"{key}={value}" for key, value in (trace.context or {}).items()) or "(none)"
    steps = []
    for number, call in enumerate(tool_calls, start=1):
        outcome = f"error: {call.error}" if call.error else json.dumps(call.result, ensure_ascii=False)
        steps.append(f"{number}. {call.name}({json.dumps(call.args, ensure_ascii=False)}) -> {_clip(outcome, RESULT_CHARS)}")
    final = trace.final_call
    answer = f"{final['name']}({json.dumps(final.get('arguments') or {}, ensure_ascii=False)})" if final else "(no action)"
    return (f"Request: {trace.input}\nContext: {context}\n\nSteps:\n" + ("\n".join(steps) or "(no tool calls)")
            + f"\n\nFinal action call: {answer}\n\nAction functions available:\n{actions}")


# ---- reading the judge's reply ----------------------------------------------------------------------

_SCORE_KEYS = ("score", "rating", "grade")
_RATIONALE_KEYS = ("rationale", "reason", "reasoning", "explanation", "justification")
# "Score: 4", "score = 4/5", '"rating": "4"' — for judges that ignore the JSON instruction
_SCORE_TEXT = re.compile(r"\b(?:score|rating|grade)\b\W{0,3}[:=]\s*\"?(\d+(?:\.\d+)?)", re.IGNORECASE)


def _json_objects(text: str) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``text`` (prose and code fences around them are skipped), and the
    objects nested in them, outermost first."""
    decoder = json.JSONDecoder()
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("{", position + 1)
            continue
        pending = [value]
        while pending:
            item = pending.pop(0)
            if isinstance(item, dict):
                yield item
                pending.extend(v for v in item.values() if isinstance(v, dict))
        position = text.find("{", end)


def _as_score(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*\d+)?\s*", value)
        return float(match.group(1)) if match else None
    return None


def parse_judgement(text: str) -> tuple[float, str]:
    """``(score, rationale)`` from a judge's reply; :class:`JudgeReplyError` says why not."""
    if not text or not text.strip():
        raise JudgeReplyError("empty reply")
    score, rationale = None, ""
    for obj in _json_objects(text):
        keys = {key.lower(): key for key in obj}
        found = next((keys[k] for k in _SCORE_KEYS if k in keys), None)
        if found is not None:
            score = _as_score(obj[found])
            if score is None:
                raise JudgeReplyError(f"the score {obj[found]!r} is not a number")
            rationale = next((str(obj[keys[k]]) for k in _RATIONALE_KEYS if k in keys), "")
            break
    if score is None:
        match = _SCORE_TEXT.search(text)
        if match is None:
            raise JudgeReplyError("no score in the reply (expected JSON with a \"score\" key)")
        score, rationale = float(match.group(1)), text.strip()
    if not SCALE[0] <= score <= SCALE[1]:
        raise JudgeReplyError(f"score {score:g} is outside {SCALE[0]}..{SCALE[1]}")
    return (int(score) if score.is_integer() else score), rationale


# ---- judging traces ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeEndpoint:
    """Which model judges, and how it is called (the API key is used, never stored)."""

    model: str  # openai:<model>
    base_url: str | None = None
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = 512
    timeout: float = 60.0
    max_retries: int = 2

    def resolved_base_url(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"


def _text_of(content: Any) -> str:
    """An AI message's content as text (some endpoints send a list of parts)."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content or [])


def judge_traces(store: Store, endpoint: JudgeEndpoint, *, domain: str, split: str | None = None,
                 job_id: int | None = None, limit: int | None = None, rubric_file: str | Path | None = None,
                 scorer: str = JUDGE_SCORER, concurrency: int = 4, force: bool = False,
                 on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Judge every trace of ``domain`` (optionally one split or job) that has an answer.

    Returns counts: judged, failed (stored as failed judgements), skipped (already judged under
    the same provenance), no_answer (traces without a final call, not sent), mean_value."""
    import openai
    from langchain_core.messages import HumanMessage, SystemMessage

    from agent.backends import make_chat_model

    if not endpoint.model.startswith("openai:"):
        raise UserError(f"--model {endpoint.model!r}: the judge needs an endpoint, use openai:<model>")
    if concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, not {concurrency}")
    verifier = store.domain(domain)
    rubric = load_rubric(rubric_file, verifier.name)
    chat = make_chat_model(endpoint.model, domain=verifier, temperature=endpoint.temperature,
                           base_url=endpoint.base_url, api_key=endpoint.api_key, max_tokens=endpoint.max_tokens,
                           timeout=endpoint.timeout, max_retries=endpoint.max_retries)
    config = {"model": endpoint.model, "base_url": endpoint.resolved_base_url(), "temperature": endpoint.temperature,
              "max_tokens": endpoint.max_tokens, "rubric": rubric.source, "rubric_sha256": rubric.sha256,
              "scale": list(SCALE), "domain": verifier.name}
    system = f"{rubric.text}\n\n{REPLY_FORMAT}"
    actions = describe_actions(verifier)

    traces = store.traces(domain=verifier.name, split=split, job_id=job_id)
    answered = [t for t in traces if t.final_call is not None]
    previous = {} if force else store.score_rows(scorer)
    expected = with_provenance({}, scorer, JUDGE_VERSION, config)["provenance"]

    def already_judged(trace: TraceRow) -> bool:
        row = previous.get(trace.id)
        return row is not None and not row.details.get("failed") and row.details.get("provenance") == expected

    todo = [t for t in answered if not already_judged(t)][:limit]
    fatal_errors = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
                    openai.APIConnectionError)
    tool_calls = store.tool_calls_by_trace(t.id for t in todo)

    def judge_one(trace: TraceRow) -> tuple[float, dict[str, Any]]:
        details: dict[str, Any] = {"model": endpoint.model}
        try:
            reply = chat.invoke([SystemMessage(system), HumanMessage(judge_request(trace, tool_calls[trace.id], actions))])
        except openai.APITimeoutError as exc:  # before APIConnectionError, its parent: one slow answer is not fatal
            return 0.0, {**details, "failed": True, "error": f"timeout: {exc}", "raw": None}
        except fatal_errors:
            raise  # every other trace would fail the same way: judge_traces stops
        except Exception as exc:  # a 500 after retries, a body that is not a completion: only this one failed
            return 0.0, {**details, "failed": True, "error": " ".join(f"{type(exc).__name__}: {exc}".split()),
                         "raw": None}
        raw = _text_of(reply.content)
        details["reported_model"] = reply.response_metadata.get("model_name")
        try:
            score, rationale = parse_judgement(raw)
        except JudgeReplyError as exc:
            return 0.0, {**details, "failed": True, "error": str(exc), "raw": raw[:RAW_CHARS]}
        value = (score - SCALE[0]) / (SCALE[1] - SCALE[0])
        return value, {**details, "score": score, "rationale": rationale}

    counts = {"judged": 0, "failed": 0, "skipped": sum(already_judged(t) for t in answered),
              "no_answer": len(traces) - len(answered)}
    values = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(judge_one, trace): trace for trace in todo}
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                value, details = future.result()
                store.set_scores([(futures[future].id, scorer, value,
                                   with_provenance(details, scorer, JUDGE_VERSION, config))])
                if details.get("failed"):
                    counts["failed"] += 1
                else:
                    counts["judged"] += 1
                    values.append(value)
                if on_progress:
                    on_progress(done, len(todo))
        except fatal_errors as exc:
            pool.shutdown(cancel_futures=True)
            message = " ".join(str(exc).split())
            raise UserError(f"judge endpoint {config['base_url']} ({endpoint.model}): {type(exc).__name__}: "
                            f"{message}; judgements made so far are stored") from None
    counts["mean_value"] = round(sum(values) / len(values), 4) if values else None
    return counts
