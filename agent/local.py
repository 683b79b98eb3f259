"""``local:<model dir>``: a LangChain chat model over a local transformers causal LM.

The teacher graph drives it like any LLM (``bind_tools``, AIMessages with ``tool_calls``, token
usage), so an agent-mode student (student/train_agent.py) runs the same LangGraph agent as the
teacher, and ``supertiny serve`` puts it behind an OpenAI-compatible endpoint.

How a conversation becomes text
-------------------------------
Always through the tokenizer's chat template (a tokenizer without one gets
:data:`DEFAULT_CHAT_TEMPLATE`, ChatML with the EOS token ending each turn: SmolLM2's own layout).
Tool schemas and tool calls go in one of two ways, the model's *tool protocol*:

- ``template``: the chat template knows tools (it mentions ``tools``): it gets ``tools=`` and the
  assistant ``tool_calls`` / ``tool`` messages as Hugging Face templates expect them.
- ``text``: the template has no tool support (SmolLM2's, our tiny models'). The tool schemas are
  listed in the system message, one JSON object a line, and the model answers with one line per
  call::

      <tool_call>{"name": "find_device", "arguments": {"room": "kitchen"}}</tool_call>

  Tool results come back as a user turn, one line per result, in the order of the calls::

      <tool_response name="find_device">{"device_id": "light.kitchen"}</tool_response>

A trained student records its protocol in its manifest (``tool_protocol``); inference uses the
recorded one, so training (:func:`render_training_text`) and inference (:func:`render_prompt`)
render with the same code. Both protocols parse answers the same way: every
``<tool_call>...</tool_call>`` block is a call (Hermes/Qwen style); a block that is not a JSON
object with a ``name`` and object ``arguments`` stays in the message text and is reported as an
invalid tool call, which the graph sends back to the model as an error.

Generation is greedy unless ``temperature > 0`` (then sampled, seeded with ``seed``);
``max_tokens`` bounds the completion; ``usage_metadata`` carries the real token counts.
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr

from student.manifest import inherited_field
from supertiny.errors import UserError

ToolProtocol = Literal["template", "text"]

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
DEFAULT_MAX_NEW_TOKENS = 256

# ChatML, each turn ended by the tokenizer's EOS token, so that generation stops on EOS. For
# SmolLM2 (EOS = <|im_end|>) this is its own template without the default system prompt.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOOLS_INSTRUCTIONS = """# Tools

You can call these functions. Each line is one function's JSON schema:
{schemas}

To call functions, answer with one line per call:
<tool_call>{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}</tool_call>
Their results come back as <tool_response name="<function name>">...</tool_response> lines."""


# ---- which protocol -------------------------------------------------------------------------


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` list (a plain text check: a
    template that never mentions ``tools`` cannot show them to the model)."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    return bool(template) and "tools" in template


def student_format(model_dir: str | Path) -> str:
    """The student's recorded format: ``agent`` for one trained on conversations
    (student/train_agent.py); ``direct`` when nothing is recorded."""
    return inherited_field(model_dir, "format") or "direct"


def tool_protocol_of(tokenizer: Any, model_dir: str | Path | None = None) -> ToolProtocol:
    """The protocol recorded in the model's manifest, else the one its chat template allows."""
    recorded = inherited_field(model_dir, "tool_protocol") if model_dir is not None else None
    if recorded in ("template", "text"):
        return recorded
    return "template" if template_supports_tools(tokenizer) else "text"


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template :data:`DEFAULT_CHAT_TEMPLATE`."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


# ---- rendering --------------------------------------------------------------------------------


def chat_messages(messages: Sequence[BaseMessage | dict[str, Any]]) -> list[dict[str, Any]]:
    """LangChain messages or OpenAI chat dicts -> OpenAI chat dicts whose text content is a string
    and whose tool-call arguments are parsed (a dict, or the raw string when it is not JSON)."""
    out = []
    for message in messages:
        # Dicts are read as they are (LangChain's reader raises on a call whose arguments are not JSON).
        message = dict(message) if isinstance(message, dict) else convert_to_openai_messages(message)
        message["content"] = _text(message.get("content"))
        calls = []
        for call in message.get("tool_calls") or []:
            function = dict(call.get("function") or {})
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except json.JSONDecodeError:
                    pass  # kept raw: rendered as the model wrote it
            function["arguments"] = arguments
            calls.append({**call, "type": "function", "function": function})
        if calls:
            message["tool_calls"] = calls
        out.append(message)
    return out


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part if isinstance(part, str) else str(part.get("text", ""))
                       for part in content if isinstance(part, (str, dict)))
    return str(content)


