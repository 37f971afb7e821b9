"""Settings declared once: a dataclass field carries its help text, flag, choices and the
rule its value must meet, and everything else is derived from it.

A field made with :func:`setting` is checked by :func:`check_settings` (the dataclass's
``__post_init__`` or ``validate`` calls it), its flag and help are generated for the
command line (:mod:`aa_jax.cli`), and its choices are listed in both. So a rule such as
"the temperature is a positive finite number" is written once, and Python and the
command line refuse a bad value with the same sentence.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Rule:
    """A predicate on a value and the phrase that completes "must be ..."."""

    test: Callable[[Any], bool]
    phrase: str


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_finite(v) -> bool:  # a finite number; an int too large for a float is not one
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


POSITIVE_INT = Rule(lambda v: is_int(v) and v >= 1, "a positive integer")
NON_NEGATIVE_INT = Rule(lambda v: is_int(v) and v >= 0, "a non-negative integer")
POSITIVE_NUMBER = Rule(lambda v: is_finite(v) and v > 0, "a positive finite number")
NON_NEGATIVE_NUMBER = Rule(lambda v: is_finite(v) and v >= 0, "a non-negative finite number")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
NAME = Rule(lambda v: isinstance(v, str) and bool(v), "a name")


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.test(v), f"{rule.phrase} or null")


def setting(default: Any, help: str, *, rule: Rule | None = None, choices=None,
            flag: str | None = None, cli: bool = True, hint: str = ""):
    """A dataclass field declared with everything the rest of aa_jax derives from it.

    Args:
      default: its value when not given (a list is copied per instance).
      help: one line for ``--help``.
      rule: what its value must be (None: no check beyond ``choices``).
      choices: the values it may take (derived from the registry that owns them).
      flag: its command-line flag, where not ``--field-name``.
      cli: False for fields the command line does not set.
      hint: what to do instead, appended to the refusal (e.g. "the paper uses 0.1").
    """
    meta = {"help": help, "rule": rule, "choices": None if choices is None else tuple(choices),
            "cli": cli, "hint": hint}
    if flag is not None:
        meta["flag"] = flag
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(field: dataclasses.Field, prefix: str = "") -> str:
    return field.metadata.get("flag") or "--" + (prefix + field.name).replace("_", "-")


def short(value: Any) -> str:
    """``repr(value)``, cut to a readable length."""
    if is_int(value) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def refusal(field: dataclasses.Field, value: Any, prefix: str = "") -> str | None:
    """The one sentence that refuses ``value`` for ``field``, or None where it is fine."""
    meta = field.metadata
    rule, choices = meta.get("rule"), meta.get("choices")
    label = f"{field.name} ({flag_of(field, prefix)})"
    hint = f"; {meta['hint']}" if meta.get("hint") else ""
    if choices is not None and not (isinstance(value, str) and value in choices) and not (
            value is None and rule is not None and rule.test(None)):
        return f"{label} must be one of {', '.join(choices)}, got {short(value)}{hint}."
    if rule is not None and not rule.test(value):
        return f"{label} must be {rule.phrase}, got {short(value)}{hint}."
    return None


def check_settings(obj: Any, prefix: str = "") -> None:
    """Checks every field of the dataclass ``obj`` declared with a rule or choices; the
    first bad one is a :class:`~aa_jax.errors.UserError` of one sentence."""
    from aa_jax.errors import UserError

    for field in dataclasses.fields(obj):
        problem = refusal(field, getattr(obj, field.name), prefix)
        if problem is not None:
            raise UserError(problem)
