"""The architecture a run trains: per layer, whether it has an adapter, with which
nonlinearity, and whether its gate is learned (switched); and, once, the adapter kind with
its options and the selection that gates the switched layers.

It is plain data: it round-trips through JSON (:meth:`Architecture.to_dict`, schema v2)
and is validated when read back. Files of schema v1 (aa_jax up to 0.3, whose kind options
were flat fields: ``reduction_factor``, ``lora_rank``, ``lora_alpha``) are converted on
read.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from aa_jax.adapters.activations import ACTIVATIONS
from aa_jax.errors import UserError, check_record
from aa_jax.rational import check_degrees, check_init, check_version
from aa_jax.settings import BOOL, check_settings, setting
from aa_jax.switch import check_temperature

SCHEMA = "aa_jax.architecture/v2"
SCHEMA_V1 = "aa_jax.architecture/v1"
# The flat fields of v1 that are now a kind's options, by kind: {v1 field: option}.
_V1_OPTIONS = {"seq_bn": {"reduction_factor": "reduction_factor"},
               "lora": {"lora_rank": "rank", "lora_alpha": "alpha"}}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What one transformer layer carries.

    Attributes:
      adapter: whether the layer has an adapter at all.
      activation: the adapter's nonlinearity, ``"rational"`` or a fixed one (for kinds
        that have one: ``seq_bn``).
      switch: whether the layer's adapter is gated by the architecture's selection (a
        Gumbel-softmax switch, or a hard top-k of the switches' logits).
      identity_branch: a layer without adapter that computes its kind's identity branch
        (``seq_bn``: ``LN(x + h + inp)`` instead of the pretrained ``LN(h + inp)``): what an
        exported AA model runs where the switch chose the identity.
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


def _kinds():
    from aa_jax.adapters.registry import KINDS
    return KINDS


def _selectors():
    from aa_jax.selection import SELECTORS
    return SELECTORS


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Where the adapters go and how they are built; one per run, serialisable.

    Attributes:
      layers: one :class:`LayerSpec` per transformer layer (its length is the depth).
      adapter: the adapter kind (:data:`aa_jax.adapters.KINDS`).
      options: the kind's options (its own dataclass, e.g.
        :class:`aa_jax.adapters.lora.LoraOptions`; a dict of its fields, or None for its
        defaults, is converted).
      rational_version / rational_degrees / rational_init: the rational activation.
      temperature: the Gumbel-softmax temperature tau of the selection.
      hard_switch: straight-through switches (one-hot forward, soft backward).
      selector: how the switched layers' gates are drawn (:data:`aa_jax.selection.SELECTORS`):
        ``gumbel`` (a switch per layer, the paper's) or ``topk`` (the ``top_k`` layers with
        the highest switch logits).
      top_k: the number of layers ``topk`` keeps.
    """

    layers: tuple[LayerSpec, ...]
    adapter: str = "seq_bn"
    options: Any = None
    rational_version: str = "A"
    rational_degrees: tuple[int, int] = (5, 4)
    rational_init: str = "one"
    temperature: float = 0.1
    hard_switch: bool = setting(False, "straight-through switches", rule=BOOL)
    selector: str = "gumbel"
    top_k: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "rational_degrees", check_degrees(self.rational_degrees))
        if not self.layers:
            raise UserError("An architecture needs at least one layer; give one entry per "
                            "transformer layer.")
        kinds, selectors = _kinds(), _selectors()
        if not isinstance(self.adapter, str) or self.adapter not in kinds:
            raise UserError(f"Unknown adapter kind {self.adapter!r}; choose one of: "
                            f"{', '.join(kinds)}.")
        object.__setattr__(self, "options", kinds[self.adapter].make_options(self.options))
        check_version(self.rational_version)
        check_init(self.rational_init)
        check_temperature(self.temperature)
        check_settings(self)
        if not isinstance(self.selector, str) or self.selector not in selectors:
            raise UserError(f"Unknown selector {self.selector!r}; choose one of: "
                            f"{', '.join(selectors)}.")
        selectors[self.selector].check(self)

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
    def kind(self):
        """The adapter kind (:class:`aa_jax.adapters.kind.AdapterKind`)."""
        return _kinds()[self.adapter]

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
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["layers"] = [dataclasses.asdict(s) for s in self.layers]
        d["options"] = dataclasses.asdict(self.options)
        d["rational_degrees"] = list(self.rational_degrees)
        return {"schema": SCHEMA, **d}

    @classmethod
    def from_dict(cls, d: Any) -> Architecture:
        """Builds an architecture from its :meth:`to_dict` form (v2, or v1 converted),
        validating every field."""
        if isinstance(d, dict) and (d.get("schema") == SCHEMA_V1 or
                                    ("schema" not in d and "options" not in d)):
            d = _from_v1(d)
        d = check_record(d, SCHEMA, [f.name for f in dataclasses.fields(cls)], "architecture")
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
        if "options" in d and d["options"] is not None and not isinstance(d["options"], dict):
            raise UserError("Architecture field 'options' must be an object of the adapter "
                            "kind's options.")
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


def _from_v1(d: dict) -> dict:
    """A v1 architecture (flat kind options; aa_jax 0.1's ``adapter_skip``) as v2."""
    d = dict(d)
    d["schema"] = SCHEMA
    if "adapter_skip" in d:
        # Written by aa_jax 0.1, whose switched layer had this non-released variant.
        if d["adapter_skip"] is not False:
            raise UserError("This architecture uses 'adapter_skip', a switched-layer "
                            "variant that aa_jax no longer has; retrain it, or delete "
                            "the field to use the released AA layer.")
        del d["adapter_skip"]
    kind = d.get("adapter", "seq_bn")
    options = {}
    for kind_name, fields in _V1_OPTIONS.items():
        for old, new in fields.items():
            if old in d:
                value = d.pop(old)
                if kind_name == kind:
                    options[new] = value
    d["options"] = options
    return d


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


def adapter_weight_count(hidden_size: int, architecture: Architecture,
                         intermediate_size: int | None = None) -> tuple[int, int]:
    """(weights, biases) of all adapters, from the sizes alone (the paper counts weights)."""
    weights, biases = architecture.kind.weight_count(
        hidden_size, intermediate_size or 4 * hidden_size, architecture.options)
    n = len(architecture.adapter_layers)
    return n * weights, n * biases
