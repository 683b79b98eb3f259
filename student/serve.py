"""``supertiny serve MODEL_DIR``: a student behind an OpenAI-compatible chat-completions endpoint.

    POST /v1/chat/completions     (also /chat/completions)
    GET  /v1/models               (also /models)

Any OpenAI client works against it (``openai.OpenAI``, langchain ``ChatOpenAI``, and so
``supertiny agent run --model openai:NAME --base-url http://127.0.0.1:8000/v1``). The model
directory decides how a request is answered (its manifest's ``format``, or its parent's for a
pruned or quantized student):

- **agent-mode** (student/train_agent.py): the request's messages and ``tools`` are rendered as in
  training by the ``local:`` chat model (agent/local.py) and its tool calls come back as
  ``tool_calls``. It runs the teacher's loop when a client sends the tool results back.
- **direct-mode** (student/train.py, and its compressed versions): one call from the last user
  message. Its context (``now=...``) comes, in this order, from a user message in the teacher's
  layout, ``Context: now=2026-03-14T09:30 weekday=Saturday\\nRequest: turn off the lights`` (what
  the agent graph sends, so a direct student drops in for the teacher), or from the request's
  ``metadata`` object (``{"now": "2026-03-14T09:30", "weekday": "Saturday"}``); else the whole
  message is the request with no context. With ``tools`` the call comes back as ``tool_calls``
  (its name constrained to those tools, and to the student's own action names when they are among
  them); without tools, or with ``tool_choice: "none"``, as text. Decoding is greedy.

Responses carry ``usage`` (real token counts) and ``finish_reason`` (``tool_calls``, ``stop`` or
``length``). ``stream: true`` sends Server-Sent Events: a role chunk, the content, per tool call a
chunk with its id and name and one with its arguments, a finish chunk, a usage chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]`` (the completion is generated first,
then streamed). ``logprobs`` are not computed (``null``); ``tool_choice`` other than ``"none"`` is
not enforced. ``--api-key`` makes every request need ``Authorization: Bearer KEY`` (401 otherwise).
Client errors (bad JSON, missing or ill-typed fields) get a 4xx with OpenAI's error body, never a
500. Generation runs one request at a time per server (one model, CPU).
"""
from __future__ import annotations

import hmac
import json
import re
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.local import student_format
from supertiny.errors import UserError
from supertiny.testing.openai_server import Completion, check_request, completion_body, error_body, stream_chunks

MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_TOKENS = 256
_TEACHER_REQUEST = re.compile(r"^\s*(?:Context:[ \t]*(?P<context>[^\n]*)\n)?\s*Request:[ \t]*(?P<text>.*)$", re.S)
_CONTEXT_ITEM = re.compile(r"(\w+)=(.*?)(?=\s+\w+=|\s*$)")


class BadRequest(ValueError):
    """A client error: answered with this status and message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Answer:
    """What a student said to one request, before it is put on the wire."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments": dict}
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


# ---- reading a request ------------------------------------------------------------------------


def check_body(body: Any) -> dict[str, Any]:
    """``body`` if a chat-completions request this server can answer, else :class:`BadRequest`."""
    problem = check_request(body)  # the same checks as the project's scripted OpenAI server
    if problem:
        raise BadRequest(problem)
    for position, message in enumerate(body["messages"]):
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{position}].content must be a string or a list of content parts")
        if isinstance(content, list) and not all(isinstance(part, (str, dict)) for part in content):
            raise BadRequest(f"messages[{position}].content: each content part must be an object")
        if message.get("tool_calls") is not None and not _tool_calls_ok(message["tool_calls"]):
            raise BadRequest(f"messages[{position}].tool_calls must be a list of "
                             "{'id', 'type': 'function', 'function': {'name', 'arguments'}}")
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None and not (_is_int(body[name]) and body[name] > 0):
            raise BadRequest(f"'{name}' must be a positive integer")
    if body.get("seed") is not None and not _is_int(body["seed"]):
        raise BadRequest("'seed' must be an integer")
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
                                        and 0 <= temperature <= 2):
        raise BadRequest("'temperature' must be a number between 0 and 2")
    if body.get("n") not in (None, 1):
        raise BadRequest("'n' must be 1: this server returns one choice")
    for name in ("stream", "logprobs", "parallel_tool_calls"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise BadRequest(f"'{name}' must be a boolean")
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise BadRequest("'stream_options' must be an object")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list)
                                                           and all(isinstance(s, str) for s in stop))):
        raise BadRequest("'stop' must be a string or a list of strings")
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("none", "auto", "required") and not (
            isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str)):
        raise BadRequest("'tool_choice' must be 'none', 'auto', 'required' or "
                         "{'type': 'function', 'function': {'name': ...}}")
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise BadRequest("'metadata' must be an object of string values")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tool_calls_ok(calls: Any) -> bool:
    return isinstance(calls, list) and all(
        isinstance(call, dict) and isinstance(call.get("function"), dict)
        and isinstance(call["function"].get("name"), str)
        and isinstance(call["function"].get("arguments", ""), (str, dict)) for call in calls)


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)
    return content or ""


