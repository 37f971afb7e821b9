"""Bottleneck adapters, the adaptable adapter layer, and the architecture that places them.

An :class:`Architecture` says, for every transformer layer, whether it has an adapter,
which nonlinearity that adapter uses, and whether a Gumbel-softmax switch may turn it off.
Every method of the paper is one such description (see :mod:`aa_jax.methods`), and it is
plain data: it round-trips through JSON and is validated when read back.

The adapter sits after the feed-forward block (Pfeiffer / AdapterHub ``seq_bn``). With
``h`` the FFN output (after its dense + dropout), ``inp`` the FFN block's input and ``LN``
the layer's own pretrained output LayerNorm, ``x = LN(h + inp)`` and ``a = up(f(down(x)))``::

    no adapter      out = LN(h + inp)                                # the pretrained layer
    Pfeiffer        out = LN(a + h + inp)
    switched (AA)   training:  out = LN(h + inp + y_adapter * a + y_identity * x)
                    inference: out = LN(a + h + inp)  if the switch picks the adapter
                               out = LN(x + h + inp)  if it picks the identity

An AA model exported for inference (:mod:`aa_jax.export`) keeps the branch each switch
chose as a static layer: an adapter layer where it chose the adapter, and the *identity
branch* ``out = LN(x + h + inp)`` where it chose the identity (``identity_branch=True``).

This is what the released code computes: both branches of the switch keep the
transformer's residual ``h + inp``. The paper's "no skip connection" means that the
adapter branch has no skip of its own (it outputs ``a``, not ``a + x``); the identity
branch outputs ``x``. ``y`` are the switch weights in the released branch order
(identity, adapter), see :mod:`aa_jax.switch`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aa_jax.errors import UserError, check_record
from aa_jax.rational import Rational, check_degrees, check_init, check_version
from aa_jax.switch import ADAPTER, IDENTITY, GumbelSwitch

# Fixed nonlinearities an adapter may use besides the learnable rational.
FIXED_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "tanh": jnp.tanh,
    "swish": jax.nn.swish,
    "identity": lambda x: x,
}
ACTIVATIONS = ("rational", *FIXED_ACTIVATIONS)
SCHEMA = "aa_jax.architecture/v1"


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What one transformer layer carries.

    Attributes:
      adapter: whether the layer has a bottleneck adapter at all.
      activation: the adapter's nonlinearity, ``"rational"`` or one of FIXED_ACTIVATIONS.
      switch: whether a Gumbel-softmax switch chooses between the adapter and identity.
      identity_branch: a layer without adapter that computes the AA identity branch,
        ``LN(x + h + inp)``, instead of the pretrained ``LN(h + inp)``: what an exported AA
        model runs where the switch chose the identity.
    """

    adapter: bool = False
    activation: str = "relu"
    switch: bool = False
    identity_branch: bool = False

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise UserError(
                f"Unknown adapter activation {self.activation!r}; choose one of: "
                f"{', '.join(ACTIVATIONS)}.")
        if self.switch and not self.adapter:
            raise UserError("A layer cannot have a switch without an adapter; set "
                            "adapter=True or switch=False.")
        if self.identity_branch and self.adapter:
            raise UserError("A layer with an adapter cannot also be a static identity branch; "
                            "set identity_branch=False or adapter=False.")

    def describe(self) -> str:
        if self.identity_branch:
            return "x"
        if not self.adapter:
            return "-"
        return f"{self.activation}{' +switch' if self.switch else ''}"


