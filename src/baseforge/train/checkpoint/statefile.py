"""Nested Python state (optimizer state dicts, RNG states) as safetensors + JSON: no pickle anywhere.

`encode(obj)` splits a tree of dicts, lists, tuples, numbers, strings, tensors and numpy arrays into
a flat {name: tensor} dict (for safetensors) and a JSON-able skeleton that names them; `decode`
puts it back. Reading either file builds only data, never runs code, so a checkpoint from anywhere
is safe to load.

Skeleton encoding: a tensor is {"$tensor": name}, a numpy array {"$ndarray": name, "dtype": ...},
a tuple {"$tuple": [...]}, a dict with non-string keys {"$items": [[key, value], ...]}.
"""

from __future__ import annotations

import numpy as np
import torch


def encode(obj, tensors: dict[str, torch.Tensor] | None = None, path: str = "s"):
    """(JSON-able skeleton, tensors) for `obj`."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"$tensor": path}, tensors
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
        return {"$ndarray": path, "dtype": str(obj.dtype)}, tensors
    if isinstance(obj, (list, tuple)):
        items = [encode(v, tensors, f"{path}.{i}")[0] for i, v in enumerate(obj)]
        return ({"$tuple": items} if isinstance(obj, tuple) else items), tensors
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: encode(v, tensors, f"{path}.{k}")[0] for k, v in obj.items()}, tensors
        return {"$items": [[k, encode(v, tensors, f"{path}.{k}")[0]] for k, v in obj.items()]}, tensors
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj, tensors
    if isinstance(obj, np.generic):
        return obj.item(), tensors
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint without pickle")


def decode(skeleton, tensors: dict[str, torch.Tensor]):
    if isinstance(skeleton, list):
        return [decode(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "$tensor" in skeleton:
        return tensors[skeleton["$tensor"]]
    if "$ndarray" in skeleton:
        return tensors[skeleton["$ndarray"]].numpy().astype(np.dtype(skeleton["dtype"]))
    if "$tuple" in skeleton:
        return tuple(decode(v, tensors) for v in skeleton["$tuple"])
    if "$items" in skeleton:
        return {_key(k): decode(v, tensors) for k, v in skeleton["$items"]}
    return {k: decode(v, tensors) for k, v in skeleton.items()}


def _key(k):
    return tuple(k) if isinstance(k, list) else k
