"""The scripted server speaks the OpenAI chat-completions protocol: the official ``openai``
client, over real HTTP on 127.0.0.1, gets what it would get from a real endpoint."""
import json
import threading
import time

import openai
import pytest

from supertiny.testing import ScriptedOpenAIServer, ScriptError, count_tokens, prompt_tokens

USER = [{"role": "user", "content": "what is the weather in paris?"}]
FIND_CITY = {"type": "function", "function": {
    "name": "find_city", "description": "Resolve a city name.",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}


def client(server: ScriptedOpenAIServer, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="k", **{"max_retries": 0, "timeout": 10, **options})


def ask(server: ScriptedOpenAIServer, **request):
    """One chat completion (a list of chunks when streaming), on a client closed afterwards."""
    with client(server) as openai_client:
        reply = openai_client.chat.completions.create(**{"model": "test-model", "messages": USER, **request})
        return list(reply) if request.get("stream") else reply


def test_text_completion_has_id_model_usage_and_stop():
    with ScriptedOpenAIServer([{"content": "It is sunny in Paris."}], api_key="k") as server:
        reply = ask(server)
        body = server.requests[0]
    assert reply.id and reply.created > 0 and reply.object == "chat.completion"
    assert reply.model == "test-model"
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == "It is sunny in Paris."
    assert choice.finish_reason == "stop" and choice.logprobs is None
    assert reply.usage.completion_tokens == count_tokens("It is sunny in Paris.") == 6
    assert reply.usage.prompt_tokens == prompt_tokens(body) > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert body["messages"] == USER and body["model"] == "test-model"


def test_tool_calls_carry_json_arguments_and_raw_strings_verbatim():
    script = [{"tool_calls": [{"name": "find_city", "arguments": {"name": "paris"}}], "model": "served-model"},
              {"tool_calls": [{"name": "find_city", "arguments": "{not json", "id": "call_bad"}]}]
    with ScriptedOpenAIServer(script) as server:
        good = ask(server, tools=[FIND_CITY])
        bad = ask(server, tools=[FIND_CITY])
    call = good.choices[0].message.tool_calls[0]
    assert good.choices[0].finish_reason == "tool_calls" and good.choices[0].message.content is None
    assert good.model == "served-model"
    assert call.type == "function" and call.id and call.function.name == "find_city"
    assert json.loads(call.function.arguments) == {"name": "paris"}
    assert bad.choices[0].message.tool_calls[0].function.arguments == "{not json"
    assert bad.choices[0].message.tool_calls[0].id == "call_bad"
    assert server.requests[0]["tools"] == [FIND_CITY]


def test_logprobs_cover_every_generated_token_with_top_alternatives():
    with ScriptedOpenAIServer([{"content": "Hi there!"},
                               {"tool_calls": [{"name": "find_city", "arguments": {"name": "paris"}}]}]) as server:
        text = ask(server, logprobs=True, top_logprobs=3)
        call = ask(server, tools=[FIND_CITY], logprobs=True, top_logprobs=1)
    entries = text.choices[0].logprobs.content
    assert [e.token for e in entries] == ["Hi", "there", "!"]
    for entry in entries:
        assert entry.logprob < 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # the sampled token is the most likely
        assert [alt.logprob for alt in entry.top_logprobs] == sorted((alt.logprob for alt in entry.top_logprobs),
                                                                     reverse=True)
    call_tokens = [e.token for e in call.choices[0].logprobs.content]
    assert call_tokens[0] == "find_city" and "paris" in call_tokens  # tool calls are generated tokens too
    assert len(call_tokens) == call.usage.completion_tokens


def test_stream_sends_content_and_argument_pieces_logprobs_and_a_usage_chunk():
    step = {"content": "Let me look that up.", "tool_calls": [{"name": "find_city", "arguments": {"name": "paris"}}]}
    with ScriptedOpenAIServer([step, step]) as server:
        whole = ask(server, tools=[FIND_CITY], logprobs=True, top_logprobs=2)
        chunks = list(ask(server, tools=[FIND_CITY], logprobs=True, top_logprobs=2, stream=True,
                          stream_options={"include_usage": True}))
    *body_chunks, usage_chunk = chunks
    assert usage_chunk.choices == [] and usage_chunk.usage.total_tokens == whole.usage.total_tokens
    assert all(c.usage is None for c in body_chunks)
    assert body_chunks[0].choices[0].delta.role == "assistant"
    assert body_chunks[-1].choices[0].finish_reason == "tool_calls"
    assert len({c.id for c in chunks}) == 1 and all(c.model == "test-model" for c in chunks)
    deltas = [c.choices[0].delta for c in body_chunks]
    content_pieces = [d.content for d in deltas if d.content]
    argument_pieces = [d.tool_calls[0].function.arguments for d in deltas if d.tool_calls]
    assert len(content_pieces) > 1 and "".join(content_pieces) == whole.choices[0].message.content
    assert len([p for p in argument_pieces if p]) > 1  # arguments arrive in pieces
    assert json.loads("".join(argument_pieces)) == {"name": "paris"}
    first_call_delta = next(d.tool_calls[0] for d in deltas if d.tool_calls)
    assert first_call_delta.id and first_call_delta.function.name == "find_city"
    streamed_logprobs = [e for c in body_chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed_logprobs] == [e.model_dump() for e in whole.choices[0].logprobs.content]


def test_stream_without_include_usage_has_no_usage_chunk():
    with ScriptedOpenAIServer([{"content": "hi"}]) as server:
        chunks = list(ask(server, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hi"


def test_chunk_delay_spaces_out_the_stream_and_usage_and_headers_can_be_scripted():
    step = {"content": "one two three", "chunk_delay": 0.1, "usage": {"prompt_tokens": 7}, "headers": {"x-bench": "1"}}
    with ScriptedOpenAIServer([step, {"content": "hi", "usage": {"completion_tokens": 40}}]) as server:
        with client(server) as streaming:
            started = time.perf_counter()
            raw = streaming.chat.completions.with_raw_response.create(
                model="test-model", messages=USER, stream=True, stream_options={"include_usage": True})
            chunks = raw.parse()
            next(chunks)
            first_chunk_after = time.perf_counter() - started
            *_, usage_chunk = chunks
            total = time.perf_counter() - started
            assert raw.headers["x-bench"] == "1"
        reply = ask(server)
    # 7 events (role, 3 tokens, finish, usage, [DONE]): the first comes at once, the rest 0.1 s apart
    assert total >= 0.6 and first_chunk_after < total - 0.5
    assert usage_chunk.usage.prompt_tokens == 7 and usage_chunk.usage.completion_tokens == 3
    assert usage_chunk.usage.total_tokens == 10
    assert reply.usage.completion_tokens == 40 and reply.usage.total_tokens == reply.usage.prompt_tokens + 40


def test_max_tokens_cuts_the_completion_and_reports_length():
    step = {"tool_calls": [{"name": "find_city", "arguments": {"name": "san francisco"}}]}
    with ScriptedOpenAIServer([step, {"content": "one two three four"}]) as server:
        cut_call = ask(server, tools=[FIND_CITY], max_completion_tokens=5)
        cut_text = ask(server, max_tokens=2)
    assert cut_call.choices[0].finish_reason == "length" and cut_call.usage.completion_tokens == 5
    arguments = cut_call.choices[0].message.tool_calls[0].function.arguments
    with pytest.raises(json.JSONDecodeError):  # a real server cut mid-call sends truncated JSON
        json.loads(arguments)
    assert cut_text.choices[0].message.content == "one two" and cut_text.choices[0].finish_reason == "length"


def test_wrong_api_key_is_401_with_an_openai_error_body():
    with ScriptedOpenAIServer([{"content": "never sent"}], api_key="right") as server:
        with openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0) as wrong_key:
            with pytest.raises(openai.AuthenticationError) as caught:
                wrong_key.chat.completions.create(model="test-model", messages=USER)
        with openai.OpenAI(base_url=server.base_url, api_key="right") as right_key:
            models = [m.id for m in right_key.models.list()]
        assert server.remaining == 1  # a refused request uses no script step
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert models == ["test-model"]


def test_429_is_retried_after_retry_after_and_500_surfaces_its_message():
    script = [{"status": 429}, {"content": "after the rate limit"}, {"status": 500, "body": "the GPU caught fire"},
              {"status": 429}]
    with ScriptedOpenAIServer(script) as server:
        with client(server, max_retries=1) as retrying:
            retried = retrying.chat.completions.create(model="test-model", messages=USER)
        with pytest.raises(openai.InternalServerError, match="the GPU caught fire") as server_error:
            ask(server)
        with pytest.raises(openai.RateLimitError) as rate_limited:
            ask(server)
    assert retried.choices[0].message.content == "after the rate limit"
    assert len(server.requests) == 4  # 429, its retry, 500, 429
    assert server_error.value.status_code == 500
    assert rate_limited.value.response.headers["retry-after-ms"] == "10"
    assert "Retry-After" in rate_limited.value.response.headers


def test_garbage_body_raises_on_the_client():
    with ScriptedOpenAIServer([{"raw": "garbage not json"}, {"raw": "<html>bad gateway</html>", "status": 502,
                                                             "content_type": "text/html"}]) as server:
        with pytest.raises((json.JSONDecodeError, openai.APIResponseValidationError)):
            ask(server)
        with pytest.raises(openai.InternalServerError) as bad_gateway:
            ask(server)
    assert bad_gateway.value.status_code == 502 and bad_gateway.value.response.text == "<html>bad gateway</html>"


def test_disconnect_and_delay_past_the_client_timeout_are_connection_errors():
    with ScriptedOpenAIServer([{"disconnect": True}, {"delay": 5, "content": "too late"}]) as server:
        with pytest.raises(openai.APIConnectionError):
            ask(server)
        started = time.perf_counter()
        with client(server, timeout=0.3) as impatient, pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model="test-model", messages=USER)
        assert time.perf_counter() - started < 2
    # close() cut the 5 s delay short instead of waiting for it


def test_a_running_out_script_answers_500_saying_so():
    with ScriptedOpenAIServer([{"content": "only one"}]) as server:
        ask(server)
        with pytest.raises(openai.InternalServerError, match="script exhausted"):
            ask(server)
    assert len(server.script_errors) == 1


def test_requests_openai_would_reject_are_400_and_use_no_step():
    unanswered = USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "find_city", "arguments": "{}"}}]}]
    orphan_tool = USER + [{"role": "tool", "tool_call_id": "call_9", "content": "x"}]
    with ScriptedOpenAIServer([{"content": "fine"}]) as server:
        for messages in (unanswered, orphan_tool, []):
            with pytest.raises(openai.BadRequestError):
                ask(server, messages=messages)
        with pytest.raises(openai.BadRequestError, match="logprobs"):
            ask(server, top_logprobs=2)
        assert server.remaining == 1
        answered = unanswered + [{"role": "tool", "tool_call_id": "call_1", "content": "{\"city\": \"Paris\"}"}]
        assert ask(server, messages=answered).choices[0].message.content == "fine"


