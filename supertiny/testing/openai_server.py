"""A real OpenAI-compatible chat-completions server on 127.0.0.1 that answers from a script.

Tests and benches point a real client (``openai.OpenAI``, langchain ``ChatOpenAI``, the
``supertiny`` CLI) at it over real HTTP, so everything between our code and the wire is
exercised: request payloads, retries, streaming, tool-call parsing, token usage, logprobs.
Only the model's *decisions* are scripted::

    with ScriptedOpenAIServer([
        {"tool_calls": [{"name": "find_device", "arguments": {"room": "kitchen", "device_type": "lights"}}]},
        {"tool_calls": [{"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}]},
    ], api_key="k") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k")
        ...
        server.requests      # every JSON body POSTed to /v1/chat/completions, in arrival order
        server.remaining     # script steps not used yet

Endpoints
---------
``POST /v1/chat/completions`` and ``GET /v1/models`` (``/chat/completions`` and ``/models``
without the ``/v1`` prefix work too). Requests are checked like OpenAI checks them (a model,
non-empty messages with known roles, every assistant ``tool_calls`` answered by the ``tool``
messages right after it, ``top_logprobs`` only with ``logprobs``); a bad request gets a 400
with an OpenAI-style error body and does not use a script step. With ``api_key=...`` a
request without ``Authorization: Bearer <api_key>`` gets a 401 (``code: invalid_api_key``).

The script
----------
``script`` is a list of *steps*, one used per chat-completions request, in order; or a callable
``responder(request_body) -> step`` for stateful scripts (it may inspect ``messages``, e.g. to
answer differently after a tool error). When a list runs out, the server answers 500 with
"script exhausted", so a test that makes more calls than it scripted fails loudly instead of
hanging. Script problems (exhausted, a malformed step, a step that contradicts the request)
are also appended to ``server.script_errors``.

A step is a dict. A *completion* step (HTTP 200, a real completion) has:

``content``        assistant text.
``tool_calls``     ``[{"name": ..., "arguments": {...} or "raw string", "id": optional}, ...]``.
                   Dict arguments are JSON-encoded; a string is sent verbatim, so malformed JSON
                   (``"{not json"``) reaches the client as is. Tool names are not checked
                   against the request's ``tools``: unknown names are a legitimate fault.
``finish_reason``  default ``"tool_calls"`` when there are tool calls, else ``"stop"``;
                   ``"length"`` when the request's ``max_completion_tokens``/``max_tokens``
                   cut the completion (text and arguments are cut at that token, so a cut
                   tool call carries truncated JSON, as from a real server).
``model``          the model name reported (default: the request's ``model``).
``usage``          overrides for ``prompt_tokens`` / ``completion_tokens`` (default: counted,
                   see below); ``total_tokens`` is always their sum.

A completion step must contain ``content`` or ``tool_calls``. It must agree with the request:
``tool_choice="none"`` (or no ``tools``) forbids tool calls, ``"required"`` demands one, a named
function forces that name, ``parallel_tool_calls=false`` allows at most one call; a step that
disagrees gets a 500 "script conflict" (a test bug, not a model behaviour).

Other steps:

``{"status": 500, "body": "message"}``   an HTTP error with an OpenAI-style error body; ``body``
                                         may be a dict, sent as JSON verbatim. 429 defaults to a
                                         short ``retry_after``.
``{"raw": "garbage", "status": 200, "content_type": "application/json"}``
                                         these bytes as the body (status and type optional).
``{"disconnect": True}``                 close the connection without answering.

Keys that combine with any step: ``delay`` (seconds to wait before answering, for timeouts and
latency benches), ``chunk_delay`` (seconds between stream chunks), ``headers`` (extra response
headers), ``retry_after`` (seconds; sent as ``retry-after-ms`` and ``Retry-After``, which the
openai client honours between retries).

What a completion carries
-------------------------
Tokens are counted deterministically: :func:`count_tokens` splits text into words and single
punctuation marks. ``prompt_tokens`` counts the JSON of the request's ``messages`` and ``tools``
(:func:`prompt_tokens`); ``completion_tokens`` counts the generated content, then each tool
call's name and arguments. With ``logprobs: true`` every generated token (tool calls included,
as vLLM reports them) gets an entry ``{token, logprob, bytes, top_logprobs}``; the sampled token
is the most likely one and ``top_logprobs - 1`` alternatives ``<alt1>``, ``<alt2>``, ... follow,
each one nat less likely. Logprob values depend only on the token's position.

With ``stream: true`` the answer is Server-Sent Events: a role chunk, one chunk per content
token, per tool call a chunk with its id and name and then its arguments one token per chunk,
a final chunk with ``finish_reason``, a usage chunk with empty ``choices`` when
``stream_options.include_usage`` is set, then ``data: [DONE]``. Stream chunks carry the logprobs
of their own tokens. Joined, a stream says exactly what the non-stream answer says.

Request fields the server does not act on (``temperature``, ``seed``, ``stop``, ``n``, ...) are
still in ``server.requests`` for tests to assert. One choice per completion.

Shutdown: ``close()`` (or leaving the ``with`` block) stops accepting, drops open keep-alive
connections, cuts short any ``delay`` in progress, and joins every thread. No global state:
servers are independent and each binds its own free port.
"""
from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Sequence

