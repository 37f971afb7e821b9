"""Tokenisation and fixed-shape batching, in numpy, for jit-compiled training.

:func:`encode` runs a Hugging Face tokenizer once over a split (sentence pairs as segment
A / segment B, truncated to ``max_length``, unpadded). :func:`batches` then shuffles,
chunks, and pads each chunk to a few fixed shapes:

* the sequence axis is padded to the smallest *bucket* length (by default 32, 64, ...,
  ``max_length``) that holds the chunk's longest example, so ``jax.jit`` compiles one
  program per bucket instead of one per distinct length;
* the batch axis is always ``batch_size``: a short final chunk is filled with copies of
  its first example whose ``weights`` entry is 0. Copies of a real example (rather than
  all-padding rows) keep every row's attention mask non-empty, so the model's outputs
  stay finite, and the zero weight removes them from the loss and the metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True, eq=False)
class Encoded:
    """Token ids of one split, unpadded.

    ``input_ids[i]`` is ``int32[len_i]`` with ``len_i <= max_length``; ``extra`` holds the
    tokenizer's other per-token outputs by name, each a list like ``input_ids`` (a BERT
    tokenizer's segment ids, 0 for the first text and 1 for the second; none for
    RoBERTa's or MPNet's). ``pad_id`` fills ``input_ids``' sequence axis when batching,
    0 the others'.
    """

    input_ids: list[np.ndarray]
    extra: dict[str, list[np.ndarray]] = field(default_factory=dict)
    max_length: int = DEFAULT_MAX_LENGTH
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """``int64[N]`` token count of each example."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64,
                           count=len(self.input_ids))


def encode(tokenizer, texts: Sequence[Sequence[str]] | Sequence[str],
           max_length: int = DEFAULT_MAX_LENGTH) -> Encoded:
    """Tokenise one split.

    ``texts`` is one or two columns of ``N`` strings (``Examples.texts``), or a single
    list of strings. Two columns are passed to the tokenizer as a pair, so the second
    one is marked as the second segment the way the tokenizer's model expects; pairs are
    truncated longest-first to ``max_length`` tokens.
    """
    if isinstance(texts, str):
        raise TypeError("encode expects columns of strings, not one string")
    if len(texts) and isinstance(texts[0], str):
        texts = (texts,)
    if not 1 <= len(texts) <= 2:
        raise ValueError(f"encode expects one or two text columns, got {len(texts)}")
    first = list(texts[0])
    second = list(texts[1]) if len(texts) == 2 else None
    if second is not None and len(second) != len(first):
        raise ValueError("the two text columns have different lengths")
    if not first:
        return Encoded(input_ids=[], max_length=max_length, pad_id=_pad_id(tokenizer))
    out = tokenizer(first, second, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False)

    def arrays(rows):
        return [np.asarray(ids, dtype=np.int32) for ids in rows]

    return Encoded(input_ids=arrays(out["input_ids"]),
                   extra={k: arrays(v) for k, v in out.items() if k != "input_ids"},
                   max_length=max_length, pad_id=_pad_id(tokenizer))


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def default_buckets(max_length: int = DEFAULT_MAX_LENGTH) -> tuple[int, ...]:
    """Sequence-length buckets 32, 64, 128, ... below ``max_length``, then ``max_length``."""
    buckets, size = [], 32
    while size < max_length:
        buckets.append(size)
        size *= 2
    return (*buckets, max_length)


def bucket_length(n: int, buckets: Sequence[int] = default_buckets()) -> int:
    """The smallest bucket that holds ``n`` tokens (``buckets`` sorted ascending)."""
    for size in buckets:
        if n <= size:
            return int(size)
    raise ValueError(f"sequence of {n} tokens is longer than the largest bucket {buckets[-1]}")


