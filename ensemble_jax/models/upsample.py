"""A 2x transposed convolution computed as an ordinary convolution + depth-to-space.

`nn.ConvTranspose(f, (4, 4), strides=(2, 2), padding="SAME")` lowers to a convolution of the
zero-dilated input. XLA:CPU runs its gradient on a slow path: 20.8 ms of a ~70 ms member
step at the default sizes (6.5 GFLOP/s against 23-98 for every other layer;
benchmarks/RESULTS.md). The same function, with the same parameters, is a 3x3 "SAME"
convolution of the undilated input into 4 x f channels, one per output phase, followed by
depth-to-space; its gradients are ordinary convolutions (~23 -> ~5-7 ms here).

Why it is the same function (1-D, per axis): lax.conv_transpose with kernel 4, stride 2 and
"SAME" sends x[i] W[k] to y[2i + 2 - k], so y[2m] = x[m-1] W[0] + x[m] W[2] and
y[2m+1] = x[m] W[1] + x[m+1] W[3]. A 3-tap "SAME" convolution reads x[m-1], x[m], x[m+1]:
phase 0 takes taps (W[0], W[2], 0), phase 1 takes (0, W[1], W[3]). Out-of-range inputs are
zeros in both forms. tests/test_models.py checks outputs and gradients against
nn.ConvTranspose.

Two cheaper-looking forms were measured and rejected: a 2x2 convolution over a padded
input (2.9 ms) gave gradients that depend on the number of CPU devices in the process
(thread pools), breaking the sharded == single-device guarantee at 1e-5; with the padding
inside the convolution its gradient fell back to the slow path (37 ms).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ensemble_jax.models.matmul_conv import conv_as_matmul

# _TAPS[p][a]: the row (column) of the 4x4 kernel that output phase p applies at input
# offset a - 1; 4 = a zero row.
_TAPS = ((0, 2, 4), (4, 1, 3))


def phase_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
    """[4, 4, C_in, F] transposed-conv kernel -> [3, 3, C_in, 4 F]: tap (a, b) of output
    phase (py, px) is kernel[_TAPS[py][a], _TAPS[px][b]] (or 0); channels ordered (py, px, F)."""
    c, f = kernel.shape[2:]
    k = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))   # [5, 5, C, F], row/col 4 = 0
    taps = jnp.asarray(_TAPS)
    k = k[taps][:, :, taps]                                  # [py, a, px, b, C, F]
    return jnp.transpose(k, (1, 3, 4, 0, 2, 5)).reshape(3, 3, c, 4 * f)


class ConvTranspose2x(nn.Module):
    """Drop-in for `nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`:
    same parameter names, shapes and initialisers (so the same PRNG key gives the same
    weights), same outputs up to float rounding. Input `[B, H, W, C]` -> `[B, 2H, 2W, F]`."""
    features: int
    dtype: jnp.dtype | None = None
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    impl: str = "xla"        # or "matmul": the 3x3 convolution as a matrix product (matmul_conv.py)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (4, 4, c, self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.impl == "matmul":
            y = conv_as_matmul(x, phase_kernel(kernel))
        else:
            y = lax.conv_general_dilated(x, phase_kernel(kernel), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        b, h, w = x.shape[:3]
        y = y.reshape(b, h, w, 2, 2, self.features)           # [..., py, px, F]
        y = jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(b, 2 * h, 2 * w, self.features)
        return y + bias