NO_ADAPTER = LayerSpec()


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Where the adapters go and how they are built; one per run, serialisable.

    Attributes:
      layers: one :class:`LayerSpec` per transformer layer (its length is the depth).
      reduction_factor: bottleneck = hidden_size // reduction_factor (16: 48 for d=768).
      rational_version / rational_degrees / rational_init: the rational activation.
      temperature: the Gumbel-softmax temperature tau of every switch.
      hard_switch: straight-through switches (one-hot forward, soft backward).
      adapter: the adapter kind (:data:`KINDS`): ``seq_bn`` (the paper's) or ``lora``.
      lora_rank / lora_alpha: LoRA's rank r and scale alpha (the update is alpha / r * BA).
    """

    layers: tuple[LayerSpec, ...]
    reduction_factor: int = 16
    rational_version: str = "A"
    rational_degrees: tuple[int, int] = (5, 4)
    rational_init: str = "one"
    temperature: float = 0.1
    hard_switch: bool = False
    adapter: str = "seq_bn"
    lora_rank: int = 8
    lora_alpha: float = 16.0

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "rational_degrees", check_degrees(self.rational_degrees))
        if not self.layers:
            raise UserError("An architecture needs at least one layer; give one entry per "
                            "transformer layer.")
        if not isinstance(self.reduction_factor, int) or self.reduction_factor < 1:
            raise UserError(f"reduction_factor must be a positive integer, got "
                            f"{self.reduction_factor!r}; the paper uses 16.")
        check_version(self.rational_version)
        check_init(self.rational_init)
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise UserError(f"Switch temperature must be a positive number, got "
                            f"{self.temperature!r}; the paper uses 0.1.")
        if self.adapter not in KINDS:
            raise UserError(f"Unknown adapter kind {self.adapter!r}; choose one of: "
                            f"{', '.join(KINDS)}.")
        if (isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int)
                or self.lora_rank < 1):
            raise UserError(f"lora_rank must be a positive integer, got {self.lora_rank!r}.")
        if (isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float))
                or not self.lora_alpha > 0):
            raise UserError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}.")

    # -- constructors for the paper's methods -------------------------------------------
    @classmethod
    def none(cls, depth: int, **kw) -> Architecture:
        """No adapter anywhere: the plain pretrained encoder."""
        return cls(layers=(NO_ADAPTER,) * depth, **kw)

    @classmethod
    def uniform(cls, depth: int, activation: str = "relu", switch: bool = False,
                **kw) -> Architecture:
        """The same adapter in every layer (Pfeiffer baseline, AA, ablations)."""
        return cls(layers=(LayerSpec(True, activation, switch),) * depth, **kw)

    @classmethod
    def at_layers(cls, depth: int, layers: Sequence[int], activation: str = "rational",
                  **kw) -> Architecture:
        """Adapters only in ``layers`` (0-based): AA-focused and last-n."""
        chosen = validate_layer_indices(layers, depth)
        return cls(layers=tuple(LayerSpec(True, activation) if i in chosen else NO_ADAPTER
                                for i in range(depth)), **kw)

    # -- queries ------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def adapter_layers(self) -> tuple[int, ...]:
        return tuple(i for i, spec in enumerate(self.layers) if spec.adapter)

    @property
    def switched_layers(self) -> tuple[int, ...]:
        return tuple(i for i, spec in enumerate(self.layers) if spec.switch)

    def check_depth(self, depth: int) -> None:
        if self.depth != depth:
            raise UserError(
                f"The architecture describes {self.depth} layers but the model has {depth}; "
                f"use an architecture learned on a model of the same depth.")

    def describe(self) -> str:
        return " ".join(f"{i}:{s.describe()}" for i, s in enumerate(self.layers))

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = [dataclasses.asdict(s) for s in self.layers]
        d["rational_degrees"] = list(self.rational_degrees)
        return {"schema": SCHEMA, **d}

    @classmethod
    def from_dict(cls, d: Any) -> Architecture:
        """Builds an architecture from its :meth:`to_dict` form, validating every field."""
        fields = [f.name for f in dataclasses.fields(cls)]
        if isinstance(d, dict) and "adapter_skip" in d:
            # Written by aa_jax 0.1, whose switched layer had this non-released variant.
            if d["adapter_skip"] is not False:
                raise UserError("This architecture uses 'adapter_skip', a switched-layer "
                                "variant that aa_jax no longer has; retrain it, or delete "
                                "the field to use the released AA layer.")
            d = {k: v for k, v in d.items() if k != "adapter_skip"}
        d = check_record(d, SCHEMA, fields, "architecture")
        layers = d.get("layers")
        if not isinstance(layers, list):
            raise UserError("The architecture's 'layers' must be a list with one entry per "
                            "transformer layer.")
        specs = []
        for i, entry in enumerate(layers):
            if not isinstance(entry, dict) or set(entry) - {"adapter", "activation", "switch",
                                                            "identity_branch"}:
                raise UserError(f"Layer {i} of the architecture must be an object with keys "
                                f"adapter, activation, switch (and identity_branch).")
            for key, kind in (("adapter", bool), ("switch", bool), ("activation", str),
                              ("identity_branch", bool)):
                if key in entry and not isinstance(entry[key], kind):
                    raise UserError(f"Layer {i}: '{key}' must be a {kind.__name__}.")
            specs.append(LayerSpec(**entry))
        d["layers"] = specs
        checks = {"reduction_factor": int, "hard_switch": bool, "adapter": str,
                  "lora_rank": int}
        for key, kind in checks.items():
            if key in d and (not isinstance(d[key], kind) or
                             (kind is int and isinstance(d[key], bool))):
                raise UserError(f"Architecture field '{key}' must be a {kind.__name__}.")
        if "temperature" in d and (isinstance(d["temperature"], bool) or
                                   not isinstance(d["temperature"], (int, float))):
            raise UserError("Architecture field 'temperature' must be a number.")
        if "rational_degrees" in d:
            deg = d["rational_degrees"]
            if (not isinstance(deg, list) or len(deg) != 2 or
                    not all(isinstance(k, int) and not isinstance(k, bool) for k in deg)):
                raise UserError("Architecture field 'rational_degrees' must be two integers "
                                "[numerator, denominator], e.g. [5, 4].")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"The architecture is not valid JSON ({e.msg} at line {e.lineno}); "
                            f"fix or regenerate the file.") from None
        except (UnicodeDecodeError, RecursionError, TypeError) as e:
            raise UserError(f"The architecture is not valid JSON ({type(e).__name__}); fix or "
                            f"regenerate the file.") from None
        return cls.from_dict(d)


@dataclasses.dataclass(frozen=True)
class AdapterKind:
    """One kind of adapter: what the ``--adapter`` flag names.

    Attributes:
      name: the flag's value.
      description: one line for ``--help``.
      param_rules: ``(pattern, group)`` for the parameters it adds to a layer, as a path
        below ``bert/encoder/<layer>/`` (see :mod:`aa_jax.params`).
      weight_count: ``(hidden_size, architecture) -> (weights, biases)`` of one layer's
        adapter, from the sizes alone.
      site: where in the layer it sits: ``"output"`` (the :class:`AdapterSlot` after the
        feed-forward block) or ``"attention"`` (the query and value projections).
      identity_branch: what a switch's identity choice computes once exported: the AA
        identity branch ``LN(x + h + inp)`` (True) or the plain pretrained layer (False).
    """

    name: str
    description: str
    param_rules: tuple[tuple[str, str], ...]
    weight_count: Callable[[int, Any], tuple[int, int]]
    site: str = "output"
    identity_branch: bool = True


def _seq_bn_weights(hidden_size: int, architecture) -> tuple[int, int]:
    r = bottleneck_size(hidden_size, architecture.reduction_factor)
    return 2 * hidden_size * r, r + hidden_size


KINDS: dict[str, AdapterKind] = {
    "seq_bn": AdapterKind(
        "seq_bn", "bottleneck adapter after the feed-forward block (Pfeiffer; the paper's)",
        ((r"output/slot/adapter/(down|up)/(kernel|bias)", "adapter"),
         (r"output/slot/adapter/rational/(numerator|denominator)", "rational"),
         (r"output/slot/switch/logits", "switch")),
        _seq_bn_weights),
    "lora": AdapterKind(
        "lora", "LoRA on the attention's query and value projections (--lora-rank, "
        "--lora-alpha)",
        ((r"attention/self/lora/(query|value)/(a|b)", "adapter"),
         (r"attention/self/lora/switch/logits", "switch")),
        lambda hidden_size, arch: (4 * hidden_size * arch.lora_rank, 0),
        site="attention", identity_branch=False),
}


class LoRA(nn.Module):
    """A low-rank update of a projection: ``x @ a @ b * alpha / rank``.

    ``a`` <float32>[in, rank] starts as Kaiming-uniform (bound 1/sqrt(in)) and ``b``
    <float32>[rank, features] at zero, as in ``peft``, so training starts from the
    pretrained projection.
    """

    features: int
    rank: int = 8
    alpha: float = 16.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: <dtype>[..., in] -> <dtype>[..., features]."""
        a = self.param("a", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                       (x.shape[-1], self.rank), jnp.float32)
        b = self.param("b", nn.initializers.zeros_init(), (self.rank, self.features),
                       jnp.float32)
        scale = jnp.asarray(self.alpha / self.rank, self.dtype)
        return (x @ a.astype(self.dtype)) @ b.astype(self.dtype) * scale


class LoraSite(nn.Module):
    """The LoRA updates of a layer's query and value projections, with the layer's switch.

    Returns ``(dq, dv)``, each <dtype>[batch, length, hidden], to add to the projections.
    A switched layer scales both by the switch's adapter weight: in training its relaxed
    sample per example, at inference 1 or 0 (the identity choice is the plain layer).
    ``drop`` (AdapterDrop) zeroes them: a Python True skips them, a traced bool selects.
    ``key``: the switch's Gumbel key in training (default: the ``gumbel`` rng stream).
    """

    spec: LayerSpec
    architecture: Architecture
    hidden_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True, drop=None, key=None):
        arch = self.architecture
        updates = [LoRA(self.hidden_size, arch.lora_rank, arch.lora_alpha, self.dtype,
                        name=which)(x) for which in ("query", "value")]
        if self.spec.switch:
            switch = GumbelSwitch(num_choices=2, temperature=arch.temperature,
                                  hard=arch.hard_switch, name="switch")
            y = switch(x.shape[0], deterministic=deterministic, key=key)
            y = y[:, ADAPTER, None, None]
            updates = [(y * u.astype(jnp.float32)).astype(u.dtype) for u in updates]
        if drop is not None and not isinstance(drop, bool):
            updates = [jnp.where(drop, jnp.zeros_like(u), u) for u in updates]
        return tuple(updates)


