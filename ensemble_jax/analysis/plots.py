"""Figures written into run directories (matplotlib, headless, saved atomically)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ensemble_jax import io as eio  # noqa: E402


def learning_curve(path, fractions: np.ndarray, seeds: np.ndarray, member_err: np.ndarray,
                   ensemble_err: dict[float, float], baseline: float | None,
                   units: str = "px") -> None:
    """Test error vs training fraction: one thin line per seed (members), the ensemble of
    each fraction in bold, and the mean-pose baseline for scale."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for s in np.unique(seeds):
        sel = seeds == s
        order = np.argsort(fractions[sel])
        ax.plot(fractions[sel][order] * 100, member_err[sel][order], "o-", lw=1, ms=4,
                alpha=0.7, label=f"seed {int(s)} (member)")
    fr = np.array(sorted(ensemble_err))
    ax.plot(fr * 100, [ensemble_err[f] for f in fr], "k-s", lw=2.5, ms=6,
            label="ensemble (confidence-weighted)")
    if baseline is not None and np.isfinite(baseline):
        ax.axhline(baseline, color="grey", ls="--", lw=1, label="predict mean pose")
    ax.set_xlabel("training frames used (%)")
    ax.set_ylabel(f"mean test error ({units})")
    ax.set_title("Learning curve over nested subsets")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    eio.save_figure(path, fig)
    plt.close(fig)