def test_a_step_that_contradicts_tool_choice_is_a_script_conflict():
    call = {"tool_calls": [{"name": "find_city", "arguments": {"name": "paris"}}]}
    with ScriptedOpenAIServer([call, {"content": "no tool"}, call]) as server:
        with pytest.raises(openai.InternalServerError, match="script conflict"):
            ask(server, tools=[FIND_CITY], tool_choice="none")
        with pytest.raises(openai.InternalServerError, match="script conflict"):
            ask(server, tools=[FIND_CITY], tool_choice="required")
        forced = ask(server, tools=[FIND_CITY], tool_choice={"type": "function", "function": {"name": "find_city"}})
    assert forced.choices[0].message.tool_calls[0].function.name == "find_city"
    assert len(server.script_errors) == 2


def test_a_responder_answers_from_the_request():
    def responder(body):
        last = body["messages"][-1]
        if last["role"] == "tool":
            return {"content": f"resolved: {last['content']}"}
        return {"tool_calls": [{"name": "find_city", "arguments": {"name": "paris"}}]}

    with ScriptedOpenAIServer(responder) as server:
        first = ask(server, tools=[FIND_CITY]).choices[0].message
        messages = USER + [first.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "Paris"}]
        second = ask(server, tools=[FIND_CITY], messages=messages)
    assert second.choices[0].message.content == "resolved: Paris"


def test_bad_steps_are_refused_when_the_script_is_built():
    for bad in ({"contnet": "typo"}, {"content": "x", "status": 500}, {}, {"tool_calls": [{"args": {}}]},
                {"delay": -1, "content": "x"}, {"status": 200}, {"delay": 1}, "just a string"):
        with pytest.raises(ScriptError):
            ScriptedOpenAIServer([bad])


def test_close_stops_the_port_and_joins_threads():
    before = set(threading.enumerate())
    keep_alive = openai.OpenAI(base_url="http://unused/v1", api_key="k", max_retries=0, timeout=2)
    with keep_alive, ScriptedOpenAIServer([{"content": "a"}]) as server:
        url = server.base_url
        # the client's pooled connection stays open: close() must not wait for it
        keep_alive.with_options(base_url=url).chat.completions.create(model="test-model", messages=USER)
        started = time.perf_counter()
        server.close()
        assert time.perf_counter() - started < 1  # idle keep-alive threads are not waited out (30 s)
        assert set(threading.enumerate()) <= before
        with pytest.raises(openai.APIConnectionError):
            keep_alive.with_options(base_url=url).chat.completions.create(model="test-model", messages=USER)
