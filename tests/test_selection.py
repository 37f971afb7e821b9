"""The selection layer: every switched layer's gate from one module, the paper's Gumbel
switches and the hard top-k selector; AdapterDrop's flags; the temperature's one rule."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aa_jax import cli
from aa_jax.adapters import Architecture
from aa_jax.config import TrainConfig
from aa_jax.errors import UserError
from aa_jax.methods import METHODS
from aa_jax.selection import Selection, layers_off, selected_layers
from aa_jax.switch import ADAPTER, IDENTITY, GumbelSwitch, relaxed_one_hot

DEPTH, BATCH = 6, 3
LOGITS = np.float32([[0.3, -0.2], [0.0, 0.9], [0.1, 0.1], [-0.4, 0.5], [0.2, 0.0],
                     [0.0, 0.4]])


def _gates(arch, deterministic, logits=LOGITS, keys=None):
    return Selection(arch).apply({"params": {"logits": jnp.asarray(logits)}}, BATCH,
                                 deterministic, keys)


def _keys():
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        jax.random.key(7), jnp.arange(DEPTH, dtype=jnp.uint32))


def test_gumbel_gates_are_each_layers_own_switch():
    """The selection draws, layer by layer, what a switch of its own draws with that
    layer's key: the gates (and so a run's numbers) do not depend on where switches live."""
    for hard in (False, True):
        arch = METHODS["aa"].architecture(DEPTH, hard_switch=hard, temperature=0.5)
        gates = _gates(arch, False, keys=_keys())
        for i in range(DEPTH):
            want = GumbelSwitch(temperature=0.5, hard=hard).apply(
                {"params": {"logits": jnp.asarray(LOGITS[i])}}, BATCH, False, _keys()[i])
            np.testing.assert_array_equal(np.asarray(gates[i]), np.asarray(want))
    inference = _gates(METHODS["aa"].architecture(DEPTH), True)
    chosen = [i for i in range(DEPTH) if inference[i, 0, ADAPTER] == 1.0]
    assert chosen == [1, 3, 5]  # logits[adapter] > logits[identity]; layer 2's tie: identity
    assert selected_layers(LOGITS, METHODS["aa"].architecture(DEPTH)) == [1, 3, 5]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_keeps_exactly_k_layers_at_inference(k):
    arch = METHODS["aa_topk"].architecture(DEPTH, top_k=k)
    gates = np.asarray(_gates(arch, True))
    kept = [i for i in range(DEPTH) if gates[i, 0, ADAPTER] == 1.0]
    scores = LOGITS[:, ADAPTER] - LOGITS[:, IDENTITY]  # 1 and 3 (0.9), 5 (0.4), 2 and 4 ...
    assert kept == sorted(np.argsort(-scores, kind="stable")[:k].tolist())
    assert len(kept) == k and np.all(gates.sum(-1) == 1.0)
    assert selected_layers(LOGITS, arch) == kept
    # Ties go to the lower layer: at the zero init, the first k layers.
    assert selected_layers(np.zeros((DEPTH, 2)), arch) == list(range(k))


def test_top_k_forward_is_the_mask_and_its_gradient_the_relaxed_switches():
    arch = METHODS["aa_topk"].architecture(DEPTH, top_k=2, temperature=0.5)
    noise = jax.vmap(lambda key: jax.random.gumbel(key, (BATCH, 2)))(_keys())
    weights = jax.random.normal(jax.random.key(3), (DEPTH, BATCH))

    def loss(logits, gates_of):
        return jnp.sum(weights * gates_of(logits)[..., ADAPTER])

    def top_k(logits):
        return _gates(arch, False, logits, _keys())

    def relaxed(logits):
        return relaxed_one_hot(logits[:, None, :], noise, 0.5)

    gates = np.asarray(top_k(jnp.asarray(LOGITS)))
    assert set(np.unique(gates)) <= {0.0, 1.0}
    perturbed = LOGITS[:, None, :] + np.asarray(noise)
    scores = perturbed[..., ADAPTER] - perturbed[..., IDENTITY]  # [depth, batch]
    for b in range(BATCH):  # per example, the top 2 of the perturbed scores
        assert sorted(np.flatnonzero(gates[:, b, ADAPTER])) == \
            sorted(np.argsort(-scores[:, b])[:2])
    got = jax.grad(loss)(jnp.asarray(LOGITS), top_k)
    want = jax.grad(loss)(jnp.asarray(LOGITS), relaxed)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(np.asarray(want))) > 1e-3  # a real gradient, not zeros


def test_top_k_needs_k_between_one_and_the_switched_layers():
    for k in (None, 0, DEPTH + 1):
        with pytest.raises(UserError, match="top-k selector needs top_k"):
            METHODS["aa_topk"].architecture(DEPTH, top_k=k)


def test_top_k_takes_k_from_an_aa_run(tmp_path):
    from aa_jax.run_setup import build_architecture
    from aa_jax.learned import LEARNED_SCHEMA

    learned = {"schema": LEARNED_SCHEMA, "selected_layers": [0, 2, 5], "depth": DEPTH,
               "source": {}, "layers": []}
    (tmp_path / "architecture.json").write_text(json.dumps(learned))
    config = TrainConfig(method="aa_topk", architecture=str(tmp_path))
    assert build_architecture(config, DEPTH).top_k == 3
    config = TrainConfig(method="aa_topk", architecture=str(tmp_path), top_k=1)
    assert build_architecture(config, DEPTH).top_k == 1  # the flag wins
    with pytest.raises(UserError, match="top-k selector needs top_k"):
        build_architecture(TrainConfig(method="aa_topk"), DEPTH)


def test_adapterdrop_flags():
    assert layers_off(None, 0, 3) is None
    assert layers_off(2, 0, 3) == (True, True, False, False)
    np.testing.assert_array_equal(np.asarray(layers_off(jnp.int32(3), 2, 4)),
                                  [True, False, False])


BAD_TEMPERATURES = [math.inf, math.nan, True, 0.0, -0.5]


@pytest.mark.parametrize("value", BAD_TEMPERATURES)
def test_the_temperature_is_refused_in_one_sentence_everywhere(value, capsys):
    sentences = set()
    for build in (lambda: Architecture.uniform(2, temperature=value),
                  lambda: TrainConfig(temperature=value).validate(),
                  lambda: GumbelSwitch(temperature=value).init(jax.random.key(0), 1)):
        with pytest.raises(UserError) as e:
            build()
        sentences.add(str(e.value))
    if not isinstance(value, bool):  # the command line cannot say True
        assert cli.main(["train", "--temperature", str(value), "--epochs", "1"]) == 2
        sentences.add(capsys.readouterr().err.strip().removeprefix("aa-jax: error: "))
    assert len(sentences) == 1, sentences
    assert next(iter(sentences)).startswith("The switch temperature must be a positive "
                                            "finite number")


def test_one_construction_of_the_gumbel_switch():
    """Gumbel noise is drawn and relaxed in one place each (aa_jax.switch's
    relaxed_one_hot; the selection draws the noise per layer)."""
    root = Path(__file__).resolve().parents[1] / "aa_jax"
    sources = {p: p.read_text() for p in root.rglob("*.py")}
    assert [p.name for p, t in sources.items() if "softmax((logits + noise)" in t] == \
        ["switch.py"]
    assert sorted(p.name for p, t in sources.items() if "jax.random.gumbel(" in t) == \
        ["selection.py", "switch.py"]
