"""``supertiny serve``: real OpenAI clients (langchain ``ChatOpenAI``, ``openai``, raw HTTP, the
``supertiny agent run`` CLI) against a tiny direct-mode and a tiny agent-mode student served on
127.0.0.1."""
import http.client
import json

import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from student.format import direct_prompt
from student.serve import StudentServer
from supertiny.errors import UserError
from tests.agent.lights_domain import DOMAIN, LIGHTS
from tests.tiny_agents import LIGHTS_DOMAIN, agent_student, direct_student, run_cli

KEY = "sk-test-key"
NOW = "2026-03-14T09:30"
TEACHER_REQUEST = f"Context: now={NOW}\nRequest: turn on the kitchen light"


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory):
    with StudentServer(agent_student(tmp_path_factory.getbasetemp() / "shared"), port=0, api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def direct_server(tmp_path_factory):
    with StudentServer(direct_student(tmp_path_factory.getbasetemp() / "shared"), port=0, api_key=KEY,
                       name="lights-direct") as server:
        yield server


def chat(server, **options) -> ChatOpenAI:
    return ChatOpenAI(model="whatever-name", base_url=server.base_url, api_key=KEY, temperature=0, max_retries=0,
                      timeout=60, **options)


def merged(stream) -> AIMessageChunk:
    total = None
    for chunk in stream:
        total = chunk if total is None else total + chunk
    return total


def post(server, body, headers=None, raw=None):
    """A raw HTTP request: (status, parsed JSON body)."""
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    data = raw if raw is not None else json.dumps(body).encode()
    connection.request("POST", "/v1/chat/completions", body=data,
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}",
                                **(headers or {})})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


# ---- agent-mode -------------------------------------------------------------------------------


def test_agent_student_answers_chat_openai_with_tool_calls(agent_server):
    assert agent_server.mode == "agent"
    model = chat(agent_server).bind_tools(DOMAIN.tools + DOMAIN.actions)
    message = model.invoke([SystemMessage(DOMAIN.system_prompt), HumanMessage(TEACHER_REQUEST)])
    call, = message.tool_calls
    assert call["name"] == "find_light" and call["args"]["room"] in LIGHTS and call["id"].startswith("call_")
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert message.response_metadata["model_name"] == agent_server.name
    usage = message.usage_metadata
    assert usage["input_tokens"] > 100 and 0 < usage["output_tokens"] < 64
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_agent_student_streams_tool_call_deltas(agent_server):
    model = chat(agent_server, streaming=True, stream_usage=True).bind_tools(DOMAIN.tools + DOMAIN.actions)
    messages = [SystemMessage(DOMAIN.system_prompt), HumanMessage(TEACHER_REQUEST)]
    streamed = merged(model.stream(messages))
    whole = chat(agent_server).bind_tools(DOMAIN.tools + DOMAIN.actions).invoke(messages)
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [(c["name"], c["args"]) for c in whole.tool_calls]
    assert streamed.tool_calls and streamed.response_metadata["finish_reason"] == "tool_calls"
    assert streamed.usage_metadata["input_tokens"] == whole.usage_metadata["input_tokens"]


