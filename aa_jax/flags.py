"""The ``aa-jax train`` flags, generated from the settings that declare them: one flag per
:class:`~aa_jax.config.TrainConfig` field and per option of each adapter kind (help,
flag, type, choices and default from the field), and the config they make."""

from __future__ import annotations

import argparse
import dataclasses

from aa_jax.errors import UserError


def _train_size(text: str):
    if text in ("full", "all"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of examples; pass e.g. 100, or 'full'.") from None


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of layer indices; pass e.g. 0,3,5.") from None


# Fields whose values the command line parses specially, and the types of the others.
_PARSERS = {"train_size": _train_size}


def _flag_type(field: dataclasses.Field):
    """The argparse ``type`` of a config field, from its annotation."""
    if field.name in _PARSERS:
        return _PARSERS[field.name]
    text = str(field.type)
    if "list[str]" in text:
        return _csv
    if "list[int]" in text:
        return _int_list
    for name, kind in (("int", int), ("float", float), ("str", str)):
        if text.startswith(name):
            return kind
    raise TypeError(f"no command-line type for config field {field.name} ({text})")


def add_config_flags(parser, groups: dict | None = None) -> None:
    """One flag per :class:`~aa_jax.config.TrainConfig` field, from its metadata: the help
    text, the flag (``--field-name`` unless given), the choices and the default.
    ``groups`` maps a field to the argparse group its flag joins (e.g. a mutually
    exclusive one)."""
    from aa_jax.config import PROTOCOLS, TrainConfig

    rates = set(next(iter(PROTOCOLS.values())))
    for field in dataclasses.fields(TrainConfig):
        meta = field.metadata
        if not meta.get("cli", True):
            continue
        flag = meta.get("flag", "--" + field.name.replace("_", "-"))
        add = (groups or {}).get(field.name, parser).add_argument
        kwargs = {"dest": field.name, "help": meta.get("help")}
        default = field.default_factory() if callable(field.default_factory) else field.default
        if field.type == "bool":
            add(flag, action="store_true", default=default, **kwargs)
            continue
        if field.name in rates:  # the --protocol's unless given
            default = None
            kwargs["help"] += "%(default).0s"  # (no "default: None" after it)
        if field.name == "train_size":  # 100 for a GLUE task, all of the user's own data
            default = argparse.SUPPRESS
        if "choices" in meta:
            kwargs["choices"] = tuple(meta["choices"])
        add(flag, type=_flag_type(field), default=default, **kwargs)


def add_kind_flags(parser) -> None:
    """Each adapter kind's options as flags (e.g. ``--lora-rank``), from the kind's
    options dataclass: its help, flag and type; a flag left out keeps the kind's default."""
    from aa_jax.adapters import KINDS

    for kind in KINDS.values():
        for flag, field in kind.flags():
            parser.add_argument(flag, dest=f"kind:{kind.name}:{field.name}",
                                type=_flag_type(field), default=None,
                                metavar=field.name.upper(),
                                help=f"{field.metadata.get('help')} (default: {field.default})")


def _kind_options(args) -> dict | None:
    """The options of ``--adapter``'s kind given by its flags; a flag of another kind is
    refused."""
    chosen, options = getattr(args, "adapter", None), {}
    for dest, value in vars(args).items():
        if not dest.startswith("kind:") or value is None:
            continue
        _, kind, name = dest.split(":")
        if kind != chosen:
            raise UserError(f"--{kind.replace('_', '-')}-{name.replace('_', '-')} is an "
                            f"option of the adapter kind {kind}; add --adapter {kind} or "
                            f"leave it out.")
        options[name] = value
    return options or None


def config_from_args(args):
    from aa_jax.config import PROTOCOLS, TrainConfig

    names = {f for f in TrainConfig.__dataclass_fields__}
    settings = {k: v for k, v in vars(args).items() if k in names}
    if "train_size" not in settings and getattr(args, "data", None):
        settings["train_size"] = None  # the user's own data: all of it unless told
    for name, value in PROTOCOLS[protocol(args)].items():
        if settings.get(name) is None:
            settings[name] = value
    settings["adapter_options"] = _kind_options(args)
    return TrainConfig(**settings)


def protocol(args) -> str:
    """``--protocol``, by default ``released`` for a GLUE task (the paper's replication)
    and ``cpu`` for the user's own data: on a small file the released rates (adapters at
    1e-4) can leave a run at the label prior, the cpu protocol's were chosen on the
    baseline's dev scores with few examples (docs/experiments.md, "The CPU protocol")."""
    chosen = getattr(args, "protocol", None)
    return chosen or ("cpu" if getattr(args, "data", None) else "released")
