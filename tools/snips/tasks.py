"""Read the SNIPS NLU benchmark (``sonos/nlu-benchmark``, 2017-06-custom-intent-engines) as tasks.

A file ``<split>_<Intent>.json`` holds ``{"<Intent>": [{"data": [{"text": "play "},
{"text": "Adele", "entity": "artist"}, ...]}, ...]}``: the pieces' texts joined are the
utterance, and the pieces with an ``entity`` are its slots. Each utterance becomes a task whose
gold call is ``<Intent>(slot=value, ...)``; ``meta.slots`` keeps every span in order with its
character offset, so slot-level metrics can be computed exactly.

The encoding trap: upstream ``train_PlayMusic.json`` writes characters beyond the BMP (an
emoji) as two UTF-8-encoded surrogates (CESU-8). A strict UTF-8 decode fails on it, and a
Latin-1 fallback would garble every accented name, so :func:`decode_cesu8` decodes the
surrogates and pairs them.
"""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from supertiny.errors import UserError
from tools.registry import Task
from tools.snips.functions import ACTION_FUNCTIONS

SLOTS = {fn.__name__: list(inspect.signature(fn).parameters) for fn in ACTION_FUNCTIONS}
FILE_NAME = re.compile(r"^(train|dev|test)_\w+\.json$")


def decode_cesu8(data: bytes) -> str:
    """UTF-8 in which a character beyond the BMP may be written as two encoded surrogates."""
    text = data.decode("utf-8", errors="surrogatepass")  # keeps the surrogate halves as code points
    return text.encode("utf-16-le", errors="surrogatepass").decode("utf-16-le")  # ...and pairs them


def load_tasks(path: Path) -> list[Task]:
    """Every utterance of a SNIPS directory (its ``train_*.json``, ``dev_*.json`` and ``test_*.json``
    files) or of one such file; the split is the file name's prefix."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"SNIPS data not found: {path}")
    files = sorted(p for p in path.iterdir() if FILE_NAME.match(p.name)) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path}: no SNIPS files in this directory (train_<Intent>.json, dev_<Intent>.json)")
    return [task for file in files for task in _file_tasks(file)]


def _file_tasks(file: Path) -> list[Task]:
    match = FILE_NAME.match(file.name)
    if not match:
        raise UserError(f"{file}: a SNIPS file is named <split>_<Intent>.json with split train, dev or test")
    split = match.group(1)
    try:
        document = json.loads(decode_cesu8(file.read_bytes()))
    except UnicodeError as exc:
        raise UserError(f"{file}: not UTF-8 (nor CESU-8): {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(document, dict) or not document:
        raise UserError(f"{file}: expected {{\"<Intent>\": [utterances]}}")
    tasks = []
    for intent, utterances in document.items():
        if intent not in SLOTS:
            raise UserError(f"{file}: unknown intent {intent!r}; the snips domain has {', '.join(SLOTS)}")
        if not isinstance(utterances, list):
            raise UserError(f"{file}: {intent}: expected a list of utterances")
        for index, utterance in enumerate(utterances):
            tasks.append(_task(file, split, intent, index, utterance))
    return tasks


def _task(file: Path, split: str, intent: str, index: int, utterance: Any) -> Task:
    where = f"{file}: {intent}[{index}]"
    pieces = utterance.get("data") if isinstance(utterance, dict) else None
    if not isinstance(pieces, list) or not pieces:
        raise UserError(f"{where}: expected {{\"data\": [pieces]}}")
    text, spans = "", []
    for number, piece in enumerate(pieces):
        if not isinstance(piece, dict) or not isinstance(piece.get("text"), str):
            raise UserError(f"{where}.data[{number}]: field 'text': a string is required")
        slot = piece.get("entity")
        if slot is not None:
            if slot not in SLOTS[intent]:
                raise UserError(f"{where}.data[{number}]: slot {slot!r} is not an argument of {intent}")
            spans.append({"slot": slot, "value": piece["text"], "start": len(text)})
        text += piece["text"]
    arguments: dict[str, Any] = {}
    for span in spans:  # a slot named twice keeps every value, in order, as a list
        slot, value = span["slot"], span["value"]
        if slot not in arguments:
            arguments[slot] = value
        elif isinstance(arguments[slot], list):
            arguments[slot].append(value)
        else:
            arguments[slot] = [arguments[slot], value]
    return Task(id=f"snips-{split}-{intent}-{index:04d}", domain="snips", split=split, input=text, context={},
                gold={"name": intent, "arguments": arguments},
                meta={"source": file.name, "index": index, "slots": spans})
