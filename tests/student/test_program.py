"""Program mode: teacher traces compile into one line that the domain's tools run back into the
teacher's final call."""
from types import SimpleNamespace

import pytest

from tests.conftest import store_planner_traces
from dataengine.curate import best_of_n, verify_traces
from student.program import (
    ProgramError, parse_program, program_examples, program_from_trace, run_program, tool_defaults_of,
)
from tools.registry import get_domain

HOME = get_domain("home")
CONTEXT = {"now": "2026-03-14T09:30", "weekday": "Saturday"}


def row(name, args, result, error=None):
    return SimpleNamespace(name=name, args=args, result=result, error=error)


def test_final_arguments_become_references_to_the_lookups_that_returned_them():
    calls = [
        row("search_music", {"query": "fleetwod mac", "kind": "artist"}, [{"kind": "artist", "name": "Fleetwood Mac"}]),
        row("search_music", {"query": "drems", "kind": "any"},
            [{"kind": "song", "name": "Dreams", "artist": "Fleetwood Mac", "score": 0.9}]),
        row("find_city", {"name": "pariss"}, None, error="unknown city"),  # failed: never referenced
    ]
    final = {"name": "add_to_playlist", "arguments": {"song": "Dreams", "playlist": "Road Trip", "artist": "Fleetwood Mac"}}
    program = program_from_trace(calls, final, CONTEXT, tool_defaults_of(HOME))
    # The artist comes from the last lookup that returned it, so the first search is dropped;
    # kind="any" is search_music's default and is left out; the playlist was never looked up.
    assert program == ('search_music(query="drems"); '
                       'add_to_playlist(song=$1[0].name, playlist="Road Trip", artist=$1[0].artist)')


def test_context_values_in_lookup_arguments_become_context_references():
    calls = [row("resolve_datetime", {"expression": "tomorrow at 7am", "now": CONTEXT["now"]},
                 {"datetime": "2026-03-15T07:00", "date": "2026-03-15"})]
    final = {"name": "set_alarm", "arguments": {"time": "2026-03-15T07:00"}}
    program = program_from_trace(calls, final, CONTEXT)
    assert program == 'resolve_datetime(expression="tomorrow at 7am", now=$now); set_alarm(time=$1.datetime)'
    # Run with a different now: the tool, not the student, does the calendar arithmetic.
    call = run_program(parse_program(program), HOME, {"now": "2026-12-31T20:00"})
    assert call == {"name": "set_alarm", "arguments": {"time": "2027-01-01T07:00"}}


def test_novel_names_and_aliases_are_resolved_by_the_tools():
    program = ('find_device(room="the cellar", device_type="lamp"); '
               'control_device(device_id=$1[0].device_id, action="set", value=75)')
    assert run_program(parse_program(program), HOME, CONTEXT) == {
        "name": "control_device", "arguments": {"device_id": "light.basement", "action": "set", "value": 75}}


def test_semicolons_inside_strings_do_not_split_statements():
    program = parse_program('search_music(query="a; b"); play_music(song=$1[0].name)')
    assert [name for name, _ in program] == ["search_music", "play_music"]
    assert program[0][1] == {"query": "a; b"}


@pytest.mark.parametrize("text, message", [
    ("", "empty program"),
    ("play music now", "not a call"),
    ('play_music(song=$9[0].name)', "no statement 9"),
    ('search_music(query="hey jude"); play_music(song=$1[5].name)', "nothing at [5].name"),
    ('resolve_datetime(expression="7am", now=$later); set_alarm(time=$1.datetime)', "no 'later'"),
    ('set_alarm(time="x"); play_music(song="y")', "not a lookup tool"),
    ('search_music(query="hey jude")', "must call an action"),
    ('find_device(room="moon base", device_type="light"); control_device(device_id=$1[0].device_id, action="on")',
     "no room like"),
    ('play_music(song=$1..name)', "bad reference"),
])
def test_broken_programs_raise_program_error(text, message):
    with pytest.raises(ProgramError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_program(parse_program(text), HOME, CONTEXT)


def test_every_verified_planner_trace_compiles_into_a_program_that_reproduces_its_answer(store):
    tasks = HOME.generate_tasks(seed=3, n_train=40, n_dev=0, n_test=0)
    store.add_tasks(tasks)
    store_planner_traces(store, tasks, samples=1)
    verify_traces(store, domain="home", split="train")
    dataset, counts = best_of_n(store, name="p", domain="home", split="train", model="planner")
    examples = program_examples(store, f"{dataset.name}@{dataset.version}")
    assert len(examples) == counts["kept"] > 20
    gold = {task.input: task.gold for task in tasks}
    with_lookups = 0
    for example in examples:
        context_line, text = example["prompt"].split("\n")[:2]
        context = dict(pair.split("=", 1) for pair in context_line.split(" "))
        program = parse_program(example["completion"])
        with_lookups += len(program) > 1
        assert run_program(program, HOME, context) == gold[text]
    assert with_lookups > len(examples) / 2


@pytest.mark.parametrize("text, message", [
    ('search_music(query="hey jude"); play_music(song=$1[0].name, user="me")', "no argument user"),
    ('control_device(device_id="light.kitchen", action="explode")', "control_device: Input should be"),
    # The lookup says what it found: an artist's name does not fill the song argument.
    ('search_music(query="queen"); play_music(song=$1[0].name)', "'Queen' of kind 'artist', not 'song'"),
    ('search_music(query="kitchen disco", kind="playlist"); add_to_playlist(song=$1[0].name, playlist=$1[0].name)',
     "of kind 'playlist', not 'song'"),
])
def test_the_action_schema_rejects_what_the_action_cannot_take(text, message):
    with pytest.raises(ProgramError, match=message):
        run_program(parse_program(text), HOME, CONTEXT)


def test_a_name_fills_the_argument_of_its_own_kind():
    assert run_program(parse_program('search_music(query="queen"); play_music(artist=$1[0].name)'), HOME,
                       CONTEXT) == {"name": "play_music", "arguments": {"artist": "Queen"}}
    # A song's artist field is not a name of a kind: it fills the artist argument.
    assert run_program(parse_program('search_music(query="yellow", kind="song"); '
                                     'play_music(song=$1[0].name, artist=$1[0].artist)'), HOME, CONTEXT) == \
        {"name": "play_music", "arguments": {"song": "Yellow", "artist": "Coldplay"}}
