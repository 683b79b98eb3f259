"""``local:<model dir>``: a real transformers model as the teacher graph's chat model.

Rendering and parsing are checked on their own; the chat model runs a tiny agent-mode student
(tests/tiny_agents.py) and an untrained tiny model (random output: sampling, limits, text that is
no call) through the real LangGraph agent, and through the CLI."""
import json
import sqlite3
from pathlib import Path

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from transformers import AutoTokenizer

from agent.backends import make_chat_model, with_seed
from agent.local import (DEFAULT_CHAT_TEMPLATE, LocalChatModel, parse_answer, render_prompt, render_training_text,
                         template_supports_tools, text_protocol_messages, chat_messages)
from agent.run import run_request
from supertiny.errors import UserError
from tests.agent.lights_domain import CONTEXT, DOMAIN, LIGHTS
from tests.tiny_agents import LIGHTS_DOMAIN, agent_student, run_cli, tiny_base

TOOLS = [convert_to_openai_tool(t) for t in DOMAIN.tools + DOMAIN.actions]
CONVERSATION = [
    SystemMessage("Call find_light, then switch."),
    HumanMessage("Context: now=2026-03-14T09:30\nRequest: turn on the kitchen light"),
    AIMessage("", tool_calls=[{"name": "find_light", "args": {"room": "kitchen"}, "id": "c1"},
                              {"name": "find_light", "args": {"room": "hall"}, "id": "c2"}]),
    ToolMessage('{"device_id": "light.kitchen"}', tool_call_id="c1", name="find_light"),
    ToolMessage("Error: no light in 'hall'", tool_call_id="c2", name="find_light", status="error"),
    AIMessage("", tool_calls=[{"name": "switch", "args": {"device_id": "light.kitchen", "state": "on"}, "id": "c3"}]),
]
# A Hermes-style template that knows tools, as Qwen's and others' do.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}{{ eos_token }}\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{{ eos_token }}\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models are all synchronisation overhead: one thread is faster on a busy 2-core machine
    # (as in tests/student/conftest.py).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """An untrained tiny model: its output is noise, never a call."""
    return tiny_base(tmp_path_factory.mktemp("random"), ["turn on the kitchen light find_light switch"] * 20)


@pytest.fixture(scope="module")
def tokenizer(random_model):
    tokenizer = AutoTokenizer.from_pretrained(random_model)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return agent_student(tmp_path_factory.getbasetemp() / "shared")


# ---- parsing ----------------------------------------------------------------------------------


