"""Vocabulary trimming on a real (random-init) tiny Llama with a trained byte-level BPE tokenizer:
the kept texts tokenize and score exactly as before, any text still round-trips, the model
saves, reloads and shrinks by the removed rows, and a trimmed student distils from its teacher."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from typer.testing import CliRunner

from compress.prune import PruneConfig, count_params, prune
from compress.vocab import kept_token_ids, trim_vocabulary
from dataengine.store import Store
from student.distill import DistillRunConfig, distill_student
from student.format import direct_completion, direct_prompt
from student.manifest import read_manifest
from student.tiny import build_tiny_model
from supertiny.cli import app
from supertiny.errors import UserError
from tools.home.tasks import generate_tasks

TASKS = generate_tasks(seed=0, n_train=120, n_dev=0, n_test=0)
ALL_TEXTS = [direct_prompt(t.input, t.context) + direct_completion(t.gold) for t in TASKS]
# The texts a trimmed model must serve exactly: the weather requests only.
KEPT_TEXTS = [text for text, t in zip(ALL_TEXTS, TASKS) if t.gold["name"] == "get_weather"]
OTHER_TEXTS = ["Zyxwvut quxbazz, naïve café ünïcödé 😀", "turn the snug's lamp to 37 percent"]
SIZE = 300  # the 259 specials and byte-level alphabet, and a few of the commonest merges


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), ALL_TEXTS, vocab_size=1024, num_layers=2)


@pytest.fixture(scope="module")
def trimmed(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model, tokenizer, info = trim_vocabulary(model, tokenizer, KEPT_TEXTS, SIZE, tiny_dir)
    out = tmp_path_factory.mktemp("trimmed")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, info


def test_kept_texts_tokenize_and_score_exactly_as_before(tiny_dir: Path, trimmed: tuple[Path, dict]) -> None:
    out, info = trimmed
    keep = info["kept_token_ids"]
    assert info["before"] == 1024 and SIZE <= info["after"] == len(keep) < info["before"]
    old_tok, new_tok = AutoTokenizer.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(out)
    old_model, new_model = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoModelForCausalLM.from_pretrained(out)
    for text in KEPT_TEXTS[:8]:
        old_ids, new_ids = old_tok(text)["input_ids"], new_tok(text)["input_ids"]
        assert [keep[i] for i in new_ids] == old_ids
        with torch.no_grad():
            old_logits = old_model(torch.tensor([old_ids])).logits[0]
            new_logits = new_model(torch.tensor([new_ids])).logits[0]
        assert torch.allclose(new_logits, old_logits[:, keep], atol=1e-5)
    # special tokens keep their meaning under their new ids
    assert new_tok.convert_ids_to_tokens(new_model.config.eos_token_id) == "<|eos|>" == new_tok.eos_token
    assert new_tok.convert_ids_to_tokens(new_model.config.pad_token_id) == "<|pad|>"


def test_other_text_still_round_trips_through_smaller_pieces(tiny_dir: Path, trimmed: tuple[Path, dict]) -> None:
    out, info = trimmed
    old_tok, new_tok = AutoTokenizer.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(out)
    others = [text for text, t in zip(ALL_TEXTS, TASKS) if t.gold["name"] != "get_weather"][:20] + OTHER_TEXTS
    longer = 0
    for text in others:
        ids = new_tok(text)["input_ids"]
        assert all(0 <= i < info["after"] for i in ids)
        assert new_tok.decode(ids) == text
        longer += len(ids) > len(old_tok(text)["input_ids"])
    assert longer > 0  # some tokens of those texts were removed, so they take more pieces now


def test_trimmed_model_is_smaller_by_the_removed_rows_and_generates(tiny_dir: Path, trimmed: tuple[Path, dict]) -> None:
    out, info = trimmed
    old, new = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoModelForCausalLM.from_pretrained(out)
    hidden = old.config.hidden_size
    assert new.config.vocab_size == info["after"] == len(AutoTokenizer.from_pretrained(out))
    assert count_params(old) - count_params(new) == (info["before"] - info["after"]) * hidden  # tied: one table
    assert new.get_output_embeddings().weight is new.get_input_embeddings().weight
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer(KEPT_TEXTS[0], return_tensors="pt")
    generated = new.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_every_kept_token_is_still_built_as_before(tiny_dir: Path, trimmed: tuple[Path, dict]) -> None:
    out, info = trimmed
    keep = info["kept_token_ids"]
    old_tok, new_tok = AutoTokenizer.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(out)
    checked = 0
    for token in new_tok.get_vocab():
        text = new_tok.convert_tokens_to_string([token])
        if token in new_tok.all_special_tokens or "\ufffd" in text:  # a lone UTF-8 byte is no text
            continue
        # the token's own text: its merges and their parts survived, so it comes out the same
        assert [keep[i] for i in new_tok(text)["input_ids"]] == old_tok(text)["input_ids"], token
        checked += 1
    assert checked > 200


def test_size_counts_the_commonest_tokens_first(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    small, large = kept_token_ids(tokenizer, KEPT_TEXTS, 300), kept_token_ids(tokenizer, KEPT_TEXTS, 600)
    assert set(range(300)) <= set(small) and set(range(600)) <= set(large) and set(small) < set(large)


def test_prune_trims_the_vocabulary_then_thins_layers_to_the_budget(tiny_dir: Path, tmp_path: Path) -> None:
    config = PruneConfig(target_param_ratio=0.6, method="width", vocab_size=SIZE, calibration_samples=8)
    manifest = prune(tiny_dir, tmp_path / "p", config, KEPT_TEXTS, vocabulary_texts=KEPT_TEXTS)
    assert manifest["method"] == "vocabulary_trim+activation_importance_width"
    assert manifest["vocabulary"]["before"] == 1024 and manifest["vocabulary"]["after"] < 1024
    assert manifest["width"] is not None and manifest["target_met"] is True
    assert manifest["params_after"] <= 0.6 * manifest["params_before"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    assert count_params(model) == manifest["params_after"] == read_manifest(tmp_path / "p")["params_after"]
    assert model.config.vocab_size == manifest["vocabulary"]["after"]


def test_bad_vocabulary_requests_are_user_errors(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="vocabulary texts"):
        prune(tiny_dir, tmp_path / "p", PruneConfig(vocab_size=SIZE), KEPT_TEXTS)
    with pytest.raises(UserError, match="vocab_size=0"):
        prune(tiny_dir, tmp_path / "p", PruneConfig(vocab_size=0), KEPT_TEXTS, vocabulary_texts=KEPT_TEXTS)
    # A word-level tokenizer has no merges to keep consistent: refused, naming the model.
    words = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with pytest.raises(UserError, match="byte-level BPE") as error:
        trim_vocabulary(model, PreTrainedTokenizerFast(tokenizer_object=words), KEPT_TEXTS, SIZE, "word-model")
    assert "word-model" in str(error.value) and "\n" not in str(error.value)


def test_a_trimmed_student_distils_from_its_untrimmed_teacher(tiny_dir: Path, trimmed: tuple[Path, dict],
                                                              tmp_path: Path) -> None:
    out, _ = trimmed
    examples = [{"prompt": direct_prompt(t.input, t.context), "completion": " " + direct_completion(t.gold).strip()}
                for t in TASKS if t.gold["name"] == "get_weather"]
    config = DistillRunConfig(model=str(out), teacher=str(tiny_dir), output_dir=str(tmp_path / "kd"), loss="fkl",
                              learning_rate=1e-3, max_steps=3, warmup_ratio=0.0, logging_steps=1, bf16=False)
    manifest = read_manifest(distill_student(examples, config))
    history = manifest["loss_history"]
    # The student is the teacher over fewer tokens: on the texts it keeps, the two distributions
    # (the teacher's renormalised over the student's tokens) start out identical.
    assert history[0]["kd"] == pytest.approx(0.0, abs=1e-5)
    assert history[-1]["kd"] >= 0.0 and all(entry["loss"] > 0 for entry in history)


def test_cli_prune_with_vocab_keeps_the_datasets_tokens_and_needs_a_dataset(tiny_dir: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "cli.db")
    store.add_tasks(TASKS)
    db = ["--db", str(store.path)]
    built = CliRunner().invoke(app, [*db, "dataset", "build", "weather", "--from-gold", "--domain", "home"])
    assert built.exit_code == 0, built.output
    missing = CliRunner().invoke(app, [*db, "compress", "prune", str(tiny_dir), "--out", str(tmp_path / "x"),
                                       "--vocab", str(SIZE)])
    assert missing.exit_code != 0 and "--calibration-dataset" in str(missing.exception)
    assert not (tmp_path / "x").exists()
    result = CliRunner().invoke(app, [*db, "compress", "prune", str(tiny_dir), "--out", str(tmp_path / "v"),
                                      "--method", "width", "--keep", "0.7", "--vocab", str(SIZE),
                                      "--calibration-dataset", "weather", "--json"])
    assert result.exit_code == 0, result.output
    row, = json.loads(result.stdout)
    manifest = read_manifest(tmp_path / "v")
    assert row["removed"]["vocabulary"] == f"1024 -> {manifest['vocabulary']['after']} tokens"
    assert manifest["vocabulary"]["from_texts"] == len(TASKS)  # every pair of the dataset, not the 64 calibration ones
    assert manifest["width"]["calibration_loss_on"] == "completions of 64 examples"  # the dataset's pairs
    assert store.model_by_path(str((tmp_path / "v").resolve())).name.endswith("vocab-width-pruned0.7")
    new_tok = AutoTokenizer.from_pretrained(tmp_path / "v")
    assert all(new_tok.decode(new_tok(text)["input_ids"]) == text for text in ALL_TEXTS)
