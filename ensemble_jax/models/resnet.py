"""A ResNet-18/34-style encoder (torchvision's layout) for the heatmap network.

Same structure as torchvision's `resnet18` / `resnet34` feature extractor: conv1 7x7/2,
maxpool 3x3/2, four stages of BasicBlocks (strides 1, 2, 2, 2), with PyTorch's explicit
paddings so a converted torchvision state dict gives the same outputs
(models/pretrained.py, tests/test_resnet.py).

Normalisation: each BatchNorm is replaced by a learnable per-channel affine map
(y = scale * x + bias), i.e. a BatchNorm frozen in its evaluation form. Why not BatchNorm:
batch statistics are state outside `params` (a mutable collection with running averages
per member) and make train and evaluation differ; the member step is one pure
`apply(params, x)`, vmapped, unrolled or sharded. Why not GroupNorm: a pretrained
BatchNorm folds exactly into the affine map (scale = gamma / sqrt(var + eps),
bias = beta - mean * scale) but not into a GroupNorm. Trained from scratch without
normalisation, the last affine scale of every residual branch starts at zero (torchvision's
`zero_init_residual`): each block starts as the identity, which keeps deep no-norm
residual nets trainable.

Input: float images `[B, H, W, C]` in [0, 1] (C = 1 is repeated to 3 channels), normalised
with ImageNet's mean and std. Output: the stage features by stride {2, 4, 8, 16, 32}.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ensemble_jax.models.matmul_conv import conv_as_matmul

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PadConv(nn.Module):
    """Convolution with PyTorch's symmetric zero padding (k // 2), no bias; parameter
    'kernel' [kh, kw, C, F] as nn.Conv. impl 'xla' (lax conv) or 'matmul'."""
    features: int
    k: int
    stride: int = 1
    impl: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                            (self.k, self.k, x.shape[-1], self.features), jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        p = self.k // 2
        if self.impl == "matmul":   # batched matmuls under vmap (models/matmul_conv.py)
            return conv_as_matmul(x, kernel, self.stride, padding=((p, p), (p, p)))
        return jax.lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Affine(nn.Module):
    """Per-channel y = scale * x + bias: a BatchNorm in its (frozen) evaluation form."""
    zero_scale: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        init = nn.initializers.zeros if self.zero_scale else nn.initializers.ones
        scale = self.param("scale", init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return x * scale.astype(self.dtype) + bias.astype(self.dtype)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    impl: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kw = dict(impl=self.impl, dtype=self.dtype)
        y = nn.relu(Affine(dtype=self.dtype, name="bn1")(
            PadConv(self.features, 3, self.stride, name="conv1", **kw)(x)))
        y = Affine(zero_scale=True, dtype=self.dtype, name="bn2")(
            PadConv(self.features, 3, 1, name="conv2", **kw)(y))
        if self.stride != 1 or x.shape[-1] != self.features:
            x = Affine(dtype=self.dtype, name="downsample_1")(
                PadConv(self.features, 1, self.stride, name="downsample_0", **kw)(x))
        return nn.relu(x + y)


class ResStage(nn.Module):
    features: int
    blocks: int
    stride: int
    impl: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for i in range(self.blocks):
            x = BasicBlock(self.features, self.stride if i == 0 else 1, self.impl, self.dtype,
                           name=f"block{i}")(x)
        return x


class ResNetEncoder(nn.Module):
    """features by stride {2: conv1, 4: layer1, 8: layer2, 16: layer3, 32: layer4}."""
    depth: int = 18
    width: int = 64
    impl: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> dict[int, jnp.ndarray]:
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        x = x.astype(self.dtype)
        x = nn.relu(Affine(dtype=self.dtype, name="bn1")(
            PadConv(self.width, 7, 2, self.impl, self.dtype, name="conv1")(x)))
        feats = {2: x}
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                  ((0, 0), (1, 1), (1, 1), (0, 0)))
        stride = 4
        for i, n in enumerate(BLOCKS[self.depth]):
            x = ResStage(self.width * 2 ** i, n, 1 if i == 0 else 2, self.impl, self.dtype,
                         name=f"layer{i + 1}")(x)
            stride = 4 * 2 ** i
            feats[stride] = x
        return feats