Step = dict[str, Any]
Responder = Callable[[dict[str, Any]], Step]

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
MESSAGE_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
COMPLETION_KEYS = {"content", "tool_calls", "finish_reason", "model", "usage"}
COMMON_KEYS = {"delay", "chunk_delay", "headers", "retry_after"}
ERROR_KEYS = {"status", "body", "raw", "content_type", "disconnect"}
TOOL_CALL_KEYS = {"name", "arguments", "id"}
# OpenAI's error "type" and "code" per status, so clients map errors to the right exception.
ERROR_KINDS = {
    400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None), 404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None), 503: ("server_error", None),
}
DEFAULT_429_RETRY_AFTER = 0.01  # seconds: clients retry at once, so tests stay fast


def count_tokens(text: str) -> int:
    """Deterministic token count: words and single punctuation marks."""
    return len(TOKEN_PATTERN.findall(text))


def prompt_tokens(body: dict[str, Any]) -> int:
    """The ``prompt_tokens`` the server reports for a chat-completions request body."""
    text = json.dumps(body.get("messages", []), sort_keys=True, ensure_ascii=False)
    if body.get("tools"):
        text += json.dumps(body["tools"], sort_keys=True, ensure_ascii=False)
    return count_tokens(text)


class ScriptError(ValueError):
    """A script step the server cannot play: shown to the client as a 500, and raised early
    by the constructor for list scripts."""