def tools_section(tools: Sequence[dict[str, Any]]) -> str:
    """The text-protocol tool listing appended to the system message."""
    schemas = "\n".join(json.dumps(tool.get("function", tool), ensure_ascii=False) for tool in tools)
    return TOOLS_INSTRUCTIONS.format(schemas=schemas)


def format_tool_call(name: str, arguments: Any) -> str:
    """One text-protocol call line; raw (non-JSON) arguments are written as they came."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{TOOL_CALL_START}{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {args}}}{TOOL_CALL_END}'


def text_protocol_messages(messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None
                           ) -> list[dict[str, str]]:
    """Chat dicts with tool calls -> plain ``{"role", "content"}`` turns of the text protocol."""
    out: list[dict[str, str]] = []
    names_by_id: dict[str, str] = {}
    tools_placed = not tools
    previous_was_tool = False
    for message in messages:
        role = message["role"]
        if role in ("system", "developer"):
            content = message["content"]
            if not tools_placed:
                content, tools_placed = f"{content.rstrip()}\n\n{tools_section(tools)}".lstrip(), True
            out.append({"role": "system", "content": content})
        elif role == "assistant":
            lines = [message["content"].strip()] if message["content"].strip() else []
            for call in message.get("tool_calls") or []:
                names_by_id[call.get("id") or ""] = call["function"]["name"]
                lines.append(format_tool_call(call["function"]["name"], call["function"]["arguments"]))
            out.append({"role": "assistant", "content": "\n".join(lines)})
        elif role == "tool":
            name = names_by_id.get(message.get("tool_call_id") or "") or message.get("name") or ""
            line = f'<tool_response name="{name}">{message["content"]}</tool_response>'
            if previous_was_tool:  # the results of one turn's calls form one user turn
                out[-1]["content"] += "\n" + line
            else:
                out.append({"role": "user", "content": line})
        else:  # user (and the legacy "function" role, read as a user turn)
            out.append({"role": "user", "content": message["content"]})
        previous_was_tool = role == "tool"
    if not tools_placed:
        out.insert(0, {"role": "system", "content": tools_section(tools)})
    return out


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat dicts as Hugging Face tool-aware templates take them (arguments as dicts)."""
    out = []
    for message in messages:
        message = {key: value for key, value in message.items() if value is not None}
        if message.get("tool_calls"):
            message["tool_calls"] = [{"id": call.get("id"), "type": "function",
                                      "function": {"name": call["function"]["name"],
                                                   "arguments": call["function"]["arguments"]}}
                                     for call in message["tool_calls"]]
        out.append(message)
    return out


def render_prompt(tokenizer: Any, messages: Sequence[BaseMessage | dict[str, Any]],
                  tools: Sequence[dict[str, Any]] | None, protocol: ToolProtocol, *,
                  add_generation_prompt: bool = True) -> str:
    """The text the model continues: the conversation so far, tools included, then the start of
    the assistant's turn. ``tools`` are OpenAI tool schemas (``{"type": "function", ...}``)."""
    return _render(tokenizer, chat_messages(messages), tools, protocol, add_generation_prompt)


