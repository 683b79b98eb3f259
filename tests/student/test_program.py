"""Program mode: teacher traces compile into one line that the domain's tools run back into the
teacher's final call."""
from types import SimpleNamespace

import pytest

from tests.conftest import store_planner_traces
from dataengine.curate import best_of_n, verify_traces
from student.program import (
    ProgramError, made_up_words, name_swapped_examples, parse_program, program_examples, program_from_trace,
    run_program, tool_defaults_of,
)
from student.tiny import train_tokenizer
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


def _example(request, plan):
    return {"prompt": f"now={CONTEXT['now']} weekday={CONTEXT['weekday']}\n{request}\n=>", "completion": " " + plan}


def test_name_swaps_make_up_every_copied_name_in_the_request_and_the_plan_alike():
    words = ["velvet", "orbit", "castle", "mirror", "harbor", "plume", "quartz", "meadow"]
    examples = [
        _example("Play Hey Jude by THE BEATLES please",
                 'search_music(query="hey jude", kind="song"); search_music(query="the beatles", kind="artist"); '
                 'play_music(song=$1[0].name, artist=$2[0].name)'),
        _example("what's the weather in paris tomorrow",
                 'find_city(name="paris"); resolve_datetime(expression="tomorrow", now=$now); '
                 'get_weather(city=$1.city, date=$2.date)'),
        # nothing copied from an open set: a time expression is not a name
        _example("wake me up at 7", 'resolve_datetime(expression="at 7", now=$now); set_alarm(time=$1.datetime)'),
        # the lookup corrected the spelling: "drems" is not in the request, so there is no span to swap
        _example("play dreams", 'search_music(query="drems"); play_music(song=$1[0].name)'),
    ]
    swapped = name_swapped_examples(examples, HOME, words, copies=3, seed=0)
    assert len(swapped) == 3 + 3  # the first two examples, three copies each

    for example in swapped:
        head, request = example["prompt"].removesuffix("\n=>").split("\n")
        assert head == f"now={CONTEXT['now']} weekday={CONTEXT['weekday']}"  # the context is untouched
        original = next(e for e in examples[:2] if len(parse_program(e["completion"])) == len(parse_program(example["completion"]))
                        and parse_program(e["completion"])[-1][0] == parse_program(example["completion"])[-1][0])
        new_plan, old_plan = parse_program(example["completion"]), parse_program(original["completion"])
        for (name, args), (old_name, old_args) in zip(new_plan, old_plan):
            assert name == old_name and args.keys() == old_args.keys()
            for key, value in args.items():
                if key in HOME.copied_names.get(name, ()):
                    # a made-up name of as many words, copied verbatim (case aside) from the new request
                    assert value != old_args[key] and len(value.split()) == len(old_args[key].split())
                    assert set(value.split()) <= set(words) and value.lower() in request.lower()
                else:
                    assert value == old_args[key]  # kind="song", references, the time expression
        if new_plan[-1][0] == "play_music":
            song, artist = new_plan[0][1]["query"], new_plan[1][1]["query"]
            # the request keeps its own words and its casing: Title Case and UPPER CASE stay so
            assert request == f"Play {song.title()} by {artist.upper()} please"
        else:
            assert request == f"what's the weather in {new_plan[0][1]['name']} tomorrow"
    # three different made-up names for the same example
    assert len({e["prompt"] for e in swapped}) == 6


def test_made_up_words_are_whole_lowercase_words_that_no_request_uses():
    texts = ["play hey jude by the beatles", "a velvet orbit castle", "a Mirror HARBOR", "a x9 plume_quartz"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=600)
    words = made_up_words(tokenizer, exclude={"play", "hey", "jude", "by", "the", "beatles"})
    assert {"velvet", "orbit", "castle"} <= set(words)
    assert not {"play", "jude", "beatles", "by"} & set(words)  # used by requests
    assert all(w.isalpha() and w.islower() and len(w) >= 3 for w in words)  # no "Mirror", "x9", "plume_quartz"
