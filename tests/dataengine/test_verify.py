import pytest

from dataengine.verify import compare_calls

GOLD = {"name": "set_alarm", "arguments": {"time": "2026-03-15T07:00"}}


@pytest.mark.parametrize("predicted,exact", [
    ({"name": "set_alarm", "arguments": {"time": "2026-03-15T07:00"}}, True),
    ({"name": "set_alarm", "arguments": {"time": "2026-03-15T07:00:00"}}, True),  # same instant
    ({"name": "set_alarm", "arguments": {"time": "2026-03-15T07:01"}}, False),
    ({"name": "set_timer", "arguments": {"time": "2026-03-15T07:00"}}, False),
    (None, False),
])
def test_alarm_times_compare_by_value(predicted, exact):
    assert compare_calls(predicted, GOLD)["exact"] is exact


def test_strings_normalize_case_punctuation_and_nulls_equal_missing():
    gold = {"name": "play_music", "arguments": {"song": "Isn't She Lovely", "artist": "Stevie Wonder"}}
    pred = {"name": "play_music", "arguments": {"song": "isn't she lovely", "artist": "stevie  wonder", "playlist": None}}
    assert compare_calls(pred, gold)["exact"]


def test_durations_compare_by_length_and_numbers_by_value():
    assert compare_calls({"name": "set_timer", "arguments": {"duration": "PT90M"}},
                         {"name": "set_timer", "arguments": {"duration": "PT1H30M"}})["exact"]
    assert compare_calls({"name": "c", "arguments": {"value": "40"}}, {"name": "c", "arguments": {"value": 40}})["exact"]


def test_partial_arguments_give_partial_f1():
    gold = {"name": "add_to_playlist", "arguments": {"song": "Hello", "playlist": "Road Trip"}}
    result = compare_calls({"name": "add_to_playlist", "arguments": {"song": "Hello", "playlist": "Roadtrip"}}, gold)
    assert not result["exact"] and result["name_match"]
    assert result["arg_f1"] == pytest.approx(0.5) and result["mismatched_args"] == ["playlist"]
    wrong_name = compare_calls({"name": "play_music", "arguments": {"song": "Hello"}}, gold)
    assert wrong_name["arg_f1"] == 0.0 and not wrong_name["name_match"]