def check_step(step: Any) -> Step:
    """``step`` if it is well formed, else :class:`ScriptError` saying what is wrong."""
    if not isinstance(step, dict):
        raise ScriptError(f"a step must be a dict, not {type(step).__name__}: {step!r}")
    unknown = set(step) - COMPLETION_KEYS - COMMON_KEYS - ERROR_KEYS
    if unknown:
        raise ScriptError(f"unknown step keys {sorted(unknown)} in {step!r}")
    is_completion = bool(set(step) & COMPLETION_KEYS)
    is_other = bool(set(step) & ERROR_KEYS)
    if is_completion == is_other:
        raise ScriptError(f"a step needs content/tool_calls, or status/raw/disconnect (not both): {step!r}")
    if is_completion and "content" not in step and "tool_calls" not in step:
        raise ScriptError(f"a completion step needs 'content' or 'tool_calls': {step!r}")
    if is_other and "status" not in step and "raw" not in step and not step.get("disconnect"):
        raise ScriptError(f"an error step needs 'status', 'raw' or 'disconnect': {step!r}")
    if "status" in step and not (isinstance(step["status"], int) and 100 <= step["status"] <= 599):
        raise ScriptError(f"'status' must be an HTTP status code: {step!r}")
    if "raw" not in step and step.get("status", 400) < 400:
        raise ScriptError(f"a status below 400 needs a 'raw' body (a completion step answers 200): {step!r}")
    if "content" in step and not isinstance(step["content"], str):
        raise ScriptError(f"'content' must be a string: {step!r}")
    for call in step.get("tool_calls") or []:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or set(call) - TOOL_CALL_KEYS:
            raise ScriptError(f"a tool call is {{'name': str, 'arguments': dict or str, 'id': optional}}: {call!r}")
        if not isinstance(call.get("arguments", {}), (dict, str)):
            raise ScriptError(f"tool call arguments must be a dict or a string: {call!r}")
    for key in ("delay", "chunk_delay", "retry_after"):
        if key in step and not (isinstance(step[key], (int, float)) and step[key] >= 0):
            raise ScriptError(f"{key!r} must be a number of seconds >= 0: {step!r}")
    return step


def check_request(body: Any) -> str | None:
    """Why OpenAI would reject this chat-completions body (400), or None."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in MESSAGE_ROLES:
            return f"messages[{position}]: 'role' must be one of {sorted(MESSAGE_ROLES)}"
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and t.get("type") == "function" and isinstance((t.get("function") or {}).get("name"), str)
                for t in tools):
            return "'tools' must be a list of {'type': 'function', 'function': {'name': ...}}"
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None:
        if not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            return "'top_logprobs' must be an integer between 0 and 20"
        if not body.get("logprobs"):
            return "Invalid value for 'top_logprobs': 'logprobs' must be set to true"
    return _check_tool_call_pairing(messages)


def _check_tool_call_pairing(messages: list[dict[str, Any]]) -> str | None:
    """OpenAI's rule: an assistant message's tool calls are each answered by the tool messages
    that directly follow it, and a tool message answers such a call."""
    open_ids: set[str] | None = None  # tool calls of the last assistant message not yet answered
    block_ids: set[str] = set()
    for position, message in enumerate(messages):
        if message["role"] == "tool":
            if open_ids is None or message.get("tool_call_id") not in block_ids:
                return (f"messages[{position}]: messages with role 'tool' must be a response to a preceding "
                        f"message with 'tool_calls' (tool_call_id {message.get('tool_call_id')!r})")
            open_ids.discard(message["tool_call_id"])
            continue
        if open_ids:
            return _unanswered(open_ids)
        open_ids = None
        if message["role"] == "assistant" and message.get("tool_calls"):
            block_ids = {call.get("id") for call in message["tool_calls"]}
            open_ids = set(block_ids)
    return _unanswered(open_ids) if open_ids else None


def _unanswered(ids: set[str]) -> str:
    return ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(sorted(ids))}")


def script_conflict(step: Step, body: dict[str, Any]) -> str | None:
    """Why a completion step contradicts what the request allows, or None."""
    calls = step.get("tool_calls") or []
    choice = body.get("tool_choice")
    if calls and not body.get("tools"):
        return "the step calls tools but the request offered no tools"
    if calls and choice == "none":
        return "the step calls tools but the request says tool_choice='none'"
    if not calls and choice == "required":
        return "the step calls no tool but the request says tool_choice='required'"
    if isinstance(choice, dict):
        forced = (choice.get("function") or {}).get("name")
        if not calls or any(call["name"] != forced for call in calls):
            return f"the request forces tool {forced!r} but the step calls {[c['name'] for c in calls]}"
    if body.get("parallel_tool_calls") is False and len(calls) > 1:
        return f"the request says parallel_tool_calls=false but the step makes {len(calls)} calls"
    return None


# ---- building a completion ------------------------------------------------------------------


def _pieces(text: str) -> list[tuple[str, list[str]]]:
    """``text`` cut into pieces of one token each (leading whitespace attached, trailing
    whitespace on the last piece); joined, the pieces are ``text`` again."""
    matches = list(TOKEN_PATTERN.finditer(text))
    if not matches:
        return [(text, [])] if text else []
    pieces, start = [], 0
    for index, match in enumerate(matches):
        end = len(text) if index == len(matches) - 1 else match.end()
        pieces.append((text[start:end], [match.group()]))
        start = end
    return pieces


def _logprob_entry(token: str, position: int, top_n: int) -> dict[str, Any]:
    logprob = -round(0.01 + 0.1 * (position % 7), 5)  # varies with position, never 0, always the top choice
    top = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
    for rank in range(1, top_n):
        alt = f"<alt{rank}>"
        top.append({"token": alt, "logprob": round(logprob - rank, 5), "bytes": list(alt.encode())})
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top[:top_n]}


@dataclass
class Completion:
    """One scripted completion, cut to the request's token limit, ready to send either way."""

    content: str | None
    tool_calls: list[dict[str, Any]]  # OpenAI wire format
    finish_reason: str
    model: str
    usage: dict[str, int]
    logprobs: list[dict[str, Any]] | None  # None when the request did not ask
    deltas: list[tuple[dict[str, Any], list[dict[str, Any]]]] = field(default_factory=list)  # stream: delta, its logprobs


