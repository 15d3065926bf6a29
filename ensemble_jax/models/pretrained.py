"""User-supplied encoder weights (`--init-weights PATH`), converted on load. Nothing is
downloaded.

Two sources:
  *.msgpack  a Flax parameter tree (flax.serialization.to_bytes of `params` or of
             `{"params": ...}`) holding the encoder: the 'encoder' subtree for the ResNet
             encoder, the encoder's Conv_i for the small one. Shapes must match exactly.
  *.pt/.pth  a torchvision ResNet-18/34 state dict (or a checkpoint holding one under
             'state_dict' or 'model'), read with torch (needed only for this); the
             conversion is NumPy: conv weights OIHW -> HWIO, each BatchNorm folded into the
             encoder's per-channel affine map (scale = gamma / sqrt(var + eps), bias =
             beta - mean * scale: BatchNorm in evaluation mode, models/resnet.py), the
             classifier (fc.*) ignored.

`merge_encoder(params, config)` returns the freshly initialised tree of one member with
its encoder replaced: every member starts from the same encoder, with its own head.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

BN_EPS = 1e-5   # torch.nn.BatchNorm2d's default, used by torchvision's ResNets


class WeightsError(ValueError):
    """A weights file that cannot initialise this encoder; the message names file and key."""


def torchvision_to_flax(state: dict[str, np.ndarray], eps: float = BN_EPS
                        ) -> dict[str, Any]:
    """torchvision ResNet state dict (names conv1.weight, bn1.*, layerL.B.conv1.weight,
    layerL.B.downsample.0.weight, ...; arrays) -> the 'encoder' subtree of models/resnet.py."""
    tree: dict[str, Any] = {}

    def put(path: list[str], leaf: str, value: np.ndarray) -> None:
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value

    def module_path(prefix: str) -> list[str]:
        m = re.fullmatch(r"(layer\d)\.(\d+)\.(conv\d|bn\d|downsample\.\d)", prefix)
        if m:
            return [m.group(1), f"block{m.group(2)}", m.group(3).replace(".", "_")]
        if prefix in ("conv1", "bn1"):
            return [prefix]
        raise WeightsError(f"unexpected torchvision key prefix {prefix!r}")

    prefixes = sorted({k.rsplit(".", 1)[0] for k in state if not k.startswith("fc.")})
    for prefix in prefixes:
        path = module_path(prefix)
        if f"{prefix}.weight" in state and np.ndim(state[f"{prefix}.weight"]) == 4:
            w = np.asarray(state[f"{prefix}.weight"], np.float32)       # [O, I, kh, kw]
            put(path, "kernel", np.transpose(w, (2, 3, 1, 0)))         # [kh, kw, I, O]
        elif f"{prefix}.running_var" in state:
            gamma = np.asarray(state[f"{prefix}.weight"], np.float64)
            beta = np.asarray(state[f"{prefix}.bias"], np.float64)
            mean = np.asarray(state[f"{prefix}.running_mean"], np.float64)
            var = np.asarray(state[f"{prefix}.running_var"], np.float64)
            scale = gamma / np.sqrt(var + eps)
            put(path, "scale", scale.astype(np.float32))
            put(path, "bias", (beta - mean * scale).astype(np.float32))
        else:
            raise WeightsError(f"torchvision key {prefix!r}: neither a convolution weight nor a "
                               f"BatchNorm with running statistics")
    return tree


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"--init-weights {path}: reading a PyTorch file needs torch "
                           f"(pip install torch), which is not installed") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        raise WeightsError(f"--init-weights {path}: not a readable PyTorch file ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"--init-weights {path}: expected a state dict (name -> tensor)")
    state = {}
    for k, v in obj.items():
        if k.startswith("module."):      # saved from DataParallel
            k = k[len("module."):]
        if k.endswith("num_batches_tracked"):
            continue
        state[k] = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
    return state


@functools.lru_cache(maxsize=4)
def load_encoder(path: str, encoder: str) -> dict[str, Any]:
    """The encoder parameters in `path`, as this package names them (NumPy arrays):
    ResNet -> the 'encoder' subtree; small -> {'Conv_i': ...} of the encoder convs."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"--init-weights {p}: no such file")
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth"):
        if encoder != "resnet":
            raise WeightsError(f"--init-weights {p}: a torchvision ResNet state dict needs "
                               f"--model resnet")
        return {"encoder": torchvision_to_flax(_read_torch(p))}
    if suffix == ".msgpack":
        from flax import serialization
        try:
            tree = serialization.msgpack_restore(p.read_bytes())
        except Exception as e:
            raise WeightsError(f"--init-weights {p}: not a Flax msgpack file ({e})") from e
        if isinstance(tree, dict) and "params" in tree and isinstance(tree["params"], dict):
            tree = tree["params"]
        if encoder == "resnet":
            if "encoder" not in tree:
                raise WeightsError(f"--init-weights {p}: no 'encoder' subtree (keys: "
                                   f"{', '.join(sorted(tree))})")
            return {"encoder": tree["encoder"]}
        return {k: v for k, v in tree.items() if k.startswith("Conv_")}
    raise WeightsError(f"--init-weights {p}: unknown file type {suffix!r}; expected .msgpack "
                       f"(Flax) or .pt/.pth (torchvision state dict)")


def _encoder_names(config) -> list[str]:
    if config.encoder == "resnet":
        return ["encoder"]
    # HeatmapNet's small encoder: stem Conv_0, then (1 + convs_per_stage) per stage.
    return [f"Conv_{i}" for i in range(1 + len(config.widths) * (1 + config.convs_per_stage))]


def merge_encoder(params: Any, config) -> Any:
    """`params` ({'params': {...}} of one member) with the encoder from
    `config.init_weights`; every leaf must exist with the same shape."""
    import jax.numpy as jnp
    loaded = load_encoder(str(config.init_weights), config.encoder)
    inner = dict(params["params"])
    src = str(config.init_weights)

    def copy(new: Any, old: Any, where: str) -> Any:
        if isinstance(old, dict) or hasattr(old, "keys"):
            if not isinstance(new, dict):
                raise WeightsError(f"--init-weights {src}: {where} is not a subtree")
            missing = sorted(set(old) - set(new))
            extra = sorted(set(new) - set(old))
            if missing or extra:
                raise WeightsError(f"--init-weights {src}: {where}: missing {missing[:5]}, "
                                   f"unexpected {extra[:5]} (another depth or layout?)")
            return {k: copy(new[k], old[k], f"{where}/{k}") for k in old}
        arr = np.asarray(new)
        if arr.shape != tuple(old.shape):
            raise WeightsError(f"--init-weights {src}: {where} has shape {arr.shape}, the "
                               f"model needs {tuple(old.shape)}")
        return jnp.asarray(arr, old.dtype)

    for name in _encoder_names(config):
        if name not in loaded:
            raise WeightsError(f"--init-weights {src}: no weights for {name}")
        inner[name] = copy(loaded[name], inner[name], name)
    return {**params, "params": inner}
