"""The text an adapter folder carries for people: the command that trained it, pasteable
into a shell, and the model card (``README.md``) with the Hub's metadata block, written
with huggingface_hub's ``ModelCard`` (the body is ours: the library has no template for
adapters whose layers a switch selected)."""

from __future__ import annotations

import dataclasses
import shlex


def reproduce_command(config) -> str:
    """The ``aa-jax train`` command of a run's config: its model, data, method, size and
    seed, and every other setting that is not the default."""
    from aa_jax.config import TrainConfig

    default, always = TrainConfig(), ("model", "task", "method", "train_size", "seed")
    words = ["aa-jax", "train"]
    for field in dataclasses.fields(TrainConfig):
        value, meta = getattr(config, field.name), field.metadata
        if not meta.get("cli", True) or field.name == "glue_dir" or (
                field.name == "task" and config.data):
            continue
        if value == getattr(default, field.name) and field.name not in always:
            continue
        flag = meta.get("flag", "--" + field.name.replace("_", "-"))
        if isinstance(value, bool):
            words += [flag] if value else []
        elif value is None:
            words += [flag, "full"] if field.name == "train_size" else []
        elif isinstance(value, (list, tuple)):
            words += [flag, ",".join(str(v) for v in value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)  # pasted into a shell, it runs exactly these words


def model_card(record: dict) -> str:
    """README.md of an adapter folder: the Hub's metadata block (huggingface_hub's
    ``ModelCardData``, so the Hub reads it as it writes it), then what the folder is, how
    it was made and how to use it."""
    from huggingface_hub import ModelCard, ModelCardData

    task, base = record["task"], record["base_model"]
    config = record.get("config") or {}
    glue_task = bool(config) and not config.get("data")
    data = ModelCardData(
        library_name="aa_jax", base_model=base["hub_id"] or base["name"],
        pipeline_tag="text-classification", metrics=list(task["metric_names"]),
        tags=["adapters", "adaptable-adapters", "aa_jax", "jax", "flax",
              record["architecture"]["adapter"]],
        datasets=["nyu-mll/glue"] if glue_task else None)
    scores = record.get("scores") or {}
    selected = record.get("selected_layers")
    depth = len(record["architecture"]["layers"])
    how = (f", {config.get('train_size') or 'all'} training examples, seed {config['seed']}"
           if "seed" in config else "")
    lines = [f"# {record['method']} adapters for {task['name']} on {base['name']}", "",
             f"Adapters trained with aa_jax {record['aa_jax_version']} (Adaptable Adapters, "
             f"Moosavi et al., NAACL 2022) on a frozen `{base['hub_id'] or base['name']}`"
             f"{' (GLUE ' + task['name'] + ')' if glue_task else ''}{how}.", ""]
    if selected is not None:
        lines += [f"- Selected layers: {selected} of {depth} (the switches' choices; the "
                  f"other layers compute the identity branch)."]
    kind = "regression" if task["is_regression"] else "labels " + ", ".join(task["label_names"])
    lines += [f"- Pooling: {record['pooling']}; max length {record['max_length']} tokens; "
              f"{kind}."]
    for split in ("dev", "test"):
        if split in scores:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in scores[split].items())
            lines.append(f"- {split}: {shown}")
    if record.get("command"):
        lines += ["", "Made by:", "", "```", record["command"], "```"]
    lines += ["", "Use:", "", "```python", "import aa_jax", "",
              "adapters = aa_jax.load_adapters(\"THIS_REPO_OR_FOLDER\")",
              "print(aa_jax.predict(adapters, [\"a sentence\"]))", "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))