def request_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools a request offers; none when it says ``tool_choice: "none"``."""
    return [] if body.get("tool_choice") == "none" else list(body.get("tools") or [])


def direct_request(body: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(request text, context) for a direct-mode student; see the module docstring."""
    user = next((m for m in reversed(body["messages"]) if m["role"] == "user"), None)
    if user is None:
        raise BadRequest("a direct-mode student answers the last user message: the request has none")
    text = _text(user.get("content")).strip()
    match = _TEACHER_REQUEST.match(text)
    if match:
        context = dict(_CONTEXT_ITEM.findall(match.group("context") or ""))
        return match.group("text").strip(), context
    return text, dict(body.get("metadata") or {})


# ---- the students -----------------------------------------------------------------------------


class DirectBackend:
    """A direct-mode student: the last user message (and context) -> one call."""

    mode = "direct"

    def __init__(self, model_dir: Path):
        from student.generate import DirectStudent

        self.student = DirectStudent(model_dir)
        self.own_names = list(self.student.function_names or [])
        self.lock = threading.Lock()

    def answer(self, body: dict[str, Any]) -> Answer:
        text, context = direct_request(body)
        tools = request_tools(body)
        offered = [tool["function"]["name"] for tool in tools]
        known = [name for name in self.own_names if name in offered]
        with self.lock:  # one model, and function_names is per request
            self.student.function_names = known or offered or self.own_names or None
            self.student.max_new_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 64
            prediction = self.student.predict(text, context)
            hit_limit = prediction.call is None and prediction.completion_tokens >= self.student.max_new_tokens
        usage = {"prompt_tokens": prediction.prompt_tokens, "completion_tokens": prediction.completion_tokens}
        if tools and prediction.call is not None:
            return Answer(None, [prediction.call], "tool_calls", **usage)
        return Answer(prediction.raw, [], "length" if hit_limit else "stop", **usage)


class AgentBackend:
    """An agent-mode student: the conversation and tools -> tool calls or text (agent/local.py)."""

    mode = "agent"

    def __init__(self, model_dir: Path):
        from agent.local import LocalChatModel

        self.chat = LocalChatModel(model_dir=str(model_dir))

    def answer(self, body: dict[str, Any]) -> Answer:
        stop = body.get("stop")
        done = self.chat.complete(body["messages"], request_tools(body) or None, temperature=body.get("temperature"),
                                  seed=body.get("seed"),
                                  max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
                                  stop=[stop] if isinstance(stop, str) else stop)
        calls = [{"name": call["name"], "arguments": call["args"]} for call in done.answer.tool_calls]
        content = done.answer.content if done.answer.content or not calls else None
        return Answer(content, calls, done.finish_reason, done.prompt_tokens, done.completion_tokens)


def load_backend(model_dir: str | Path) -> DirectBackend | AgentBackend:
    path = Path(model_dir)
    if not path.is_dir():
        raise UserError(f"model path not found: {model_dir} "
                        "(give a directory written by 'student train' or 'compress')")
    return AgentBackend(path) if student_format(path) == "agent" else DirectBackend(path)


