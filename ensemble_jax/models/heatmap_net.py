"""A small convolutional heatmap network (encoder + upsampling head), in Flax Linen.

Input uint8 or float images `[B, H, W, C]`; output logits `[B, K, H/stride, W/stride]`
(keypoint axis before the spatial axes, the layout every kernel here expects).
Linen keeps the model a pure `apply(params, x)`, which is what the member-parallel
strategies vmap, unroll or shard.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ensemble_jax.models.matmul_conv import MatmulConv
from ensemble_jax.models.upsample import ConvTranspose2x


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of every member (all members share it; only weights differ).

    widths: channels of the encoder stages; each stage halves the resolution.
    convs_per_stage: 3x3 convolutions after each stage's strided one.
    output_stride: heatmap resolution = input / output_stride (a power of two,
        at most 2 ** len(widths)); the head upsamples with transposed convolutions and
        adds the encoder feature of the same resolution (a U-Net style skip).
    dtype: compute dtype ('float32' or 'bfloat16'); parameters stay float32.
    conv_impl: how convolutions are computed: 'xla' (lax convolutions) or 'matmul'
        (shifted copies times the kernel, models/matmul_conv.py: under vmap over members a
        batched matrix product instead of a grouped convolution). Same parameters and
        function; the trainer's 'vmap_matmul' strategy switches it on for its program.
    encoder: 'small' (the stages above, fast; for speed studies) or 'resnet' (a
        torchvision-layout ResNet-18/34 of `resnet_depth` with base width `resnet_width`,
        models/resnet.py; stride 32, so images must divide by 32). Same heatmap head.
    init_weights: a Flax msgpack or torchvision ResNet state dict (.pt/.pth) the encoder
        of every member starts from (models/pretrained.py); heads keep their own init.
    """
    widths: Sequence[int] = (16, 32, 64)
    convs_per_stage: int = 1
    output_stride: int = 4
    head_width: int = 32
    dtype: str = "float32"
    conv_impl: str = "xla"
    encoder: str = "small"
    resnet_depth: int = 18
    resnet_width: int = 64
    init_weights: str | None = None

    def __post_init__(self) -> None:
        widths = tuple(int(w) for w in self.widths)
        object.__setattr__(self, "widths", widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"ModelConfig.widths must be positive integers, got {self.widths}")
        s = self.output_stride
        if s < 1 or s & (s - 1):
            raise ValueError(f"ModelConfig.output_stride must be a power of two, got {s}")
        if self.encoder not in ("small", "resnet"):
            raise ValueError(f"ModelConfig.encoder must be 'small' or 'resnet', got {self.encoder!r}")
        if self.encoder == "resnet":
            from ensemble_jax.models.resnet import BLOCKS
            if self.resnet_depth not in BLOCKS:
                raise ValueError(f"ModelConfig.resnet_depth must be one of {sorted(BLOCKS)}, "
                                 f"got {self.resnet_depth}")
            if self.resnet_width < 1:
                raise ValueError(f"ModelConfig.resnet_width must be positive, got {self.resnet_width}")
            if s > 32:
                raise ValueError(f"ModelConfig.output_stride={s}: the resnet encoder's deepest "
                                 f"stride is 32")
        elif s > 2 ** len(widths):
            raise ValueError(
                f"ModelConfig.output_stride={s} needs at least {s.bit_length() - 1} encoder "
                f"stages, widths has {len(widths)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"ModelConfig.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.conv_impl not in ("xla", "matmul"):
            raise ValueError(f"ModelConfig.conv_impl must be 'xla' or 'matmul', got {self.conv_impl!r}")

    @property
    def input_multiple(self) -> int:
        """Image height and width must be multiples of this."""
        return 32 if self.encoder == "resnet" else 2 ** len(self.widths)


class HeatmapNet(nn.Module):
    config: ModelConfig
    n_keypoints: int

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        x = images.astype(jnp.float32)
        if images.dtype == jnp.uint8:
            x = x / 255.0
        if cfg.encoder == "resnet":
            from ensemble_jax.models.resnet import ResNetEncoder
            skips = ResNetEncoder(cfg.resnet_depth, cfg.resnet_width, cfg.conv_impl, dtype,
                                  name="encoder")(x)
            return self._head(skips[32], skips, 32, dtype)
        x = (x - 0.5).astype(dtype)
        n_conv = itertools.count()

        def conv(w, s=1, k=3, **kw):
            # Named as Flax names nn.Conv, so both implementations share one parameter tree.
            name = f"Conv_{next(n_conv)}"
            if cfg.conv_impl == "matmul":
                return MatmulConv(w, (k, k), strides=(s, s), dtype=dtype, name=name, **kw)
            return nn.Conv(w, (k, k), strides=(s, s), padding="SAME", dtype=dtype, name=name, **kw)
        x = nn.relu(conv(cfg.widths[0])(x))
        skips = {1: x}
        stride = 1
        for w in cfg.widths:
            x = nn.relu(conv(w, 2)(x))
            for _ in range(cfg.convs_per_stage):
                x = nn.relu(conv(w)(x))
            stride *= 2
            skips[stride] = x
        return self._head(x, skips, stride, dtype, n_conv)

    def _head(self, x, skips, stride, dtype, n_conv=None):
        """Upsampling head from `stride` to output_stride with skips of the same stride."""
        cfg = self.config
        n_conv = n_conv if n_conv is not None else itertools.count()

        def conv(w, s=1, k=3, **kw):
            name = f"Conv_{next(n_conv)}"
            if cfg.conv_impl == "matmul":
                return MatmulConv(w, (k, k), strides=(s, s), dtype=dtype, name=name, **kw)
            return nn.Conv(w, (k, k), strides=(s, s), padding="SAME", dtype=dtype, name=name, **kw)
        n_up = 0
        while stride > cfg.output_stride:
            # = nn.ConvTranspose(head_width, (4, 4), strides=(2, 2), padding="SAME"), same
            # parameters under the same name, ~4.5x faster to train on XLA:CPU (upsample.py).
            x = ConvTranspose2x(cfg.head_width, dtype=dtype, impl=cfg.conv_impl,
                                name=f"ConvTranspose_{n_up}")(x)
            n_up += 1
            stride //= 2
            x = nn.relu(x + conv(cfg.head_width, k=1)(skips[stride]))
        x = nn.relu(conv(cfg.head_width)(x))
        # Bias starts negative so the initial heatmaps are near 0 (the background).
        x = conv(self.n_keypoints, k=1, bias_init=nn.initializers.constant(-4.0))(x)
        return jnp.transpose(x.astype(jnp.float32), (0, 3, 1, 2))

