"""Shared command-line pieces: numeric argparse types that refuse out-of-range values by the flag's
name before anything runs, and a help formatter that shows only real defaults."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def number_in(kind: type, low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False,
              hint: str = "") -> Callable[[str], Any]:  # fmt: skip
    """An argparse type: ``kind`` within [low, high] (or open ends), so that a bad value is refused
    with the flag's name before anything runs."""
    if high == math.inf:
        bound = f"must be {'>' if low_open else '>='} {low:g}"
    else:
        bound = f"must lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < low or (low_open and value == low) or value > high or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"{bound}{hint}, got {text}")
        return value

    return parse


POSITIVE_INT = number_in(int, 0, low_open=True)
COUNT = number_in(int, 0)  # zero allowed
POSITIVE = number_in(float, 0, low_open=True)
NON_NEGATIVE = number_in(float, 0)
MOMENTUM = number_in(float, 0, 1, high_open=True)
FRACTION = number_in(float, 0, 1)


class DefaultsWhereTheyExist(argparse.HelpFormatter):
    """Shows a flag's default only where it has one: a flag that defaults to None means 'the
    recipe's value' (its help says which) and a store_true flag is off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        has_default = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if has_default and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text