def wire_completion(answer: Answer, model: str) -> Completion:
    """An :class:`Answer` as the scripted server's :class:`Completion`, whose helpers write the
    JSON body and the stream chunks."""
    calls, deltas = [], []
    if answer.content:
        deltas.append(({"content": answer.content}, []))
    for index, call in enumerate(answer.tool_calls):
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        calls.append({"id": call_id, "type": "function", "function": {"name": call["name"], "arguments": arguments}})
        deltas.append(({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                        "function": {"name": call["name"], "arguments": ""}}]}, []))
        deltas.append(({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}, []))
    usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
             "total_tokens": answer.prompt_tokens + answer.completion_tokens}
    return Completion(content=answer.content, tool_calls=calls, finish_reason=answer.finish_reason, model=model,
                      usage=usage, logprobs=None, deltas=[(delta, None) for delta, _ in deltas])


# ---- HTTP -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as OpenAI clients expect; streams use chunked encoding
    timeout = 60  # an idle keep-alive connection is dropped after this many seconds
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if not self._authorized():
            return
        owner = self.server.owner
        if self._route() == "/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": owner.name, "object": "model", "created": owner.created, "owned_by": "supertiny"}]})
        else:
            self._send_json(404, error_body(404, f"no route GET {self.path}"))

    def do_POST(self) -> None:
        try:
            raw = self._read_body()
        except BadRequest as exc:
            self.close_connection = True  # the body was not read: the connection cannot be reused
            self._send_json(exc.status, error_body(exc.status, str(exc)))
            return
        if not self._authorized():
            return
        if self._route() != "/chat/completions":
            self._send_json(404, error_body(404, f"no route POST {self.path}"))
            return
        owner = self.server.owner
        try:
            body = check_body(json.loads(raw))
            answer = owner.backend.answer(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._send_json(400, error_body(400, f"the request body is not valid JSON: {exc}"))
            return
        except BadRequest as exc:
            self._send_json(exc.status, error_body(exc.status, str(exc)))
            return
        except Exception as exc:  # the model failed: our error, said as one
            traceback.print_exc(file=sys.stderr)
            self._send_json(500, error_body(500, f"the model failed: {type(exc).__name__}: {exc}"))
            return
        completion = wire_completion(answer, owner.name)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        # The scripted server's writers, with our own fingerprint (the served model directory).
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._send_stream({**chunk, "system_fingerprint": owner.fingerprint}
                              for chunk in stream_chunks(completion, completion_id, created, include_usage))
        else:
            self._send_json(200, {**completion_body(completion, completion_id, created),
                                  "system_fingerprint": owner.fingerprint})

    def _method_not_allowed(self) -> None:
        self._send_json(405, error_body(405, f"method {self.command} is not allowed; use GET or POST"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise BadRequest("send the body with a Content-Length, not chunked", 411)
        try:
            size = int(length) if length is not None else 0
        except ValueError:
            raise BadRequest(f"bad Content-Length: {length!r}") from None
        if size < 0:
            raise BadRequest(f"bad Content-Length: {length!r}")
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"the request body is over {MAX_BODY_BYTES} bytes", 413)
        return self.rfile.read(size) if size else b""

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        return path[len("/v1"):] if path.startswith("/v1/") else path

    def _authorized(self) -> bool:
        key = self.server.owner.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization") or ""
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        self._send_json(401, error_body(401, "Incorrect API key provided"))
        return False

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_stream(self, chunks: Any) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n" for chunk in chunks] + ["data: [DONE]\n\n"]
        for event in events:
            data = event.encode()
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection must not keep the process alive
    request_queue_size = 64

    def __init__(self, owner: "StudentServer", host: str, port: int):
        self.owner = owner
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is not a server error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, socket.timeout)):
            return
        super().handle_error(request, client_address)


class StudentServer:
    """The endpoint for one model directory. ``with StudentServer(dir, port=0) as server:`` in
    tests (``port=0``: a free port, see :attr:`base_url`); :meth:`serve_forever` for the CLI."""

    def __init__(self, model_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, name: str | None = None, verbose: bool = False):
        self.backend = load_backend(model_dir)
        self.name = name or Path(model_dir).resolve().name
        self.api_key = api_key or None
        self.verbose = verbose
        self.created = int(time.time())
        self.fingerprint = f"supertiny-{self.backend.mode}-{self.name}"
        try:
            self._httpd = _HTTPServer(self, host, port)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (pick another --port)") from None
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        return self.backend.mode

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "StudentServer":
        """Serve on a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="supertiny-serve", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until interrupted (Ctrl-C)."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._httpd.server_close()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "StudentServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