def validate_layer_indices(layers: Sequence[Any], depth: int) -> set[int]:
    """Checks 0-based layer indices: integers, in range, no duplicates."""
    chosen = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise UserError(f"Layer index {i!r} is not an integer; give 0-based layer numbers.")
        if not 0 <= i < depth:
            raise UserError(f"Layer {i} is out of range for a model with {depth} layers; "
                            f"use 0-based indices from 0 to {depth - 1}.")
        chosen.append(i)
    if len(set(chosen)) != len(chosen):
        dup = sorted({i for i in chosen if chosen.count(i) > 1})
        raise UserError(f"Layer(s) {dup} are listed more than once; list each layer once.")
    return set(chosen)


def bottleneck_size(hidden_size: int, reduction_factor: int) -> int:
    return max(1, hidden_size // reduction_factor)


def adapter_weight_count(hidden_size: int, architecture: Architecture) -> tuple[int, int]:
    """(weights, biases) of all adapters, from the sizes alone (the paper counts weights)."""
    weights, biases = KINDS[architecture.adapter].weight_count(hidden_size, architecture)
    n = len(architecture.adapter_layers)
    return n * weights, n * biases


class BottleneckAdapter(nn.Module):
    """``up(f(down(x)))``: d -> d / reduction_factor -> d.

    Weights N(0, 0.02), biases 0. The rational activation (if any) holds one set of
    coefficients shared by all units, as in the paper.
    """

    hidden_size: int
    reduction_factor: int = 16
    activation: str = "relu"
    rational_version: str = "A"
    rational_degrees: tuple[int, int] = (5, 4)
    rational_init: str = "one"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: <dtype>[batch, length, hidden] -> same shape."""
        init = nn.initializers.normal(stddev=0.02)
        r = bottleneck_size(self.hidden_size, self.reduction_factor)
        z = nn.Dense(r, kernel_init=init, dtype=self.dtype, name="down")(x)
        if self.activation == "rational":
            z = Rational(version=self.rational_version, degrees=self.rational_degrees,
                         initialization=self.rational_init, name="rational")(z)
        else:
            z = FIXED_ACTIVATIONS[self.activation](z)
        return nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype, name="up")(z)


class AdapterSlot(nn.Module):
    """The end of a transformer layer: residual + LayerNorm, with whatever adapter it has.

    Call with the FFN output ``h``, the FFN block input ``inp`` and the layer's own
    LayerNorm; returns the layer output (formulas in the module docstring).

    ``drop`` removes the adapter for this call (AdapterDrop). A Python ``True`` is static:
    the adapter is not computed at all (evaluation with the first k layers dropped). A
    traced bool keeps the shapes and selects ``LN(h + inp)`` (the per-step draw while
    training).
    """

    spec: LayerSpec
    architecture: Architecture
    hidden_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, inp, layer_norm, deterministic: bool = True, drop=None, key=None):
        """h, inp: <dtype>[batch, length, hidden] -> <dtype>[batch, length, hidden];
        ``key``: the switch's Gumbel key in training (default: the ``gumbel`` rng stream)."""
        arch = self.architecture
        residual = h + inp
        x = layer_norm(residual)
        if self.spec.identity_branch:
            return layer_norm(x + residual)
        if not self.spec.adapter or (drop is True and not self.is_initializing()):
            return x
        adapter = BottleneckAdapter(
            self.hidden_size, arch.reduction_factor, self.spec.activation,
            arch.rational_version, arch.rational_degrees, arch.rational_init,
            dtype=self.dtype, name="adapter")
        traced_drop = drop is not None and not isinstance(drop, bool)
        if traced_drop and not self.spec.switch:
            # A dropped adapter is skipped, not computed and discarded.
            if self.is_initializing():
                adapter(x)  # both cond branches must see the same (created) params
            a = nn.cond(drop, lambda mdl, x_: jnp.zeros_like(x_), lambda mdl, x_: mdl(x_),
                        adapter, x)
            return jnp.where(drop, x, layer_norm(a + residual))
        if not self.spec.switch:
            out = layer_norm(adapter(x) + residual)
        else:
            switch = GumbelSwitch(num_choices=2, temperature=arch.temperature,
                                  hard=arch.hard_switch, name="switch")
            y = switch(h.shape[0], deterministic=deterministic, key=key)  # float32
            if deterministic:
                # Inference: one branch for the whole batch; compute only that one.
                use_adapter = y[0, ADAPTER] > y[0, IDENTITY]
                if self.is_initializing():
                    adapter(x)  # both cond branches must see the same (created) params
                branch = nn.cond(use_adapter, lambda mdl, x_: mdl(x_),
                                 lambda mdl, x_: x_, adapter, x)
                out = layer_norm(branch + residual)
            else:
                # The mix is at least float32 whatever the backbone's dtype: the switch
                # weights are probabilities that bfloat16 would round to 3 digits.
                y_identity = y[:, IDENTITY, None, None]
                y_adapter = y[:, ADAPTER, None, None]
                mix = jnp.promote_types(h.dtype, jnp.float32)
                out = layer_norm(residual.astype(mix) + y_adapter * adapter(x).astype(mix)
                                 + y_identity * x.astype(mix))
        if drop is None or drop is False or drop is True:
            return out
        return jnp.where(drop, x, out)