def test_agent_run_against_the_served_agent_student(agent_server, tmp_path):
    proc = run_cli("--db", str(tmp_path / "t.db"), "agent", "run", "turn off the hall light", "--domain", LIGHTS_DOMAIN,
                   "--model", "openai:lights-agent", "--base-url", agent_server.base_url, "--api-key", KEY,
                   "--max-tokens", "64", "--context", json.dumps({"now": NOW}), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "ok" and summary["model_calls"] == 2 and summary["tokens"] > 200
    assert summary["final_call"]["name"] == "switch"


# ---- direct-mode ------------------------------------------------------------------------------


def test_direct_student_answers_the_teacher_layout_with_one_tool_call(direct_server):
    assert direct_server.mode == "direct"
    switch = [t for t in DOMAIN.actions if t.name == "switch"]
    message = chat(direct_server).bind_tools(DOMAIN.tools + switch).invoke(
        [SystemMessage("anything"), HumanMessage(TEACHER_REQUEST)])
    call, = message.tool_calls
    assert call["name"] == "switch" and set(call["args"]) == {"device_id", "state"}
    assert message.response_metadata["finish_reason"] == "tool_calls"
    # The context line reached the student's prompt: its tokens are the direct-mode prompt's.
    tokenizer = direct_server.backend.student.tokenizer
    expected = len(tokenizer(direct_prompt("turn on the kitchen light", {"now": NOW}))["input_ids"])
    assert message.usage_metadata["input_tokens"] == expected


def test_direct_student_takes_context_from_metadata_and_streams(direct_server):
    body = {"model": "x", "messages": [{"role": "user", "content": "turn off the hall light"}],
            "metadata": {"now": NOW}, "tools": [{"type": "function", "function": {"name": "switch"}}]}
    status, answer = post(direct_server, body)
    assert status == 200
    tokenizer = direct_server.backend.student.tokenizer
    prompt = direct_prompt("turn off the hall light", {"now": NOW})
    assert answer["usage"]["prompt_tokens"] == len(tokenizer(prompt)["input_ids"])
    call, = answer["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "switch" and isinstance(json.loads(call["function"]["arguments"]), dict)

    model = chat(direct_server, streaming=True, stream_usage=True).bind_tools([t for t in DOMAIN.actions])
    streamed = merged(model.stream([HumanMessage(TEACHER_REQUEST)]))
    assert [c["name"] for c in streamed.tool_calls] == ["switch"]
    assert streamed.usage_metadata["output_tokens"] > 0


def test_direct_student_without_tools_answers_in_text(direct_server):
    message = chat(direct_server).invoke([HumanMessage(TEACHER_REQUEST)])
    assert not message.tool_calls and message.content.startswith("switch(")
    assert message.response_metadata["finish_reason"] == "stop"


def test_models_lists_the_served_model(direct_server):
    client = openai.OpenAI(base_url=direct_server.base_url, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["lights-direct"]


# ---- errors -----------------------------------------------------------------------------------


def test_a_wrong_or_missing_api_key_is_401(direct_server):
    client = openai.OpenAI(base_url=direct_server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    status, body = post(direct_server, {"model": "x", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": ""})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("body,status,message", [
    (None, 400, "not valid JSON"),
    ([], 400, "JSON object"),
    ({"model": "x"}, 400, "'messages'"),
    ({"model": "x", "messages": "hi"}, 400, "'messages'"),
    ({"model": "x", "messages": [{"role": "robot", "content": "hi"}]}, 400, "'role'"),
    ({"model": "x", "messages": [{"role": "user", "content": 5}]}, 400, "content"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "x", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "'n'"),
    ({"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
    ({"model": "x", "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "f"}]}, 400, "tools"),
    ({"model": "x", "messages": [{"role": "user", "content": "hi"}], "tool_choice": 3}, 400, "tool_choice"),
    ({"model": "x", "messages": [{"role": "system", "content": "hi"}]}, 400, "user message"),
    ({"model": "x", "messages": [{"role": "tool", "content": "hi", "tool_call_id": "a"}]}, 400, "tool"),
])
def test_malformed_requests_get_a_4xx_in_openai_error_shape(direct_server, body, status, message):
    got, payload = post(direct_server, body, raw=b"{not json" if body is None else None)
    assert got == status
    assert message in payload["error"]["message"]
    assert payload["error"]["type"] == "invalid_request_error"
    assert set(payload["error"]) == {"message", "type", "param", "code"}


def test_agent_server_rejects_bad_messages_and_unknown_routes(agent_server):
    got, payload = post(agent_server, {"model": "x", "messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "a", "function": {"name": 3}}]}]})
    assert got == 400 and "tool_calls" in payload["error"]["message"]
    host, port = agent_server.base_url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/embeddings", body=b"{}", headers={"Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    assert response.status == 404 and json.loads(response.read())["error"]["message"].startswith("no route")
    connection.request("DELETE", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    assert response.status == 405 and "error" in json.loads(response.read())
    connection.close()


def test_an_unknown_model_name_is_answered(direct_server):
    status, answer = post(direct_server, {"model": "gpt-17",
                                          "messages": [{"role": "user", "content": TEACHER_REQUEST}]})
    assert status == 200 and answer["model"] == "lights-direct" and answer["choices"][0]["finish_reason"] == "stop"
    assert answer["system_fingerprint"] == "supertiny-direct-lights-direct"


def test_serving_a_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="model path not found"):
        StudentServer(tmp_path / "nope", port=0)


# ---- a compressed student ---------------------------------------------------------------------


def test_a_pruned_healed_quantized_student_serves_what_it_answers_in_process(tmp_path_factory, tmp_path):
    """Issue 6: width pruned, healed by KD, quantized, each saved and reloaded; the
    server answers with the call the same directory gives in process, the student's call."""
    from compress.prune import PruneConfig, prune
    from compress.quantize import QuantizeConfig, quantize
    from student.distill import DistillRunConfig, distill_student
    from student.format import direct_completion
    from student.generate import DirectStudent
    from tests.agent.lights_domain import CONTEXT, generate_tasks

    student = direct_student(tmp_path_factory.getbasetemp() / "shared")
    examples = [{"prompt": direct_prompt(t.input, CONTEXT), "completion": direct_completion(t.gold)}
                for t in generate_tasks(n_test=0)]
    texts = [e["prompt"] + e["completion"] for e in examples]
    manifest = prune(student, tmp_path / "pruned", PruneConfig(method="width", target_param_ratio=0.85), texts)
    assert manifest["target_met"] and manifest["params_after"] < manifest["params_before"]
    distill_student(examples * 4, DistillRunConfig(model=str(tmp_path / "pruned"), teacher=str(student),
                                                   output_dir=str(tmp_path / "healed"), learning_rate=3e-3,
                                                   max_steps=60, warmup_ratio=0.0, bf16=False))
    quantize(tmp_path / "healed", tmp_path / "int8w", QuantizeConfig(method="int8-weight"))
    quantize(tmp_path / "healed", tmp_path / "onnx-int8", QuantizeConfig(method="onnx-int8"))

    request = "turn on the kitchen light"
    expected = DirectStudent(student).predict(request, {"now": NOW}).call
    assert expected["name"] == "switch"
    for name in ("int8w", "onnx-int8"):  # torch's int8 kernels, and the model exported to ONNX Runtime
        in_process = DirectStudent(tmp_path / name).predict(request, {"now": NOW}).call
        with StudentServer(tmp_path / name, port=0, api_key=KEY, name=f"lights-{name}") as server:
            switch = [t for t in DOMAIN.actions if t.name == "switch"]
            message = chat(server).bind_tools(DOMAIN.tools + switch).invoke([HumanMessage(TEACHER_REQUEST)])
        call, = message.tool_calls
        assert {"name": call["name"], "arguments": call["args"]} == in_process == expected, name
