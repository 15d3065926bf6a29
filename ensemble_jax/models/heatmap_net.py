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
    """
    widths: Sequence[int] = (16, 32, 64)
    convs_per_stage: int = 1
    output_stride: int = 4
    head_width: int = 32
    dtype: str = "float32"
    conv_impl: str = "xla"

    def __post_init__(self) -> None:
        widths = tuple(int(w) for w in self.widths)
        object.__setattr__(self, "widths", widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"ModelConfig.widths must be positive integers, got {self.widths}")
        s = self.output_stride
        if s < 1 or s & (s - 1):
            raise ValueError(f"ModelConfig.output_stride must be a power of two, got {s}")
        if s > 2 ** len(widths):
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
        return 2 ** len(self.widths)


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

