"""Convolution as a matrix product of shifted copies (im2col by slicing).

Why: under `jax.vmap` over members, a convolution whose kernel carries the member axis
lowers to a *grouped* convolution, which some backends run far below their matrix-product
speed (XLA:CPU: ~5x slower than a loop of single-member steps, benchmarks/RESULTS.md).
Written as `patches @ kernel`, the same convolution under vmap becomes a *batched* matrix
product (`dot_general` with the member axis as a batch dimension), which every backend
runs at its matmul speed. The price is memory: the patches hold kh*kw copies of the input.

`MatmulConv` has nn.Conv's parameter names, shapes and initialisers, so under the same
name the same PRNG key gives the same weights; outputs agree up to float rounding
(tests/test_models.py). Only what HeatmapNet uses is supported: "SAME" padding, square
strides, no dilation, no feature groups.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """XLA's "SAME": output ceil(size / stride), the extra pixel of an odd total at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def conv_as_matmul(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 1,
                   padding: tuple[tuple[int, int], tuple[int, int]] | None = None
                   ) -> jnp.ndarray:
    """Convolution `[B, H, W, C]` * `[kh, kw, C, F]` -> `[B, oh, ow, F]`, computed as one
    matrix product over the kh*kw shifted (and strided) copies of x. padding: ((top,
    bottom), (left, right)) zeros, default XLA's "SAME" (then oh, ow = ceil(H/s), ceil(W/s))."""
    kh, kw, c, f = kernel.shape
    b, h, w, _ = x.shape
    if padding is None:
        padding = (same_padding(h, kh, stride), same_padding(w, kw, stride))
    (t, bo), (le, r) = padding
    oh, ow = (h + t + bo - kh) // stride + 1, (w + le + r - kw) // stride + 1
    xp = jnp.pad(x, ((0, 0), (t, bo), (le, r), (0, 0))) if t or bo or le or r else x
    if kh == kw == 1:
        return jnp.einsum("bhwc,cf->bhwf", xp[:, ::stride, ::stride][:, :oh, :ow],
                          kernel[0, 0])
    shifted = [xp[:, a:a + (oh - 1) * stride + 1:stride, d:d + (ow - 1) * stride + 1:stride, :]
               for a in range(kh) for d in range(kw)]
    patches = jnp.concatenate(shifted, axis=-1)                  # [B, oh, ow, kh*kw*C]
    return jnp.einsum("bhwp,pf->bhwf", patches, kernel.reshape(kh * kw * c, f))


class MatmulConv(nn.Module):
    """Drop-in for `nn.Conv(features, kernel_size, strides, padding="SAME")`."""
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    dtype: jnp.dtype | None = None
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kh, kw = self.kernel_size
        if self.strides[0] != self.strides[1]:
            raise ValueError(f"MatmulConv supports square strides only, got {self.strides}")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv_as_matmul(x, kernel, self.strides[0]) + bias
