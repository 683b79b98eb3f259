"""Tiny students of the lights domain (tests/agent/lights_domain.py), made once per test session and
shared by the local-backend, agent-training and serving tests:

- :func:`lights_store`: a real SQLite store with the domain's tasks, the planner's traces,
  verified, and the dataset ``lights@1`` built from them by best-of-N;
- :func:`agent_student`: an agent-mode student trained on that dataset's conversations through
  ``train_agent_and_register`` (what ``supertiny student train --format agent`` runs);
- :func:`direct_student`: a direct-mode student (request -> call).

A tiny Llama learns the conversation format and the calls' shape in 150 steps; whether it picks
the right room is not what the tests ask of it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoConfig

from agent.backends import make_chat_model
from agent.run import run_request
from dataengine.curate import best_of_n, verify_traces
from dataengine.store import Store
from student.format import direct_completion, direct_prompt
from student.tiny import build_tiny_model
from tests.agent.lights_domain import CONTEXT, generate_tasks

LIGHTS_DOMAIN = str(Path(__file__).parent / "agent" / "lights_domain.py")
_CACHE: dict[tuple[str, str], object] = {}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``supertiny ARGS`` in a subprocess, on one torch thread: tiny models are all synchronisation
    overhead, and two threads on a busy 2-core machine make a seconds-long command take minutes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "supertiny.cli", *args], env=env, capture_output=True, text=True)


def tiny_base(directory: Path, texts: list[str], **sizes: int) -> Path:
    """A tiny Llama whose tokenizer is trained on ``texts``, with room for long conversations."""
    path = build_tiny_model(directory, texts, **sizes)
    config = AutoConfig.from_pretrained(path)
    config.max_position_embeddings = 2048  # RoPE has no hard limit; this keeps generate() from warning
    config.save_pretrained(path)
    return path


def lights_store(root: Path) -> Store:
    """Tasks, planner traces (one per train task), verification and the dataset ``lights@1``."""
    key = (str(root), "store")
    if key not in _CACHE:
        store = Store(root / "lights.db")
        domain = store.domain(LIGHTS_DOMAIN)  # recorded: later calls (and the CLI) know it as "lights"
        store.add_tasks(generate_tasks())
        planner = make_chat_model("planner", domain=domain)
        for task in store.tasks(domain="lights", split="train"):
            result = run_request(domain, planner, task.input, task.context)
            store.add_trace(result, domain="lights", model="planner", input=task.input, context=task.context,
                            task_id=task.id)
        verify_traces(store, domain="lights", split="train")
        best_of_n(store, name="lights", domain="lights", split="train")
        _CACHE[key] = store
    return _CACHE[key]


def render_text(record: dict) -> str:
    """A chat record as plain text in the default template's layout: what the tiny tokenizer is
    trained on, so that its merges fit the texts the model will see."""
    from agent.local import chat_messages, text_protocol_messages

    turns = text_protocol_messages(chat_messages(record["messages"]), record["tools"])
    return "".join(f"<|im_start|>{turn['role']}\n{turn['content']}<|eos|>\n" for turn in turns)


def agent_student(root: Path) -> Path:
    """An agent-mode tiny student trained on ``lights@1``, registered in :func:`lights_store`."""
    key = (str(root), "agent")
    if key not in _CACHE:
        from dataengine.export import chat_records
        from student.train_agent import train_agent_and_register

        store = lights_store(root)
        texts = [render_text(record) for record in chat_records(store, "lights")]
        base = tiny_base(root / "agent-base", texts * 4, vocab_size=2048, hidden_size=128, num_layers=2)
        row = train_agent_and_register(store, dataset_ref="lights", base=str(base), out=root / "agent-student",
                                       max_steps=150, learning_rate=3e-3, batch_size=1, max_length=1024, bf16=False)
        _CACHE[key] = Path(row.path)
    return _CACHE[key]


def direct_student(root: Path) -> Path:
    """A direct-mode tiny student: request + context -> the switch call."""
    key = (str(root), "direct")
    if key not in _CACHE:
        from student.train import SFTRunConfig, train_student

        examples = [{"prompt": direct_prompt(t.input, CONTEXT), "completion": direct_completion(t.gold)}
                    for t in generate_tasks(n_test=0)] * 4
        base = tiny_base(root / "direct-base", [e["prompt"] + e["completion"] for e in examples])
        config = SFTRunConfig(base_model=str(base), output_dir=str(root / "direct-student"), learning_rate=3e-3,
                              max_steps=80, warmup_ratio=0.0)
        _CACHE[key] = train_student(examples, config, lineage={"function_names": ["switch"]})
    return _CACHE[key]
