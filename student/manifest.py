"""The manifest every model directory carries: what it is and where it came from.

``supertiny_manifest.json`` holds ``kind`` (base, student, pruned, quantized), ``parent``
(the model directory it was made from), ``dataset`` (name, version, id it was trained on),
``config`` (the exact config that produced it) and measured facts (params, bytes).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MANIFEST_NAME = "supertiny_manifest.json"


def write_manifest(model_dir: str | Path, **fields: Any) -> dict[str, Any]:
    manifest = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}
    path = Path(model_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The manifest, or ``{}`` for a plain Hugging Face model directory without one."""
    path = Path(model_dir) / MANIFEST_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def dir_bytes(path: str | Path) -> int:
    """Bytes on disk of every file under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def inherited_field(model_dir: str | Path, name: str) -> Any:
    """``name`` from the model's manifest (top level, else its ``lineage``), else from its nearest
    parent's: a pruned or quantized student keeps the format and names it was trained with."""
    seen: set[Path] = set()
    current: Path | None = Path(model_dir)
    while current is not None and current not in seen:
        seen.add(current)
        manifest = read_manifest(current) if current.is_dir() else {}
        value = manifest.get(name)
        if value is None:
            value = (manifest.get("lineage") or {}).get(name)
        if value:
            return value
        current = Path(manifest["parent"]) if manifest.get("parent") else None
    return None
