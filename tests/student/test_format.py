import pytest

from student.format import PROMPT_END, direct_completion, direct_prompt, format_call, parse_call


def test_prompt_layout():
    prompt = direct_prompt("  turn off the kitchen lights \n", {"now": "2026-03-14T09:30", "weekday": "Saturday"})
    assert prompt == "now=2026-03-14T09:30 weekday=Saturday\nturn off the kitchen lights\n=>"
    assert prompt.endswith(PROMPT_END)


def test_prompt_without_context_has_no_context_line():
    assert direct_prompt("hi", None) == "hi\n=>"
    assert direct_prompt("hi", {}) == "hi\n=>"


def test_completion_is_the_call_after_one_space():
    call = {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}
    assert direct_completion(call) == ' control_device(device_id="light.kitchen", action="off")'


@pytest.mark.parametrize(
    "call",
    [
        {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}},
        {"name": "set_temperature", "arguments": {"device_id": "climate.living", "temperature": 21.5}},
        {"name": "set_volume", "arguments": {"level": 7, "muted": False}},
        {"name": "create_reminder", "arguments": {"text": 'call mom, then say "hi"', "minutes": -3}},
        {"name": "note", "arguments": {"text": "a=b, c=(d)", "tags": "x,y"}},
        {"name": "note", "arguments": {"text": "back\\slash and unicode: café ☕"}},
        {"name": "list_devices", "arguments": {}},
    ],
)
def test_format_parse_round_trip(call):
    assert parse_call(format_call(call)) == call
    assert parse_call(direct_completion(call)) == call


def test_none_arguments_are_omitted():
    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": None}}
    assert format_call(call) == 'get_weather(city="Paris")'
    assert parse_call(format_call(call)) == {"name": "get_weather", "arguments": {"city": "Paris"}}


def test_parse_reads_only_the_first_line():
    assert parse_call(' stop(x=1)\nstart(y=2)') == {"name": "stop", "arguments": {"x": 1}}


def test_parse_keeps_unquoted_words_as_strings():
    assert parse_call("turn(action=off, level=3)") == {"name": "turn", "arguments": {"action": "off", "level": 3}}


@pytest.mark.parametrize(
    "text",
    ["", "   ", "hello world", "control_device(", "control_device(device_id=)x", "1abc()", "f(=1)", "f(x)"],
)
def test_garbage_is_not_a_call(text):
    assert parse_call(text) is None
