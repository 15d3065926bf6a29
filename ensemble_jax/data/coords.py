"""The coordinate convention between image pixels and heatmap (output) pixels.

Pixel centres sit at integer coordinates. Output pixel j covers input pixels
[j*stride, (j+1)*stride), so its centre is at x = j*stride + (stride-1)/2.
"""
from __future__ import annotations


def to_heatmap(xy, stride: int):
    """Image pixel coordinates -> heatmap pixel coordinates (works on NumPy and JAX)."""
    return (xy - (stride - 1) / 2.0) / stride


def from_heatmap(uv, stride: int):
    """Heatmap pixel coordinates -> image pixel coordinates."""
    return uv * stride + (stride - 1) / 2.0
