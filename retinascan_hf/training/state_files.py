"""State dicts (optimizer, scheduler, sampler, RNG...) as JSON plus safetensors, so loading never unpickles.

`torch.save` pickles, and unpickling a tampered file runs whatever code it names. Here a state dict is split
into its structure, written as JSON (`<name>.json`), and its tensors, written as safetensors
(`<name>.safetensors`, only when there are any). JSON can hold only data, safetensors only tensors: reading a
checkpoint back can fail, never execute anything. Types JSON lacks are tagged: `{"$tensor": key}`,
`{"$tuple": [...]}`, `{"$items": [[key, value], ...]}` (a dict whose keys are not all text, such as an
optimizer's integer parameter ids), `{"$float": "inf"}` (non-finite floats), `{"$ndarray": ...}` (small
numpy arrays such as numpy's RNG state). Anything else is refused when saving, not silently dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

_FORMAT = "retinascan-state"
_VERSION = 1
MAX_JSON_BYTES = 256 * 1024 * 1024  # far above any real state's structure; refuses a planted giant file


class StateFileError(ValueError):
    """A state file that cannot be read back as what we wrote (corrupt, tampered, or another format)."""


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, torch.Tensor):
        key = f"tensor_{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous()
        return {"$tensor": key}
    if isinstance(value, np.ndarray):
        return {"$ndarray": {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}}
    if isinstance(value, np.generic):
        return _encode(value.item(), tensors, where)
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, tensors, f"{where}[{index}]") for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, tensors, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("$") for key in value):
            return {key: _encode(item, tensors, f"{where}.{key}") for key, item in value.items()}
        return {
            "$items": [
                [_encode(key, tensors, where), _encode(item, tensors, f"{where}[{key!r}]")]
                for key, item in value.items()
            ]
        }
    raise TypeError(f"{where} is a {type(value).__name__}: it cannot be stored without pickle.")


def _decode(value: Any, tensors: dict[str, torch.Tensor], origin: str) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors, origin) for item in value]
    if not isinstance(value, dict):
        return value
    tags = [key for key in value if key.startswith("$")]
    if not tags:
        return {key: _decode(item, tensors, origin) for key, item in value.items()}
    if len(value) != 1:
        raise StateFileError(f"{origin}: malformed entry {sorted(value)[:3]}")
    tag, content = tags[0], value[tags[0]]
    if tag == "$tensor" and isinstance(content, str) and content in tensors:
        return tensors[content]
    if tag == "$tuple" and isinstance(content, list):
        return tuple(_decode(item, tensors, origin) for item in content)
    if tag == "$items" and all(isinstance(pair, list) and len(pair) == 2 for pair in content):
        return {_decode(key, tensors, origin): _decode(item, tensors, origin) for key, item in content}
    if tag == "$float" and content in ("inf", "-inf", "nan"):
        return float(content)
    if tag == "$ndarray" and isinstance(content, dict) and np.dtype(content["dtype"]).kind in "biuf":
        return np.asarray(content["data"], dtype=np.dtype(content["dtype"])).reshape(content["shape"])
    raise StateFileError(f"{origin}: unknown or malformed entry {tag!r}")


def save_state(state: Any, directory: Path, name: str) -> list[str]:
    """Write `state` as `<name>.json` (+ `<name>.safetensors`); return the file names written."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, name)
    written = [f"{name}.json"]
    if tensors:
        save_file(tensors, str(directory / f"{name}.safetensors"), metadata={"format": _FORMAT})
        written.append(f"{name}.safetensors")
    payload = {"format": _FORMAT, "version": _VERSION, "tensors": bool(tensors), "state": tree}
    (directory / written[0]).write_text(json.dumps(payload, allow_nan=False) + "\n", encoding="utf-8")
    return written


def load_state(directory: Path, name: str) -> Any:
    """Read what [`save_state`] wrote (tensors on the CPU).

    Raises:
        StateFileError: naming the file, when either file is missing, corrupt or not in this format.
    """
    path = directory / f"{name}.json"
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise StateFileError(f"{path} is larger than {MAX_JSON_BYTES} bytes; not a state file of ours.")
        payload = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise StateFileError(f"{path} is not a readable JSON state file ({error}).") from error
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT or payload.get("version") != _VERSION:
        raise StateFileError(f"{path} is not a {_FORMAT} file of version {_VERSION}.")
    tensors: dict[str, torch.Tensor] = {}
    if payload.get("tensors"):
        tensor_path = directory / f"{name}.safetensors"
        try:
            tensors = load_file(str(tensor_path))
        except (OSError, SafetensorError) as error:
            raise StateFileError(f"{tensor_path} is not a readable safetensors file ({error}).") from error
    try:
        return _decode(payload.get("state"), tensors, str(path))
    except StateFileError:
        raise
    except (TypeError, ValueError, KeyError, RecursionError) as error:
        raise StateFileError(f"{path}: malformed state ({error}).") from error


__all__ = ["MAX_JSON_BYTES", "StateFileError", "load_state", "save_state"]