def build_completion(step: Step, body: dict[str, Any], call_id_prefix: str) -> Completion:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    budget = limit if isinstance(limit, int) and limit > 0 else None
    want_logprobs = bool(body.get("logprobs"))
    top_n = body.get("top_logprobs") or 0
    tokens: list[str] = []
    deltas: list[tuple[dict[str, Any], list[str]]] = []
    truncated = False

    def fits(piece_tokens: list[str]) -> bool:
        return budget is None or len(tokens) + len(piece_tokens) <= budget

    content_parts: list[str] = []
    for piece, piece_tokens in _pieces(step.get("content", "")):
        if not fits(piece_tokens):
            truncated = True
            break
        content_parts.append(piece)
        tokens += piece_tokens
        deltas.append(({"content": piece}, piece_tokens))

    tool_calls: list[dict[str, Any]] = []
    for index, call in enumerate(step.get("tool_calls") or []):
        if truncated:
            break
        arguments = call.get("arguments", {})
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        name_tokens = TOKEN_PATTERN.findall(call["name"])
        if not fits(name_tokens):  # a call whose name is cut is never emitted
            truncated = True
            break
        call_id = call.get("id") or f"{call_id_prefix}_{index}"
        tokens += name_tokens
        deltas.append(({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                        "function": {"name": call["name"], "arguments": ""}}]}, name_tokens))
        sent_arguments = ""
        for piece, piece_tokens in _pieces(arguments):
            if not fits(piece_tokens):
                truncated = True
                break
            sent_arguments += piece
            tokens += piece_tokens
            deltas.append(({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, piece_tokens))
        tool_calls.append({"id": call_id, "type": "function",
                           "function": {"name": call["name"], "arguments": sent_arguments}})

    finish_reason = "length" if truncated else step.get("finish_reason") or ("tool_calls" if tool_calls else "stop")
    entries = [_logprob_entry(token, position, top_n) for position, token in enumerate(tokens)]
    stream_deltas, position = [], 0
    for delta, delta_tokens in deltas:
        stream_deltas.append((delta, entries[position:position + len(delta_tokens)]))
        position += len(delta_tokens)
    usage = {"prompt_tokens": prompt_tokens(body), "completion_tokens": len(tokens), **(step.get("usage") or {})}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    content = "".join(content_parts)
    return Completion(
        content=content if content or not tool_calls else None,
        tool_calls=tool_calls, finish_reason=finish_reason, model=step.get("model") or body["model"], usage=usage,
        logprobs=entries if want_logprobs else None,
        deltas=[(delta, lp if want_logprobs else None) for delta, lp in stream_deltas],
    )


def completion_body(completion: Completion, completion_id: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": completion.content, "refusal": None}
    if completion.tool_calls:
        message["tool_calls"] = completion.tool_calls
    logprobs = None if completion.logprobs is None else {"content": completion.logprobs, "refusal": None}
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": completion.model,
            "system_fingerprint": "fp_scripted",
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": completion.finish_reason}],
            "usage": completion.usage}


def stream_chunks(completion: Completion, completion_id: str, created: int, include_usage: bool) -> Iterator[dict]:
    def chunk(delta: dict, logprobs: list | None = None, finish_reason: str | None = None) -> dict:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": completion.model, "system_fingerprint": "fp_scripted",
                "choices": [{"index": 0, "delta": delta,
                             "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                             "finish_reason": finish_reason}]}
        if include_usage:
            body["usage"] = None
        return body

    yield chunk({"role": "assistant", "content": ""})
    for delta, logprobs in completion.deltas:
        yield chunk(delta, logprobs)
    yield chunk({}, finish_reason=completion.finish_reason)
    if include_usage:
        yield {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": completion.model,
               "system_fingerprint": "fp_scripted", "choices": [], "usage": completion.usage}


def error_body(status: int, message: str) -> dict[str, Any]:
    kind, code = ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# ---- the HTTP side ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do; streams use chunked encoding
    timeout = 30  # an idle keep-alive connection is dropped after this many seconds
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # tests read .requests, not stderr
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        if not self._authorized():
            return
        if self._route() == "/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "supertiny"} for model in owner.models]})
        else:
            self._send_json(404, error_body(404, f"no route GET {self.path}"))

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self._route() != "/chat/completions":
            self._send_json(404, error_body(404, f"no route POST {self.path}"))
            return
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._send_json(400, error_body(400, f"the request body is not valid JSON: {exc}"))
            return
        request_number = owner._record(body)
        if not self._authorized():
            return
        problem = check_request(body)
        if problem:
            self._send_json(400, error_body(400, problem))
            return
        try:
            step = owner._next_step(body)
        except ScriptError as exc:
            owner.script_errors.append(f"request {request_number}: {exc}")
            self._send_json(500, error_body(500, f"ScriptedOpenAIServer: {exc}"))
            return
        if step.get("delay") and owner._closing.wait(step["delay"]):
            self._drop_connection()
            return
        self._play(step, body, request_number)

    def _play(self, step: Step, body: dict[str, Any], request_number: int) -> None:
        owner = self.server.owner
        headers = dict(step.get("headers") or {})
        retry_after = step.get("retry_after", DEFAULT_429_RETRY_AFTER if step.get("status") == 429 else None)
        if retry_after is not None:
            headers.setdefault("retry-after-ms", str(int(retry_after * 1000)))
            headers.setdefault("Retry-After", str(max(0, round(retry_after))))
        if step.get("disconnect"):
            self._drop_connection()
        elif "raw" in step:
            raw = step["raw"] if isinstance(step["raw"], bytes) else str(step["raw"]).encode()
            self._send_bytes(step.get("status", 200), raw, step.get("content_type", "application/json"), headers)
        elif "status" in step:
            payload = step.get("body")
            if not isinstance(payload, dict):
                payload = error_body(step["status"], payload or f"scripted HTTP {step['status']}")
            self._send_json(step["status"], payload, headers)
        else:
            conflict = script_conflict(step, body)
            if conflict:
                owner.script_errors.append(f"request {request_number}: script conflict: {conflict}")
                self._send_json(500, error_body(500, f"ScriptedOpenAIServer: script conflict: {conflict}"))
                return
            completion = build_completion(step, body, call_id_prefix=f"call_{request_number}")
            completion_id, created = f"chatcmpl-scripted-{request_number}", int(time.time())
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                self._send_stream(stream_chunks(completion, completion_id, created, include_usage),
                                  step.get("chunk_delay", 0), headers)
            else:
                self._send_json(200, completion_body(completion, completion_id, created), headers)

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        return path[len("/v1"):] if path.startswith("/v1/") else path

    def _authorized(self) -> bool:
        key = self.server.owner.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        self._send_json(401, error_body(401, f"Incorrect API key provided: {given[:4]!r}..."))
        return False

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json", headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_stream(self, chunks: Iterator[dict], chunk_delay: float, headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.end_headers()
        events = [f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n" for chunk in chunks] + ["data: [DONE]\n\n"]
        for number, event in enumerate(events):
            if number and chunk_delay and self.server.owner._closing.wait(chunk_delay):
                self._drop_connection()
                return
            data = event.encode()
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop_connection(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads: a clean shutdown
    request_queue_size = 128  # listen backlog: a burst of concurrent clients must not be reset (default 5)
    block_on_close = True

    def __init__(self, owner: "ScriptedOpenAIServer", host: str, port: int):
        self.owner = owner
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def process_request(self, request, client_address) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # Clients hang up mid-answer on purpose (timeouts, retries, close()): not an error here.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class ScriptedOpenAIServer:
    """An OpenAI-compatible chat-completions server on ``host`` answering from ``script``
    (see the module docstring for the step format). Use as a context manager, or call
    :meth:`start` and :meth:`close`."""

    def __init__(self, script: Sequence[Step] | Responder = (), *, api_key: str | None = None,
                 models: Sequence[str] = ("test-model",), host: str = "127.0.0.1", port: int = 0):
        if callable(script):
            self._responder: Responder | None = script
            self._steps: list[Step] = []
        else:
            self._responder = None
            self._steps = [check_step(step) for step in script]
        self.api_key = api_key
        self.models = list(models)
        self.requests: list[dict[str, Any]] = []  # every chat-completions JSON body, in arrival order
        self.script_errors: list[str] = []
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    def start(self) -> "ScriptedOpenAIServer":
        if self._httpd is None:
            self._httpd = _HTTPServer(self, self._host, self._port)
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"scripted-openai-{self.port}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is None or self._closing.is_set():
            return
        self._closing.set()  # cuts short any delay in progress
        self._httpd.shutdown()
        with self._httpd.connections_lock:
            connections = list(self._httpd.open_connections)
        for connection in connections:  # idle keep-alive connections would hold their threads
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()  # joins handler threads
        self._thread.join()

    def __enter__(self) -> "ScriptedOpenAIServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---- what clients and tests see ----

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started: use it as a context manager or call start()")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What OpenAI clients take as ``base_url``."""
        return f"{self.url}/v1"

    @property
    def remaining(self) -> int:
        """Script steps not used yet (0 for a responder)."""
        with self._lock:
            return len(self._steps)

    def add(self, *steps: Step) -> None:
        """Append steps to a list script (a long-running bench server can be fed per phase)."""
        if self._responder is not None:
            raise ScriptError("this server answers from a responder, not a list of steps")
        checked = [check_step(step) for step in steps]
        with self._lock:
            self._steps.extend(checked)

    # ---- used by the handler threads ----

    def _record(self, body: Any) -> int:
        with self._lock:
            self.requests.append(body)
            return len(self.requests)

    def _next_step(self, body: dict[str, Any]) -> Step:
        if self._responder is not None:
            try:
                step = self._responder(body)
            except Exception as exc:  # the test's responder is broken: say so to the client, don't hang it
                raise ScriptError(f"the responder raised {type(exc).__name__}: {exc}") from exc
            return check_step(step)
        with self._lock:
            if not self._steps:
                raise ScriptError(f"script exhausted: no step left for request {len(self.requests)} "
                                  "(the client made more calls than the test scripted)")
            return self._steps.pop(0)
