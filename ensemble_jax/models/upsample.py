"""A 2x transposed convolution computed as an ordinary convolution + depth-to-space.

`nn.ConvTranspose(f, (4, 4), strides=(2, 2), padding="SAME")` lowers to a convolution of the
zero-dilated input. XLA:CPU runs its weight gradient on a slow path: 20.8 ms of a ~65 ms
member step at the default sizes (6.5 GFLOP/s against 23-98 for every other layer;
benchmarks/RESULTS.md). The same function, with the same parameters, is a 2x2 convolution
of the undilated input into 4 x f channels, one per output phase, followed by
depth-to-space; its gradients are ordinary convolutions.

Why it is the same function (1-D, per axis): lax.conv_transpose with kernel 4, stride 2 and
"SAME" sends x[i] W[k] to y[2i + 2 - k], so y[2m] = x[m-1] W[0] + x[m] W[2] and
y[2m+1] = x[m] W[1] + x[m+1] W[3]. A 2-tap convolution padded by 1 on each side gives, at
position j, x[j-1] K[0] + x[j] K[1]: phase p is that convolution with K[a] = W[2a + p],
read at j = m + p. Out-of-range inputs are zeros in both forms. tests/test_models.py
checks outputs and gradients against nn.ConvTranspose.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


def phase_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
    """[4, 4, C_in, F] transposed-conv kernel -> [2, 2, C_in, 4 F]: tap (a, b) of output
    phase (py, px) is kernel[2a + py, 2b + px]; channels ordered (py, px, F)."""
    c, f = kernel.shape[2:]
    k = kernel.reshape(2, 2, 2, 2, c, f)          # [a, py, b, px, C, F]
    return jnp.transpose(k, (0, 2, 4, 1, 3, 5)).reshape(2, 2, c, 4 * f)


class ConvTranspose2x(nn.Module):
    """Drop-in for `nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`:
    same parameter names, shapes and initialisers (so the same PRNG key gives the same
    weights), same outputs up to float rounding. Input `[B, H, W, C]` -> `[B, 2H, 2W, F]`."""
    features: int
    dtype: jnp.dtype | None = None
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (4, 4, c, self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        # Padding by jnp.pad, not by the conv: XLA:CPU's gradient of an even-sized kernel
        # with symmetric conv padding takes the slow path again (37 ms vs 2.9 ms here).
        z = lax.conv_general_dilated(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))),
                                     phase_kernel(kernel), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        b, h, w = x.shape[:3]
        z = z.reshape(b, h + 1, w + 1, 2, 2, self.features)   # [..., py, px, F]
        # Phase (py, px) of output pixel (m, n) sits at position (m + py, n + px).
        rows = [jnp.stack([z[:, py:py + h, px:px + w, py, px] for px in (0, 1)], 3)
                for py in (0, 1)]
        y = jnp.stack(rows, 3)                                  # [B, H, W, py, px, F]
        y = jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(b, 2 * h, 2 * w, self.features)
        return y + bias
