from datetime import datetime

import pytest

from tools.home import functions, timeexpr
from tools.home.catalog import CATALOG
from tools.home.tasks import TEMPLATES, generate_tasks
from tools.registry import get_domain
from supertiny.errors import UserError

NOW = datetime(2026, 3, 14, 9, 30)  # a Saturday


def test_generator_is_deterministic_and_seed_sensitive():
    a, b, c = generate_tasks(seed=3, n_train=50, n_dev=5, n_test=20), generate_tasks(seed=3, n_train=50, n_dev=5, n_test=20), generate_tasks(seed=4, n_train=50, n_dev=5, n_test=20)
    assert [(t.id, t.input, t.gold) for t in a] == [(t.id, t.input, t.gold) for t in b]
    assert [t.input for t in a] != [t.input for t in c]


def test_test_split_uses_unseen_phrasings_and_a_novel_catalog_slice():
    tasks = generate_tasks(seed=0, n_train=300, n_dev=30, n_test=100)
    train_templates = {t.meta["template"] for t in tasks if t.split == "train"}
    test_templates = {t.meta["template"] for t in tasks if t.split == "test"}
    assert train_templates and test_templates and not (train_templates & test_templates)
    held_out = ({s.title for s in CATALOG.songs if s.holdout} | {a for a, h in CATALOG.artists.items() if h}
                | {p for p, h in CATALOG.playlists.items() if h} | {c for c, (_, h) in CATALOG.cities.items() if h}
                | {d.device_id for d in CATALOG.devices if d.holdout})

    def values(task):
        return set(map(str, task.gold["arguments"].values()))

    assert not any(values(t) & held_out for t in tasks if t.split in ("train", "dev"))
    novel = [t for t in tasks if t.slice == "novel"]
    assert len(novel) == 30 and all(values(t) & held_out for t in novel)
    assert {t.slice for t in tasks if t.split == "test"} == {"novel", "seen"}


def test_gold_arguments_are_canonical_and_match_the_action_schemas():
    domain = get_domain("home")
    schemas = {tool.name: tool.args_schema for tool in domain.actions}
    for task in generate_tasks(seed=1, n_train=200, n_dev=0, n_test=0):
        schemas[task.gold["name"]].model_validate(task.gold["arguments"])  # raises if not
        args = task.gold["arguments"]
        if "time" in args:
            assert datetime.fromisoformat(args["time"]) > datetime.fromisoformat(task.context["now"])
        if "device_id" in args:
            assert args["device_id"] in {d.device_id for d in CATALOG.devices}


def test_utterances_vary_in_casing_and_contain_typos():
    tasks = generate_tasks(seed=0, n_train=400, n_dev=0, n_test=0)
    inputs = [t.input for t in tasks]
    assert any(i.isupper() for i in inputs) and any(i.islower() for i in inputs)
    names = {s.title.lower() for s in CATALOG.songs} | {a.lower() for a in CATALOG.artists}
    mentions = [t for t in tasks if t.gold["name"] == "play_music" and "artist" in t.gold["arguments"]]
    typos = [t for t in mentions if t.gold["arguments"]["artist"].lower() not in t.input.lower()]
    assert typos, "some artist mentions should carry a typo"
    assert len(typos) < len(mentions) / 2


@pytest.mark.parametrize("expression,expected", [
    ("tomorrow at 7am", "2026-03-15T07:00"),
    ("at 7:30 pm", "2026-03-14T19:30"),
    ("8am", "2026-03-15T08:00"),  # already past today: the next 8am
    ("on friday at 6:15 am", "2026-03-20T06:15"),
    ("in 2 hours", "2026-03-14T11:30"),
    ("tomorow at 6 am", "2026-03-15T06:00"),
    ("at noon", "2026-03-14T12:00"),
])
def test_resolve_datetime(expression, expected):
    assert functions.resolve_datetime(expression, NOW.isoformat())["datetime"] == expected


def test_resolve_duration_and_errors():
    assert functions.resolve_duration("an hour and a half") == {"duration": "PT1H30M"}
    assert functions.resolve_duration("90 seconds") == {"duration": "PT1M30S"}
    with pytest.raises(ValueError):
        functions.resolve_duration("whenever")
    with pytest.raises(ValueError):
        timeexpr.resolve("purple", NOW)


def test_lookup_tools_return_canonical_values_despite_typos_and_aliases():
    assert functions.search_music("bohemian rapsody", "song")[0]["name"] == "Bohemian Rhapsody"
    assert functions.search_music("the beatles", "artist")[0]["name"] == "The Beatles"
    assert functions.find_device("lounge", "lamp")[0]["device_id"] == "light.living_room"
    assert functions.find_city("nyc")["city"] == "New York"
    with pytest.raises(ValueError, match="no tv in garage"):
        functions.find_device("garage", "tv")


def test_every_intent_has_train_and_test_phrasings():
    for intent, pools in TEMPLATES.items():
        assert pools["train"] and pools["test"], intent


def test_unknown_domain_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown domain 'nope'"):
        get_domain("nope")
    bad = tmp_path / "nodomain.py"
    bad.write_text("X = 1\n")
    with pytest.raises(UserError, match="does not define DOMAIN"):
        get_domain(str(bad))
