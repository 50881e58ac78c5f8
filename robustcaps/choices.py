"""Settings that take one of a few named values, and the one check that turns a user's word into one.

Each choice set is a `StrEnum` defined beside the code that owns it (`Split` in data, `Routing` in models,
`Speed` in training): a member compares equal to its string and JSON writes it as that string, so configs
read and written before the enums existed stay the same.
"""

from __future__ import annotations

from dataclasses import field, fields
from enum import StrEnum
from typing import TypeVar

from robustcaps.errors import RobustcapsError

Choice = TypeVar("Choice", bound=StrEnum)


def parse(kind: type[Choice], value: object, option: str) -> Choice:
    """`value` as a member of `kind`, or a one-line error naming `option` and what it allows."""
    try:
        return kind(value)
    except ValueError:
        raise RobustcapsError(f"{option} {value!r}: choose one of {', '.join(kind)}") from None


def names(kind: type[StrEnum]) -> list[str]:
    """The allowed words, in definition order (for click.Choice and messages)."""
    return [member.value for member in kind]


def choice(default: StrEnum, option: str | None = None):
    """A dataclass field holding one member of `default`'s enum; `check_fields` parses it."""
    return field(default=default, metadata={"choice": type(default), "option": option})


def check_fields(config: object, prefix: str = "--") -> None:
    """Parse every `choice` field of a frozen dataclass in place: one check for every config that holds a
    choice, with the error naming the option (`--routing`) or, for model settings, the setting."""
    for spec in fields(config):
        kind = spec.metadata.get("choice")
        if kind is not None:
            option = spec.metadata.get("option") or prefix + spec.name.replace("_", "-")
            object.__setattr__(config, spec.name, parse(kind, getattr(config, spec.name), option))
