import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_compilation_cache(tmp_path_factory):
    """In-process CLI calls use a compilation cache of the test session, not the user's."""
    os.environ["AA_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla-cache"))


@pytest.fixture(scope="session")
def minilm():
    """The real pretrained MiniLM checkpoint (offline, pip-installed with the project)."""
    from aa_jax.models.loader import load_pretrained

    return load_pretrained("minilm")


@pytest.fixture(scope="session")
def glue_dir():
    """The real GLUE Parquet files: $AA_JAX_GLUE_DIR or ../shared/glue beside the repo."""
    path = Path(os.environ.get("AA_JAX_GLUE_DIR", REPO.parent / "shared" / "glue"))
    if not (path / "rte").is_dir():
        pytest.skip("real GLUE data not found; set AA_JAX_GLUE_DIR")
    return path


def write_tiny_checkpoint(path: Path, layers: int = 2, hidden: int = 32, seed: int = 0,
                          prefix: str = "", pooler: bool = True) -> Path:
    """A tiny random BERT in Hugging Face's layout, with MiniLM's real tokenizer files."""
    import json
    import shutil

    import numpy as np
    from safetensors.numpy import save_file

    from aa_jax.models.loader import minilm_path

    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522,
              "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
              "intermediate_size": 2 * hidden, "max_position_embeddings": 128,
              "type_vocab_size": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "layer_norm_eps": 1e-12,
              "initializer_range": 0.02, "pad_token_id": 0}
    (path / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    state = {"embeddings.word_embeddings.weight": w(30522, hidden),
             "embeddings.position_embeddings.weight": w(128, hidden),
             "embeddings.token_type_embeddings.weight": w(2, hidden),
             "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
             "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (hidden, hidden),
                             "attention.self.key": (hidden, hidden),
                             "attention.self.value": (hidden, hidden),
                             "attention.output.dense": (hidden, hidden),
                             "intermediate.dense": (2 * hidden, hidden),
                             "output.dense": (hidden, 2 * hidden)}.items():
            state[p + name + ".weight"] = w(o, n)
            state[p + name + ".bias"] = np.zeros(o, np.float32)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[p + ln + ".weight"] = np.ones(hidden, np.float32)
            state[p + ln + ".bias"] = np.zeros(hidden, np.float32)
    if pooler:
        state["pooler.dense.weight"] = w(hidden, hidden)
        state["pooler.dense.bias"] = np.zeros(hidden, np.float32)
    save_file({prefix + k: v for k, v in state.items()}, str(path / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def fake_glue(tmp_path_factory):
    from fake_glue import write_fake_glue

    return write_fake_glue(tmp_path_factory.mktemp("glue"), tasks=("rte", "stsb", "cola"),
                           n_train=48, n_validation=24)


@pytest.fixture(scope="session")
def aa_run(tmp_path_factory, tiny_checkpoint, fake_glue):
    """A finished 2-epoch AA run on the tiny BERT (RTE, 24 examples)."""
    from aa_jax import cli

    out = tmp_path_factory.mktemp("runs") / "aa"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "aa", "--train-size", "24", "--epochs", "2",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--out", str(out)]) == 0
    return out