def test_tool_call_lines_parse_into_calls_and_the_rest_stays_text():
    answer = parse_answer('Looking it up.\n'
                          '<tool_call>{"name": "find_light", "arguments": {"room": "hall"}}</tool_call>\n'
                          '<tool_call>{"name": "switch", "parameters": {"device_id": "x", "state": "on"}}</tool_call>')
    assert answer.content == "Looking it up."
    assert [(c["name"], c["args"]) for c in answer.tool_calls] == [
        ("find_light", {"room": "hall"}), ("switch", {"device_id": "x", "state": "on"})]
    assert len({c["id"] for c in answer.tool_calls}) == 2 and not answer.invalid_tool_calls
    # Arguments double-encoded as a JSON string (as on the OpenAI wire) are read too.
    twice = parse_answer('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert twice.tool_calls[0]["args"] == {"a": 1}


@pytest.mark.parametrize("text,error", [
    ('<tool_call>{"name": "switch", "arguments": {"state": </tool_call>', "not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', '"name"'),
    ('<tool_call>{"name": "switch", "arguments": [1]}</tool_call>', "not a JSON object"),
    ('<tool_call>{"name": "switch", "arguments": {"state": "on"}', "not closed"),
])
def test_malformed_calls_are_invalid_calls_and_stay_in_the_text(text, error):
    answer = parse_answer(text)
    assert answer.tool_calls == []
    assert answer.content == text.strip()  # what the model wrote: it sees it again with the error
    bad, = answer.invalid_tool_calls
    assert error in bad["error"] and bad["id"]
    assert bad["name"] in ("switch", None)


def test_plain_text_is_no_call():
    answer = parse_answer("I cannot do that.")
    assert answer.content == "I cannot do that." and not answer.tool_calls and not answer.invalid_tool_calls


# ---- rendering --------------------------------------------------------------------------------


def test_text_protocol_lists_tools_writes_calls_and_merges_tool_results():
    turns = text_protocol_messages(chat_messages(CONVERSATION), TOOLS)
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user", "assistant"]
    system = turns[0]["content"]
    assert system.startswith("Call find_light, then switch.\n\n# Tools")
    for tool in TOOLS:
        assert json.dumps(tool["function"], ensure_ascii=False) in system.splitlines()
    assert turns[2]["content"] == (
        '<tool_call>{"name": "find_light", "arguments": {"room": "kitchen"}}</tool_call>\n'
        '<tool_call>{"name": "find_light", "arguments": {"room": "hall"}}</tool_call>')
    # Both results in one user turn, in call order, the failed one with its error.
    assert turns[3]["content"] == ('<tool_response name="find_light">{"device_id": "light.kitchen"}</tool_response>\n'
                                   '<tool_response name="find_light">Error: no light in \'hall\'</tool_response>')
    # What the model is trained to write parses back into the same calls.
    assert [(c["name"], c["args"]) for c in parse_answer(turns[2]["content"]).tool_calls] == [
        ("find_light", {"room": "kitchen"}), ("find_light", {"room": "hall"})]


def test_without_a_system_message_the_tools_get_one_and_without_tools_nothing_is_added():
    turns = text_protocol_messages(chat_messages([HumanMessage("hi")]), TOOLS)
    assert turns[0]["role"] == "system" and turns[0]["content"].startswith("# Tools")
    assert text_protocol_messages(chat_messages([HumanMessage("hi")]), None) == [{"role": "user", "content": "hi"}]


def test_training_spans_are_exactly_what_follows_each_inference_prompt(tokenizer):
    text, spans = render_training_text(tokenizer, CONVERSATION, TOOLS, "text")
    assert len(spans) == 2
    for (start, end), index in zip(spans, (2, 5)):
        prompt = render_prompt(tokenizer, CONVERSATION[:index], TOOLS, "text")
        assert text[:start] == prompt and prompt.endswith("<|im_start|>assistant\n")
        assert text[start:end].endswith(tokenizer.eos_token)
        assert parse_answer(text[start:end].removesuffix(tokenizer.eos_token)).tool_calls
    assert text.endswith(text[spans[-1][0]:spans[-1][1]] + "\n")


def test_a_template_that_knows_tools_gets_them_as_tools(tokenizer):
    tools_tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tools_tokenizer.chat_template = TOOLS_TEMPLATE
    assert template_supports_tools(tools_tokenizer) and not template_supports_tools(tokenizer)
    prompt = render_prompt(tools_tokenizer, CONVERSATION[:5], TOOLS, "template")
    assert "# Tools" not in prompt  # the template's own layout, not the text protocol's
    assert all(json.dumps(tool, ensure_ascii=False) in prompt for tool in TOOLS)
    assert '<tool_call>{"name": "find_light", "arguments": {"room": "kitchen"}}</tool_call>' in prompt
    text, spans = render_training_text(tools_tokenizer, CONVERSATION, TOOLS, "template")
    assert [text[s:e].count("<tool_call>") for s, e in spans] == [2, 1]


def test_a_template_that_renders_prefixes_differently_is_refused(tokenizer):
    unstable = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    unstable.chat_template = ("{% for m in messages %}{{ m.role }}({{ messages | length }}): "
                              "{{ m.content }}{{ eos_token }}"
                              "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(UserError, match="prefix-stable"):
        render_training_text(unstable, CONVERSATION, TOOLS, "text")


# ---- the chat model ---------------------------------------------------------------------------


def test_the_agent_student_drives_the_graph_with_real_tool_calls(student):
    model = make_chat_model(f"local:{student}", domain=DOMAIN)
    assert isinstance(model, LocalChatModel) and model.tool_protocol == "text"
    result = run_request(DOMAIN, model, "turn on the kitchen light", {"now": "2026-03-14T09:30"})
    assert result.status == "ok", result
    # It looked a light up with the lookup tool, then switched a real light.
    lookup = result.tool_events[0]
    assert lookup["name"] == "find_light" and lookup["args"]["room"] in LIGHTS and lookup["error"] is None
    assert result.final_call["name"] == "switch"
    assert result.final_call["arguments"]["device_id"] in LIGHTS.values()
    assert result.model_calls == 2
    # Real token counts: the prompt as rendered and tokenized, the tokens generated.
    first = result.model_events[0]
    prompt = render_prompt(model.tokenizer, result.messages[:2], TOOLS, "text")
    assert first["prompt_tokens"] == len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 0 < first["completion_tokens"] < 64
    assert first["finish_reason"] == "tool_calls" and first["model"] == f"local:{student.name}"
    assert result.prompt_tokens == sum(e["prompt_tokens"] for e in result.model_events)


def test_greedy_is_deterministic_and_stop_strings_cut_the_answer(student):
    model = make_chat_model(f"local:{student}", domain=DOMAIN)
    messages = [SystemMessage(DOMAIN.system_prompt),
                HumanMessage(DOMAIN.render_request("turn off the hall light", CONTEXT))]
    first, again = model.complete(messages, TOOLS), model.complete(messages, TOOLS)
    assert first.text == again.text and first.answer.tool_calls
    cut = model.complete(messages, TOOLS, stop=['"arguments"'])
    assert cut.text == first.text[:first.text.index('"arguments"')]
    assert cut.finish_reason == "stop" and cut.completion_tokens < first.completion_tokens


def test_sampling_follows_temperature_and_seed_and_max_tokens_bounds_it(random_model):
    model = make_chat_model(f"local:{random_model}", domain=DOMAIN, temperature=1.0, max_tokens=12)
    messages = [HumanMessage("turn on the kitchen light")]

    def text(seed):
        return with_seed(model, seed).complete(messages, TOOLS).text

    assert text(1) == text(1) and text(1) != text(2)
    done = model.complete(messages, TOOLS)
    assert done.completion_tokens == 12 and done.finish_reason == "length"
    assert model.complete(messages, TOOLS, max_tokens=3).completion_tokens == 3
    greedy = make_chat_model(f"local:{random_model}", domain=DOMAIN)
    assert greedy.complete(messages, TOOLS, seed=1).text == greedy.complete(messages, TOOLS, seed=2).text


def test_text_that_is_no_call_ends_the_run_as_no_call(random_model):
    model = make_chat_model(f"local:{random_model}", domain=DOMAIN, max_tokens=8)
    result = run_request(DOMAIN, model, "turn on the kitchen light", {"now": "2026-03-14T09:30"})
    assert result.status == "no_call" and result.final_call is None and result.model_calls == 1
    assert result.messages[-1]["role"] == "assistant" and result.completion_tokens == 8


def test_missing_model_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="model path not found"):
        make_chat_model(f"local:{tmp_path / 'nope'}", domain=DOMAIN)
    with pytest.raises(UserError, match="local:<model-dir>"):
        make_chat_model("local:", domain=DOMAIN)


def test_agent_run_accepts_a_local_model_and_stores_the_trace(student, tmp_path):
    db = tmp_path / "run.db"
    proc = run_cli("--db", str(db), "agent", "run", "turn on the bedroom light", "--domain", LIGHTS_DOMAIN,
                   "--model", f"local:{student}", "--context", json.dumps(CONTEXT), "--max-tokens", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "ok" and summary["model_calls"] == 2 and summary["tokens"] > 0
    with sqlite3.connect(db) as conn:
        model, tokens = conn.execute("select model, prompt_tokens + completion_tokens from traces where id = ?",
                                     (summary["trace_id"],)).fetchone()
        steps, = conn.execute("select count(*) from model_calls where trace_id = ?",
                              (summary["trace_id"],)).fetchone()
    assert model == f"local:{student}" and tokens == summary["tokens"] and steps == 2
