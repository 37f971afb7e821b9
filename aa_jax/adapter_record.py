"""``adapter_config.json``: what an adapter folder records about its model, task and base
model, and the checks a folder from elsewhere must pass before it is loaded."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from aa_jax.errors import UserError
from aa_jax.models.registry import HUB_IDS

SCHEMA = "aa_jax.adapters/v1"
CONFIG_FILE = "adapter_config.json"
# The Hub ids of the presets, for the model card and for loading elsewhere.
HUB_BASE_MODELS = HUB_IDS
# The base model's sizes an adapter folder fits; another value of any is refused.
BASE_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
              "vocab_size")


def task_record(task) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(task).items()}


def task_from_record(d: dict, where: Path | str = CONFIG_FILE):
    from aa_jax.data.glue import Task

    fields = {f.name for f in dataclasses.fields(Task)}
    try:
        return Task(**{k: (tuple(v) if isinstance(v, list) else v)
                       for k, v in d.items() if k in fields})
    except (TypeError, ValueError) as e:
        raise UserError(f"The task in {where} is not valid ({e}); export the run "
                        f"again.") from None


def _is_int(value, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _strings(value, allow_none: bool = False) -> bool:
    return (allow_none and value is None) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value))


def check_adapter_record(record: Any, where: Path | str) -> dict:
    """``adapter_config.json``'s fields with the types and values ``load_adapters`` uses,
    or one sentence naming the first field that is not (a folder from elsewhere may have
    been edited by hand or by someone else)."""
    from aa_jax.config import DTYPES
    from aa_jax.models.head import POOLINGS

    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise UserError(f"{where} is not an aa_jax adapter config (schema {SCHEMA!r}); write "
                        f"the folder again with 'aa-jax export'.")
    task, base = record.get("task"), record.get("base_model")
    sizes = base.get("sizes") if isinstance(base, dict) else None
    checks = {
        "method": isinstance(record.get("method"), str),
        "architecture": isinstance(record.get("architecture"), dict),
        "selected_layers": record.get("selected_layers") is None or (
            isinstance(record["selected_layers"], list)
            and all(_is_int(i) for i in record["selected_layers"])),
        "pooling": isinstance(record.get("pooling"), str) and record["pooling"] in POOLINGS[1:],
        "dtype": isinstance(record.get("dtype"), str) and record["dtype"] in DTYPES,
        "max_length": _is_int(record.get("max_length"), 1),
        "drop_first": _is_int(record.get("drop_first", 0)),
        "command": isinstance(record.get("command", ""), str),
        "config": isinstance(record.get("config", {}), dict),
        "task": isinstance(task, dict),
        "task.name": isinstance(task, dict) and isinstance(task.get("name"), str),
        "task.text_columns": isinstance(task, dict) and _strings(task.get("text_columns")),
        "task.label_names": isinstance(task, dict) and _strings(task.get("label_names"), True),
        "task.is_regression": isinstance(task, dict) and isinstance(task.get("is_regression"),
                                                                    bool),
        "base_model": isinstance(base, dict),
        "base_model.name": isinstance(base, dict) and isinstance(base.get("name"), str),
        "base_model.path": isinstance(base, dict) and (
            base.get("path") is None or isinstance(base.get("path"), str)),
        "base_model.hub_id": isinstance(base, dict) and (
            base.get("hub_id") is None or isinstance(base.get("hub_id"), str)),
        "base_model.model_type": isinstance(base, dict) and isinstance(
            base.get("model_type", ""), str),
        "base_model.sizes": isinstance(sizes, dict) and set(sizes) == set(BASE_SIZES) and all(
            _is_int(v, 1) for v in sizes.values()),
    }
    bad = next((name for name, ok in checks.items() if not ok), None)
    if bad is not None:
        raise UserError(f"{where} has a missing or invalid {bad}; get the folder again or "
                        f"export the run again.")
    return record


def _weights_sha256(path: Path) -> str | None:
    """SHA-256 over the checkpoint's weight files (in name order), or None if it has none
    (a random backbone)."""
    files = sorted(p for pattern in ("*.safetensors", "pytorch_model.bin")
                   for p in path.glob(pattern)) if path.is_dir() else []
    return files_sha256(files) if files else None


def files_sha256(files: list[Path]) -> str:
    """SHA-256 over ``files``' bytes, in the order given (a checkpoint's weight files)."""
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def base_model_record(name: str, pretrained) -> dict:
    """Where the base model came from and what it is: its name as given, its Hub id and
    revision where known (a preset, a hub id, or a folder in the Hub's cache), the SHA-256
    of its weights, its family (``model_type``) and its sizes."""
    path = Path(pretrained.path)
    hub_id = HUB_BASE_MODELS.get(name)
    if hub_id is None and not Path(name).expanduser().exists() and name.count("/") == 1:
        hub_id = name
    revision = None
    parts = path.parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        revision = parts[parts.index("snapshots") + 1]
    sizes = {k: int(getattr(pretrained.config, k)) for k in BASE_SIZES}
    return {"name": name, "path": str(path.resolve()) if path.is_dir() else None,
            "hub_id": hub_id, "revision": revision,
            "weights_sha256": _weights_sha256(path),
            "model_type": pretrained.config.model_type, "sizes": sizes}
