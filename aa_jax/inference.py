"""Predictions of learned adapters on new text: :func:`predict` and ``aa-jax predict``.

A classification prediction is ``{"label": NAME, "probabilities": {NAME: p, ...}}`` (the
softmax of the head's logits), a regression prediction ``{"score": x}``. Texts are
tokenised as in training (the folder's max length, pairs truncated longest-first) and
computed in fixed-shape batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aa_jax.data import pipeline
from aa_jax.errors import UserError
from aa_jax.export import Adapters, load_adapters
from aa_jax.models.head import model_inputs
from aa_jax.params import merge


def _logits_fn(adapters: Adapters):
    model, drop = adapters.model, adapters.drop_first

    @jax.jit
    def logits(params, frozen, batch):
        out, _ = model.apply({"params": merge(params, frozen)}, **model_inputs(model, batch),
                             deterministic=True, adapter_drop=drop or None)
        return out.astype(jnp.float32)

    return logits


def _columns(adapters: Adapters, texts: Sequence[str],
             text_pairs: Sequence[str] | None) -> tuple[list[str], ...]:
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(text_pairs, str):
        text_pairs = [text_pairs]
    pair_task = len(adapters.task.text_columns) == 2
    if pair_task and text_pairs is None:
        raise UserError(f"These adapters classify sentence pairs "
                        f"({' + '.join(adapters.task.text_columns)}); give the second "
                        f"sentences too (text_pairs=..., --text-pair or a second column).")
    if not pair_task and text_pairs is not None:
        raise UserError(f"These adapters classify single sentences "
                        f"({adapters.task.text_columns[0]}); leave out the second sentences.")
    columns = (list(texts),) if text_pairs is None else (list(texts), list(text_pairs))
    if len(columns) == 2 and len(columns[0]) != len(columns[1]):
        raise UserError(f"Got {len(columns[0])} texts but {len(columns[1])} second texts; "
                        f"give one second text per text.")
    return columns


def predict(adapters: Adapters | str | Path, texts: Sequence[str] | str,
            text_pairs: Sequence[str] | str | None = None, batch_size: int = 32,
            progress: bool = False) -> list[dict]:
    """Predictions of ``adapters`` (an :class:`~aa_jax.export.Adapters`, or a folder or Hub
    repo id to load) for ``texts`` (and ``text_pairs`` for a sentence-pair task).

    >>> predict(adapters, ["a gripping film"])  # doctest: +SKIP
    [{'label': 'positive', 'probabilities': {'negative': 0.08, 'positive': 0.92}}]
    """
    if not isinstance(adapters, Adapters):
        adapters = load_adapters(adapters)
    if batch_size < 1:
        raise UserError("batch_size must be a positive integer.")
    columns = _columns(adapters, texts, text_pairs)
    encoded = pipeline.encode(adapters.tokenizer, columns, adapters.max_length)
    n = len(encoded)
    order = pipeline.length_order(encoded)  # short batches pad to short widths
    batches: Iterable = pipeline.batches(encoded, np.zeros(n, np.int32), batch_size,
                                         order=order)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=pipeline.num_batches(n, batch_size), unit="batch",
                       desc="predict")
    logits_of = _logits_fn(adapters)
    out = []
    for batch in batches:
        logits = np.asarray(logits_of(adapters.params, adapters.frozen, batch))
        out.append(logits[batch["weights"] != 0])
    logits = (pipeline.in_dataset_order(order, np.concatenate(out)) if out
              else np.zeros((0, adapters.task.num_labels)))
    if not np.isfinite(logits).all():  # never print NaN as if it were a prediction
        bad = int(np.flatnonzero(~np.isfinite(logits).all(axis=1))[0])
        raise UserError(f"The adapters in {adapters.folder} give no finite prediction for "
                        f"text {bad + 1}; their weights or base model are broken: get or "
                        f"export them again.")
    return [_prediction(adapters.task, row) for row in logits]


def _prediction(task, logits: np.ndarray) -> dict:
    if task.is_regression:
        return {"score": float(logits[0])}
    z = logits.astype(np.float64) - np.max(logits)
    p = np.exp(z) / np.sum(np.exp(z))
    names = task.label_names
    return {"label": names[int(np.argmax(p))],
            "probabilities": {name: float(q) for name, q in zip(names, p)}}


def read_texts(path: str | Path, adapters: Adapters) -> tuple[list[str], list[str] | None]:
    """The texts of an input file (``.jsonl``, ``.json``, ``.csv``, ``.tsv`` or
    ``.parquet``): the columns the adapters were trained on (their task's text columns),
    else ``text`` (and ``text_pair`` for a pair task)."""
    from aa_jax.data.readers import read_text_columns

    trained = list(adapters.task.text_columns)
    generic = ["text", "text_pair"][:len(trained)]
    texts = read_text_columns(Path(path), [trained, generic])
    return texts[0], (texts[1] if len(texts) == 2 else None)


def write_predictions(path: str | Path, predictions: list[dict]) -> None:
    from aa_jax.checkpoint import write_text_atomic

    # allow_nan=False: every line is valid JSON, or nothing is written.
    write_text_atomic(path, "".join(json.dumps(p, allow_nan=False) + "\n"
                                    for p in predictions))
