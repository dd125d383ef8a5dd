"""Type and range checks for the values a RetinaScan artefact holds, with errors naming the file and the field.

A model folder is data from wherever it came from. A `config.json` with NaN temperatures, a processor config
with `size: 60000` or `image_std: [0, 0, 0]`, weights or a feature bank holding inf would otherwise load and
then answer with silently wrong grades (`nan <= 0` is false, so a naive range check lets NaN through) or crash
on the first image. Every artefact checks its values when it is built or loaded, and loaders add the file.

This file is copied verbatim into model repositories as remote code (standard library and torch only).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import torch


class InvalidArtefactError(ValueError):
    """A config, processor config, weights or feature-bank file holds a value that cannot be served with.

    Attributes:
        field: the offending field (or tensor) name.
        file: the file it was read from, when known (loaders fill it in with [`in_file`]).
    """

    def __init__(self, message: str, *, field: str | None = None, file: str | os.PathLike | None = None):
        self.message, self.field, self.file = message, field, None if file is None else os.fspath(file)
        super().__init__(f"{self.file}: {message}" if self.file else message)

    def in_file(self, file: str | os.PathLike) -> InvalidArtefactError:
        """The same error, naming the file it came from."""
        return type(self)(self.message, field=self.field, file=file)


def _describe_range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts)


def check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float | int:
    """`value` if it is a finite number (an integer when `integer`) within the bounds, else an error naming `name`.

    Booleans are refused (`True` is an `int` to Python, never a size or a temperature to us), and so is NaN,
    which every comparison would let through.
    """
    kind = "an integer" if integer else "a finite number"
    wanted = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted) or not math.isfinite(value):
        bounds = _describe_range(low, high, low_open, high_open)
        raise InvalidArtefactError(f"{name} must be {kind}{' ' + bounds if bounds else ''}, got {value!r}.", field=name)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        bounds = _describe_range(low, high, low_open, high_open)
        raise InvalidArtefactError(f"{name} must be {kind} {bounds}, got {value!r}.", field=name)
    return value


def check_numbers(name: str, values: Any, *, length: int | None = None, **bounds: Any) -> list:
    """A list of numbers each passing [`check_number`] (with the same bounds), of `length` entries if given."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidArtefactError(f"{name} must be a list of numbers, got {values!r}.", field=name)
    if length is not None and len(values) != length:
        raise InvalidArtefactError(f"{name} must have {length} entries, got {len(values)}.", field=name)
    return [check_number(f"{name}[{index}]", value, **bounds) for index, value in enumerate(values)]


def check_flag(name: str, value: Any) -> bool:
    """`value` if it is a boolean (`true`/`false` in JSON), else an error naming `name`."""
    if not isinstance(value, bool):
        raise InvalidArtefactError(f"{name} must be true or false, got {value!r}.", field=name)
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise InvalidArtefactError(f"{name} must be one of {tuple(choices)}, got {value!r}.", field=name)
    return value


def check_finite_tensor(name: str, tensor: torch.Tensor) -> None:
    """Refuse a floating-point tensor holding NaN or inf, saying how many entries are bad."""
    if tensor.is_floating_point() and tensor.device.type != "meta":
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise InvalidArtefactError(
                f"{name} holds {bad} non-finite value(s) (NaN or inf) among {tensor.numel()}.", field=name
            )


__all__ = [
    "InvalidArtefactError",
    "check_choice",
    "check_finite_tensor",
    "check_flag",
    "check_number",
    "check_numbers",
]
