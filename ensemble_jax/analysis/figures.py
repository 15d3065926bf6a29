"""Figures of `analyze` (matplotlib, headless, saved atomically via `io.save_figure`)."""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ensemble_jax import io as eio  # noqa: E402


def _save(path, fig) -> None:
    eio.save_figure(path, fig, dpi=120)
    plt.close(fig)


def influence_matrix(path, effect: np.ndarray, *, units: str = "px",
                     metric: str = "mean pixel error") -> None:
    """effect `[n_train, n_test]`: subset influence of each training frame (rows) on each
    test frame's metric (columns), diverging colours centred at 0 (red = the frame's
    presence raises the metric, i.e. hurts when the metric is an error)."""
    effect = np.asarray(effect, np.float64)
    n, t = effect.shape
    finite = np.abs(effect[np.isfinite(effect)])
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    w = min(12.0, max(7.5, 3.0 + 0.06 * t))
    h = min(10.0, max(4.5, 1.5 + 0.03 * n))
    fig, ax = plt.subplots(figsize=(w, h), layout="constrained")
    masked = np.ma.masked_invalid(effect)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
    im = ax.imshow(masked, aspect="auto", cmap=cmap, interpolation="nearest",
                   norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax))
    cb = fig.colorbar(im, ax=ax, extend="both")
    cb.set_label(f"effect on test {metric} ({units})\nred: frame in subset raises it, "
                 f"blue: lowers it")
    ax.set_xlabel(f"test frame (index; {t} frames)")
    ax.set_ylabel(f"training frame (index; {n} frames)")
    grey = "" if np.isfinite(effect).all() else \
        "\ngrey: undefined (frame in every subset or in none)"
    ax.set_title(f"Subset influence of training frames on test {metric}\n(mean over members "
                 f"with the frame \u2212 mean over members without it){grey}", fontsize=10)
    _save(path, fig)


def aum_histogram(path, aum: np.ndarray, cut: float, rule: str, *,
                  threshold_mask: np.ndarray | None = None,
                  noise_mask: np.ndarray | None = None) -> None:
    """Histogram of label AUM (finite values) with the flagging cut; threshold samples and
    planted-noise labels (when known) drawn in their own colours."""
    aum = np.asarray(aum, np.float64)
    ok = np.isfinite(aum)
    thr = np.zeros(aum.shape, bool) if threshold_mask is None else np.asarray(threshold_mask, bool)
    noise = None if noise_mask is None else np.asarray(noise_mask, bool) & ~thr
    groups = []
    if noise is not None:
        groups.append(("clean labels", ok & ~thr & ~noise, "tab:blue"))
        groups.append(("planted label noise", ok & noise, "tab:orange"))
    else:
        groups.append(("labels", ok & ~thr, "tab:blue"))
    if thr.any():
        groups.append(("threshold samples (moved on purpose)", ok & thr, "tab:purple"))
    vals = aum[ok]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (-1.0, 1.0)
    lo, hi = min(lo, cut), max(hi, cut)
    bins = np.linspace(lo - 1e-6, hi + 1e-6, 41)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, sel, colour in groups:
        if sel.any():
            ax.hist(aum[sel], bins=bins, color=colour, alpha=0.6,
                    label=f"{name} ({int(sel.sum())})")
    below = ok & (aum < cut)
    ax.axvline(cut, color="k", ls="--", lw=1.5,
               label=f"cut = {cut:.2f}: below it {int((below & ~thr).sum())} labels flagged"
                     + (f" (+ {int((below & thr).sum())} threshold samples)" if thr.any() else ""))
    ax.set_yscale("log")
    ax.set_xlabel("AUM: mean heatmap margin during training (logit units)")
    ax.set_ylabel("labels (count, log scale)")
    ax.set_title(f"Area under the margin per (frame, keypoint) label\nrule: {rule}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(path, fig)


def frame_grid(path, images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
               titles: Sequence[str], bodyparts: Sequence[str], *, title: str,
               highlight: np.ndarray | None = None, highlight_name: str = "flagged label",
               cols: int = 4) -> None:
    """A grid of frames with their labels (large '+', one colour per keypoint) and every
    member's prediction (small 'x', same colours), in training-image pixels. The image is
    faded towards white so that the marks stand out.

    images `[F, H, W, C]` uint8; labels `[F, K, 2]` (NaN = unlabeled); predictions
    `[M, F, K, 2]`; highlight bool `[F, K]` circles those labels in red.
    """
    f = len(images)
    k = len(bodyparts)
    colours = plt.cm.tab10(np.arange(k) % 10)
    outline = [patheffects.withStroke(linewidth=3.5, foreground="black")]
    cols = max(1, min(cols, f))
    rows = max(1, math.ceil(f / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.5 * rows + 1.0),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= f:
            ax.axis("off")
            continue
        img = images[i].astype(np.float32) / 255.0
        img = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
        ax.imshow(0.55 * img + 0.45, interpolation="nearest")
        h, w = img.shape[:2]
        for j in range(k):
            pj = predictions[:, i, j]
            ax.plot(pj[:, 0], pj[:, 1], "x", color=colours[j], ms=6, mew=1.6, ls="",
                    path_effects=outline, zorder=3)
            x, y = labels[i, j]
            if np.isfinite(x) and np.isfinite(y):
                ax.plot(x, y, "+", color=colours[j], ms=16, mew=2.5, path_effects=outline,
                        zorder=4)
                if highlight is not None and highlight[i, j]:
                    ax.plot(x, y, "o", mfc="none", mec="red", ms=22, mew=2.5, zorder=5)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(titles[i], fontsize=8)
    handles = [Line2D([], [], marker="s", ls="", color=colours[j], ms=8, label=bp)
               for j, bp in enumerate(bodyparts)]
    handles.append(Line2D([], [], marker="+", ls="", color="0.3", ms=11, mew=2.5,
                          label="label"))
    handles.append(Line2D([], [], marker="x", ls="", color="0.3", ms=6, mew=1.6,
                          label=f"member predictions ({predictions.shape[0]})"))
    if highlight is not None:
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec="red", ms=11, mew=2,
                              label=highlight_name))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5),
               fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    _save(path, fig)
