"""Checks of parameter values, each failing with a message that names the parameter, the bad value
and what is allowed (used by :class:`con2lib.config.Config`)."""

from __future__ import annotations

import types
import typing
from typing import Any

from con2lib.paths import SYSTEM_DIRS, resolve, under_system_dir

REPR_CHARS = 80  # values shown in messages: a YAML alias bomb would take gigabytes to print in full


def fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"parameter {name}={short_repr(value)} is invalid: expected {allowed}")


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a few nesting levels and characters: bounded time and memory for any value."""
    import reprlib

    shown = reprlib.Repr()  # attributes, not keywords: Python 3.11's Repr takes none
    shown.maxlevel, shown.maxlist, shown.maxtuple, shown.maxdict = 2, 4, 4, 4
    shown.maxstring = shown.maxother = REPR_CHARS
    text = shown.repr(value)
    return text if len(text) <= REPR_CHARS else f"{text[:REPR_CHARS]}..."


def check_not_system(name: str, value: str) -> None:
    """Refuses a folder parameter under /proc, /sys or /dev (links resolved): not data, and endless to walk."""
    if not value:
        return
    if under_system_dir(resolve(value)):
        fail(name, value, f"a folder of image files, not under {', '.join(SYSTEM_DIRS)} (links resolved; kernel "
              "file systems: walking one lists the whole machine or blocks on a device)")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        fail(name, value, f"one of {', '.join(choices)}")


def check_positive(name: str, value: int) -> None:
    if value <= 0:
        fail(name, value, "an integer > 0")


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Checks ``value`` against a field's type; ints are accepted for floats, nothing else is cast."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        origin = typing.get_origin(option)
        if origin is tuple:
            items = [value] if isinstance(value, str) else value
            if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
                return tuple(items)
            continue
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
    expected = " or ".join("list of str" if typing.get_origin(o) is tuple else o.__name__ for o in options)
    raise ValueError(f"parameter {name}={short_repr(value)} has type {type(value).__name__}; expected {expected}")