def _render(tokenizer: Any, chats: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
            protocol: ToolProtocol, add_generation_prompt: bool) -> str:
    """:func:`render_prompt` of messages already read by :func:`chat_messages`."""
    template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    if protocol == "template":
        return tokenizer.apply_chat_template(template_messages(chats), tools=list(tools) if tools else None,
                                             chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    return tokenizer.apply_chat_template(text_protocol_messages(chats, tools), chat_template=template,
                                         tokenize=False, add_generation_prompt=add_generation_prompt)


def render_training_text(tokenizer: Any, messages: Sequence[BaseMessage | dict[str, Any]],
                         tools: Sequence[dict[str, Any]] | None, protocol: ToolProtocol
                         ) -> tuple[str, list[tuple[int, int]]]:
    """A whole conversation as one text, and the character spans of the assistant turns (the
    tokens the student learns to write). Each span is exactly what follows :func:`render_prompt`
    of the messages before it, up to and including the end of the turn (the EOS token), so the
    student is trained on the very prompts it will see."""
    chats = chat_messages(messages)
    full = _render(tokenizer, chats, tools, protocol, add_generation_prompt=False)
    eos = tokenizer.eos_token or ""
    spans = []
    for index, message in enumerate(chats):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, chats[:index], tools, protocol, add_generation_prompt=True)
        turn = _render(tokenizer, chats[: index + 1], tools, protocol, add_generation_prompt=False)
        if not turn.startswith(prompt):
            raise UserError("the model's chat template renders an assistant turn differently from the prompt before "
                            "it; agent-mode training needs a prefix-stable template (e.g. ChatML)")
        answer = turn[len(prompt):]
        end = answer.find(eos) + len(eos) if eos and eos in answer else len(answer.rstrip())
        if not full.startswith(prompt + answer[:end]):
            raise UserError("the model's chat template renders a conversation differently from its beginning; "
                            "agent-mode training needs a prefix-stable template (e.g. ChatML)")
        spans.append((len(prompt), len(prompt) + end))
    return full, spans


# ---- parsing ----------------------------------------------------------------------------------

_BLOCK = re.compile(re.escape(TOOL_CALL_START) + r"(.*?)" + re.escape(TOOL_CALL_END), re.S)


@dataclass
class ParsedAnswer:
    content: str  # text outside valid call blocks (malformed blocks stay in it)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # LangChain ToolCall dicts
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)  # LangChain InvalidToolCall dicts


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def parse_answer(text: str) -> ParsedAnswer:
    """Tool calls out of a completion; see the module docstring. A ``<tool_call>`` left open at the
    end (the completion was cut) is an invalid call, never a guessed one."""
    calls, invalid, kept, position = [], [], [], 0
    for match in _BLOCK.finditer(text):
        kept.append(text[position:match.start()])
        position = match.end()
        body = match.group(1).strip()
        call, problem = _parse_call(body)
        if call is not None:
            calls.append({"name": call[0], "args": call[1], "id": _call_id(), "type": "tool_call"})
        else:
            kept.append(match.group(0))
            invalid.append({"name": _guess_name(body), "args": body, "id": _call_id(), "error": problem,
                            "type": "invalid_tool_call"})
    rest = text[position:]
    if TOOL_CALL_START in rest:
        body = rest.split(TOOL_CALL_START, 1)[1]
        invalid.append({"name": _guess_name(body), "args": body.strip(), "id": _call_id(),
                        "error": f"the call was not closed with {TOOL_CALL_END}", "type": "invalid_tool_call"})
    kept.append(rest)
    return ParsedAnswer(content="".join(kept).strip(), tool_calls=calls, invalid_tool_calls=invalid)


def _parse_call(body: str) -> tuple[tuple[str, dict[str, Any]] | None, str | None]:
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        return None, f"the call is not valid JSON ({exc.msg})"
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None, 'the call must be a JSON object with a "name"'
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models double-encode, as the OpenAI wire format does
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    if not isinstance(arguments, dict):
        return None, "arguments are not a JSON object"
    return (data["name"], arguments), None


def _guess_name(body: str) -> str | None:
    match = re.search(r'"name"\s*:\s*"([^"]*)"', body)
    return match.group(1) if match else None


# ---- the chat model ---------------------------------------------------------------------------


@dataclass
class LocalCompletion:
    """One generation: the raw text and what it says, with its token counts."""

    text: str  # decoded completion (special tokens dropped, cut at a stop string)
    answer: ParsedAnswer
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # tool_calls | stop | length
    latency_ms: float


def load_local_model(name_or_path: str) -> tuple[Any, Any, Path]:
    """(model, tokenizer, directory) for a model directory (a student, a compressed student, a
    Hugging Face directory) or a base-model name that student/base.py resolves."""
    from student.base import resolve_base_model
    from student.generate import load_model

    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        path = resolve_base_model(name_or_path)
    model, tokenizer = load_model(path)
    return model, tokenizer, path


