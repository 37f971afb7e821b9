"""Adaptable adapters in a training loop of your own: MiniLM (installed offline), a few
sentences, optax, then save, load and predict. Run it with ``uv run python
docs/tutorial.py``; ``tests/test_tutorial.py`` runs it too."""

import sys

import jax
import optax

import aa_jax

texts = ["a gripping, beautiful film", "warm and very funny", "a joy from start to end",
         "dull and far too long", "a mess of a plot", "badly acted and boring"]
labels = [1, 1, 1, 0, 0, 0]
out = sys.argv[1] if len(sys.argv) > 1 else "runs/tutorial-adapters"

# The frozen encoder with a switched rational adapter in every layer (the paper's AA).
pre = aa_jax.load_pretrained("minilm")
arch = aa_jax.architecture_for("aa", pre.config.num_hidden_layers)
model, trainable, frozen = aa_jax.build_classifier(pre, arch, num_labels=2)

# One learning rate per group (adapters and head, switches, rationals), the frozen
# backbone outside the optimizer; any optax transformation can be chained on, e.g.
# optax.chain(tx, optax.add_decayed_weights(1e-4)).
steps = 30
tx = aa_jax.make_optimizer(None, steps, trainable, learning_rate=3e-3,
                           switch_learning_rate=0.15, rational_learning_rate=0.03)
state = aa_jax.init_state(trainable, tx)
train_step = aa_jax.make_train_step(model, tx)
batch = aa_jax.make_batch(pre, texts, labels)
key = jax.random.key(0)
for _ in range(steps):
    state, metrics = train_step(state, frozen, batch, key)  # the step folds in its number
print(f"loss {float(metrics['loss']):.4f}")
print("p(adapter) per layer:", {layer: round(p, 3) for layer, p in
                                aa_jax.switch_probabilities_of(state.trainable).items()})

# Save (switches resolved), load into the base model, predict.
aa_jax.save_adapters(out, state.trainable, architecture=arch, base_model=pre,
                     labels=["negative", "positive"], method="aa")
adapters = aa_jax.load_adapters(out)
for p in aa_jax.predict(adapters, ["a beautiful, funny film", "boring and badly made"]):
    print(p["label"], round(p["probabilities"][p["label"]], 3))
assert isinstance(tx, optax.GradientTransformation)
