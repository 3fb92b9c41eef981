"""Argument checks the constructors share (each raises one-sentence ValueErrors; the
builder prefixes the config path)."""

from __future__ import annotations

import math


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def positive(**values) -> None:
  """Each value is an int >= 1 (None allowed where the caller passes it as optional)."""
  for name, value in values.items():
    if not _is_int(value) or value < 1:
      raise ValueError(f'{name} must be a positive int, got {value!r}.')


def optional_positive(**values) -> None:
  positive(**{k: v for k, v in values.items() if v is not None})


def at_least_zero(**values) -> None:
  for name, value in values.items():
    if value is not None and (not _is_int(value) or value < 0):
      raise ValueError(f'{name} must be an int >= 0, got {value!r}.')


def positive_ints(name: str, values) -> None:
  if (not isinstance(values, (tuple, list)) or not values
      or not all(_is_int(v) and v > 0 for v in values)):
    raise ValueError(f'{name}={values!r} is invalid; use a tuple of positive ints, e.g. '
                     f'(4,).')


def probability(**values) -> None:
  """A dropout rate in [0, 1)."""
  for name, value in values.items():
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not 0.0 <= value < 1.0:
      raise ValueError(f'{name}={value!r} is out of range; use a number in [0, 1).')


def choice(name: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f'{name}={value!r} is unknown; use one of '
                     f'{", ".join(repr(v) for v in valid)}.')