class LocalChatModel(BaseChatModel):
    """A chat model over a local causal LM; see the module docstring for the rendering."""

    model_dir: str = Field(description="Model directory (or base-model name) it was loaded from.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy; above, sampled with this temperature.")
    seed: int = Field(default=0, description="Sampling seed (temperature > 0); a per-call seed wins.")
    max_tokens: Optional[int] = Field(default=None, gt=0, description="Most new tokens per call (default 256).")

    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)
    _protocol: ToolProtocol = PrivateAttr(default="text")
    _lock: Any = PrivateAttr(default=None)  # one generation at a time per loaded model (server threads)

    def model_post_init(self, context: Any) -> None:
        # Loaded once; copies (with_seed) share the weights through the private attributes.
        if self._model is None:
            self._model, self._tokenizer, path = load_local_model(self.model_dir)
            ensure_chat_template(self._tokenizer)
            self._protocol = tool_protocol_of(self._tokenizer, path)
            self._lock = threading.Lock()

    @property
    def _llm_type(self) -> str:
        return "local"

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def tool_protocol(self) -> ToolProtocol:
        return self._protocol

    @property
    def model_name(self) -> str:
        return f"local:{Path(self.model_dir).name}"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any):
        """Tools as OpenAI schemas, passed to every call. ``tool_choice="none"`` hides them; other
        choices are accepted but not enforced (the model decides)."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)

    def complete(self, messages: Sequence[BaseMessage | dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None,
                 *, temperature: float | None = None, seed: int | None = None, max_tokens: int | None = None,
                 stop: Sequence[str] | None = None) -> LocalCompletion:
        """One completion for ``messages`` (LangChain messages or OpenAI chat dicts) with ``tools``
        (OpenAI tool schemas; none: plain chat, nothing parsed as a call)."""
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        started = time.perf_counter()
        temperature = self.temperature if temperature is None else temperature
        seed = self.seed if seed is None else seed
        max_new_tokens = max_tokens or self.max_tokens or DEFAULT_MAX_NEW_TOKENS
        tokenizer = self._tokenizer
        prompt = render_prompt(tokenizer, messages, tools or None, self._protocol)
        eos_ids = self._model.generation_config.eos_token_id
        eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        sampling = temperature > 0
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling, pad_token_id=pad,
                                  eos_token_id=eos_ids or None,
                                  **({"temperature": temperature, "top_k": 0, "top_p": 1.0} if sampling else {}))
        stops = [s for s in (stop or []) if s]
        # The lock covers the tokenizer too: a fast tokenizer shared by threads can refuse ("Already borrowed").
        with self._lock, torch.inference_mode():
            # Chat templates write their own special tokens (HF convention): add none here, as in training.
            inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            prompt_len = int(inputs["input_ids"].shape[1])
            criteria = StoppingCriteriaList([_StopStrings(tokenizer, prompt_len, stops)] if stops else [])
            if sampling:
                torch.manual_seed(seed)
            output = self._model.generate(**inputs, generation_config=config, stopping_criteria=criteria)
            new_tokens = output[0, prompt_len:].tolist()
            text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        ended = cut >= 0 or (bool(new_tokens) and new_tokens[-1] in eos_ids)
        answer = parse_answer(text) if tools else ParsedAnswer(content=text.strip())
        finish = ("tool_calls" if answer.tool_calls
                  else "stop" if ended or len(new_tokens) < max_new_tokens else "length")
        return LocalCompletion(text=text, answer=answer, prompt_tokens=prompt_len, completion_tokens=len(new_tokens),
                               finish_reason=finish, latency_ms=round((time.perf_counter() - started) * 1000, 3))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        tools = None if kwargs.get("tool_choice") == "none" else kwargs.get("tools")
        # Other kwargs (extra_headers from a batch job's retry wrapper, ...) mean nothing to a local model.
        done = self.complete(messages, tools, temperature=kwargs.get("temperature"), seed=kwargs.get("seed"),
                             max_tokens=kwargs.get("max_tokens"), stop=stop)
        message = AIMessage(
            content=done.answer.content, tool_calls=done.answer.tool_calls,
            invalid_tool_calls=done.answer.invalid_tool_calls,
            usage_metadata={"input_tokens": done.prompt_tokens, "output_tokens": done.completion_tokens,
                            "total_tokens": done.prompt_tokens + done.completion_tokens},
            response_metadata={"model_name": self.model_name, "finish_reason": done.finish_reason},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


class _StopStrings:
    """Stop once the new text contains one of ``stops`` (decoded, so any tokenization matches)."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: list[str]):
        self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, stops

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([any(s in text for s in self.stops) for text in texts], dtype=torch.bool,
                            device=input_ids.device)
