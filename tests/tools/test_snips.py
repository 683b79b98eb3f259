"""The snips domain: its importer on a small CESU-8 file always, and on the real benchmark files
in ../shared/data/snips when they are there (supertiny itself ships no SNIPS data)."""
import json
from collections import Counter
from pathlib import Path

import pytest

from dataengine.verify import compare_calls
from supertiny.errors import UserError
from tools.registry import get_domain
from tools.snips.tasks import decode_cesu8, load_tasks

SNIPS = Path(__file__).resolve().parents[3] / "shared" / "data" / "snips"
needs_snips = pytest.mark.skipif(not (SNIPS / "train_PlayMusic.json").is_file(),
                                 reason=f"SNIPS benchmark files not found at {SNIPS} (the shared data folder)")


def cesu8(text: str) -> bytes:
    """``text`` as upstream SNIPS writes it: UTF-8, but an astral character as two encoded surrogates."""
    out = bytearray()
    for char in text:
        offset = ord(char) - 0x10000
        units = [char] if offset < 0 else [chr(0xD800 + (offset >> 10)), chr(0xDC00 + (offset & 0x3FF))]
        for unit in units:
            out += unit.encode("utf-8", "surrogatepass")
    return bytes(out)


def test_cesu8_surrogate_pairs_are_joined_and_accents_kept():
    data = cesu8("Música 🍕")
    assert b"\xed\xa0\xbc" in data  # the high surrogate, UTF-8-encoded: what breaks a strict decode
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert decode_cesu8(data) == "Música 🍕"
    assert decode_cesu8("plain ascii".encode()) == "plain ascii"


def utterance(*pieces):
    return {"data": [{"text": p} if isinstance(p, str) else {"text": p[1], "entity": p[0]} for p in pieces]}


def test_utterances_become_tasks_with_gold_calls_and_slot_spans(tmp_path):
    document = {"PlayMusic": [
        utterance("play ", ("artist", "Björk"), " on ", ("service", "Deezer"), " 🍕"),
        utterance("Play music from ", ("service", "Lastfm"), " and ", ("service", "Deezer"), "."),
    ]}
    (tmp_path / "train_PlayMusic.json").write_bytes(cesu8(json.dumps(document, ensure_ascii=False)))
    first, second = load_tasks(tmp_path)
    assert first.id == "snips-train-PlayMusic-0000" and first.domain == "snips" and first.split == "train"
    assert first.input == "play Björk on Deezer 🍕"
    assert first.gold == {"name": "PlayMusic", "arguments": {"artist": "Björk", "service": "Deezer"}}
    assert first.meta["slots"] == [{"slot": "artist", "value": "Björk", "start": 5},
                                   {"slot": "service", "value": "Deezer", "start": 14}]
    assert second.gold["arguments"] == {"service": ["Lastfm", "Deezer"]}  # a repeated slot keeps both
    assert compare_calls(second.gold, second.gold)["exact"]


@pytest.mark.parametrize("name,content,message", [
    ("train_PlayMusic.json", {"Dance": []}, "unknown intent 'Dance'"),
    ("train_PlayMusic.json", {"PlayMusic": [utterance(("colour", "red"))]}, "slot 'colour' is not an argument"),
    ("train_PlayMusic.json", {"PlayMusic": [{"text": "hi"}]}, r"PlayMusic\[0\]: expected"),
    ("notes.json", {"PlayMusic": []}, "no SNIPS files"),
])
def test_bad_snips_files_say_where(tmp_path, name, content, message):
    (tmp_path / name).write_text(json.dumps(content))
    with pytest.raises(UserError, match=message):
        load_tasks(tmp_path)


def test_the_snips_domain_has_one_action_per_intent_with_its_slots():
    domain = get_domain("snips")
    assert domain.action_names == {"AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook",
                                   "SearchCreativeWork", "SearchScreeningEvent"}
    play = next(t for t in domain.actions if t.name == "PlayMusic")
    assert {"artist", "service", "track", "album", "playlist", "year"} <= set(play.args)
    assert "Björk" in play.invoke({"artist": "Björk"})


@needs_snips
def test_snips_train_imports_as_13084_tasks_with_intents_and_slots_intact(store):
    tasks = load_tasks(SNIPS)
    train = [t for t in tasks if t.split == "train"]
    assert len(train) == 13084 and sum(t.split == "dev" for t in tasks) == 700
    assert Counter(t.gold["name"] for t in train) == {
        "AddToPlaylist": 1818, "BookRestaurant": 1881, "GetWeather": 1896, "PlayMusic": 1914, "RateBook": 1876,
        "SearchCreativeWork": 1847, "SearchScreeningEvent": 1852}
    assert all(t.input[s["start"]:s["start"] + len(s["value"])] == s["value"] for t in train for s in t.meta["slots"])
    assert sum(len(t.meta["slots"]) for t in train) == 33958

    assert store.add_tasks(tasks) == (13784, 0)
    stored = {t.id: t for t in store.tasks(domain="snips", split="train")}
    assert len(stored) == 13084
    emoji = [t for t in stored.values() if "🍕" in t.input]
    assert [t.gold["arguments"]["playlist"] for t in emoji] == ["Pop Punk Perfection 🍕"]
    accented = stored["snips-train-AddToPlaylist-1008"]
    assert accented.input == "add a new entry for mon beau sapin in lela's música libre playlist"
    assert accented.gold["arguments"] == {"playlist": ["new", "música libre"], "entity_name": "mon beau sapin",
                                          "playlist_owner": "lela's"}
    assert not any("Ã" in t.input for t in stored.values())  # no Latin-1 mojibake anywhere