def num_batches(num_examples: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for ``num_examples`` (steps per epoch)."""
    full, rest = divmod(num_examples, batch_size)
    return full + (1 if rest and not drop_last else 0)


def batch_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as batches carry them: ``float32`` targets or ``int32`` class ids."""
    labels = np.asarray(labels)
    return labels.astype(np.float32 if np.issubdtype(labels.dtype, np.floating) else np.int32)


def length_order(encoded: Encoded) -> np.ndarray:
    """The examples' indices from the shortest to the longest (ties in dataset order).

    Evaluation batches in this order (``batches(..., order=length_order(e))``) pad most
    chunks to a short bucket instead of the longest example of a random chunk; a row's
    prediction does not depend on the rows beside it, only (in its last bits of float32
    rounding) on the width it was padded to. Each width is a program of its own, so a
    split whose examples span several buckets compiles (or loads) one program per bucket.
    """
    return np.argsort(encoded.lengths, kind="stable")


def in_dataset_order(order: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` computed for the examples in ``order`` (one per example, filler rows
    dropped), put back in dataset order: example ``order[i]`` gets ``rows[i]``."""
    rows = np.asarray(rows)
    if len(rows) != len(order):
        raise ValueError(f"{len(rows)} rows for {len(order)} examples")
    out = np.empty_like(rows)
    out[order] = rows
    return out


def batches(encoded: Encoded, labels: np.ndarray, batch_size: int = 32,
            shuffle_seed: int | None = None, drop_last: bool = False,
            buckets: Sequence[int] | None = None,
            order: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield fixed-shape batches over one encoded split.

    Each batch is a dict of numpy arrays, ``B = batch_size`` and ``L`` the bucket of the
    longest example in the batch:

    * ``input_ids``, ``attention_mask`` and each of ``encoded.extra``: ``int32[B, L]``;
    * ``labels``: ``int32[B]`` class ids, or ``float32[B]`` when ``labels`` is floating;
    * ``weights``: ``float32[B]``, 1 for real examples and 0 for the filler rows of a
      short final batch.

    ``shuffle_seed=None`` keeps dataset order; an integer shuffles with
    ``np.random.default_rng(shuffle_seed)``, so a given seed always gives the same
    order. ``order`` (a permutation of the examples, e.g. :func:`length_order`) gives the
    order instead; it excludes ``shuffle_seed``. ``drop_last`` skips a short final batch
    instead of filling it. ``buckets`` defaults to :func:`default_buckets` of
    ``encoded.max_length``.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(encoded),):
        raise ValueError(f"labels {labels.shape} do not match {len(encoded)} encoded examples")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    buckets = tuple(sorted(buckets)) if buckets is not None else default_buckets(encoded.max_length)
    labels = batch_labels(labels)
    lengths = encoded.lengths

    if order is not None:
        if shuffle_seed is not None:
            raise ValueError("give batches either an order or a shuffle_seed, not both")
        order = np.asarray(order)
        if (order.ndim != 1 or not np.issubdtype(order.dtype, np.integer)
                or not np.array_equal(np.sort(order), np.arange(len(encoded)))):
            raise ValueError(f"order must be a permutation of the {len(encoded)} examples")
    elif shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(encoded))
    else:
        order = np.arange(len(encoded))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        real = len(chunk)
        if real < batch_size:
            if drop_last:
                return
            chunk = np.concatenate([chunk, np.full(batch_size - real, chunk[0])])
        width = bucket_length(int(lengths[chunk].max()), buckets)
        input_ids = np.full((batch_size, width), encoded.pad_id, dtype=np.int32)
        extra = {k: np.zeros((batch_size, width), dtype=np.int32) for k in encoded.extra}
        attention_mask = np.zeros((batch_size, width), dtype=np.int32)
        for row, i in enumerate(chunk):
            n = lengths[i]
            input_ids[row, :n] = encoded.input_ids[i]
            for k, rows in encoded.extra.items():
                extra[k][row, :n] = rows[i]
            attention_mask[row, :n] = 1
        weights = np.zeros(batch_size, dtype=np.float32)
        weights[:real] = 1.0
        yield {"input_ids": input_ids, **extra, "attention_mask": attention_mask,
               "labels": labels[chunk], "weights": weights}


def widen(batch: dict[str, np.ndarray], width: int,
          pad_id: int = 0) -> dict[str, np.ndarray]:
    """``batch`` with its sequence axis padded to ``width`` tokens (at least its own width).

    The new positions are padding like :func:`batches` writes it (``pad_id`` in
    ``input_ids``, 0 in the other per-token arrays, so attention mask 0), so the model
    masks them out of attention and pooling. Used to give several runs' batches of one
    step one shape.
    """
    own = batch["input_ids"].shape[1]
    extra = width - own
    if extra < 0:
        raise ValueError(f"cannot narrow a batch of width {batch['input_ids'].shape[1]} "
                         f"to {width}")
    if extra == 0:
        return batch
    def pad(k, v):  # the per-token arrays: [batch, own width]
        if v.ndim != 2 or v.shape[1] != own:
            return v
        return np.pad(v, ((0, 0), (0, extra)), constant_values=pad_id if k == "input_ids" else 0)

    return {k: pad(k, v) for k, v in batch.items()}
