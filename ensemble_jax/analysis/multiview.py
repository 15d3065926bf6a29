"""Multi-view consistency of the labels (projects that declare camera views).

A Lightning Pose project with several views of one scene (a mirror: the mouse from the side
and from below in one frame) declares which keypoints are the same body point in each view,
`data.mirrored_column_matches` (read into `KeypointDataset.views`). Lightning Pose builds its
multi-view PCA loss from them; the same construction checks the labels:

  rows      for each matched body point j of each frame with all its views labeled, the
            vector of its coordinates in every view, [x_1, y_1, ..., x_V, y_V] (2V values;
            training pixels)
  PCA       fit on those rows of the labeled training frames that are not threshold
            samples, all body points pooled (as Lightning Pose does), keeping
            `n_components(V)` = min(3, 2V - 1) components: for two views a 3D point seen
            by two (near-)linear cameras. Lightning Pose fits on labels it trusts; here the
            labels are under test, so the fit is done twice: the second time without the
            rows whose residual lies beyond Tukey's far-out fence (Q3 + 3 IQR) of the first,
            so that a few swapped labels do not tilt the components towards themselves
  residual  r[i, j] = | row - its reconstruction from the components | (pixels, all views'
            coordinates together): near 0 where the labels of the views agree

Swap evidence (`view_gain`): for two keypoints a, b of one view that both have matches, how
much better the views agree with the two labels exchanged,

    gv[i, a, b] = (r_a + r_b - r'_a - r'_b) / (|l_a - l_b| + s_a + s_b)

(r' after exchanging the two labels in that view; s_j the median residual of body point j
over the real frames). The projection is non-expansive, so |gv| < 2, like the members'
swap gain (`suspects.swap_gain`): near +2 for a swapped pair the other view contradicts,
strongly negative for a clean pair (exchanging it would break the agreement), near 0 where
the two points sit at the same place along the views' shared axis (no evidence). It is
independent of the members: it needs only the labels.
"""
from __future__ import annotations

import numpy as np


def n_components(n_views: int) -> int:
    """PCA components kept for V views: a 3D point, fewer when 2V - 1 < 3."""
    return int(min(3, 2 * n_views - 1))


def view_columns(bodyparts, views) -> np.ndarray:
    """int `[V, J]`: keypoint index of body point j in view v (`views`: V tuples of J
    bodypart names, `KeypointDataset.views`)."""
    index = {str(b): k for k, b in enumerate(bodyparts)}
    return np.array([[index[str(b)] for b in v] for v in views], np.int64)


def view_rows(labels: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float `[n, J, 2V]`: each body point's coordinates in every view (labels `[n, K, 2]`)."""
    lab = np.asarray(labels, np.float64)
    x = lab[:, np.asarray(cols), :]                       # [n, V, J, 2]
    n, v, j, _ = x.shape
    return np.moveaxis(x, 1, 2).reshape(n, j, 2 * v)


def fit_pca(labels: np.ndarray, cols: np.ndarray, fit: np.ndarray) -> dict:
    """The multi-view PCA of the module doc, fit on the frames `fit` (bool `[n]`).
    Returns "mean" `[2V]`, "components" `[C, 2V]` (orthonormal rows), "n_rows" (of the
    final fit), "n_rows_dropped" (beyond the first fit's fence) and "explained" (share of
    the variance the components keep)."""
    rows = view_rows(labels, cols)
    ok = np.isfinite(rows).all(-1) & np.asarray(fit, bool)[:, None]
    x = rows[ok]
    c = n_components(np.asarray(cols).shape[0])
    pca = _pca(x, c)
    if pca["mean"] is not None:          # refit without the far-out rows of the first fit
        r = residual_rows(x, pca)
        q1, q3 = np.percentile(r, [25, 75])
        keep = r <= q3 + 3.0 * (q3 - q1)
        if keep.sum() > c and not keep.all():
            pca = _pca(x[keep], c)
        pca["n_rows_dropped"] = int((~keep).sum())
    return pca


def _pca(x: np.ndarray, c: int) -> dict:
    if x.shape[0] <= c:
        return {"mean": None, "components": None, "n_rows": int(x.shape[0]),
                "explained": None}
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s ** 2
    return {"mean": mean, "components": vt[:c], "n_rows": int(x.shape[0]),
            "explained": float(var[:c].sum() / var.sum()) if var.sum() > 0 else 1.0}


def residual_rows(rows: np.ndarray, pca: dict) -> np.ndarray:
    """float `[...]`: reconstruction error (pixels) of rows `[..., 2V]`; NaN where a
    coordinate is missing."""
    y = np.asarray(rows, np.float64) - pca["mean"]
    c = pca["components"]
    r = np.linalg.norm(y - (y @ c.T) @ c, axis=-1)
    return np.where(np.isfinite(y).all(-1), r, np.nan)


def residual(labels: np.ndarray, cols: np.ndarray, pca: dict) -> np.ndarray:
    """float `[n, J]`: each body point's multi-view reconstruction error (pixels)."""
    return residual_rows(view_rows(labels, cols), pca)


def view_gain(labels: np.ndarray, cols: np.ndarray, pca: dict, scale: np.ndarray
              ) -> np.ndarray:
    """float `[n, K, K]` (symmetric; NaN except for pairs of one view that both have
    matches and all views labeled): `gv` of the module doc. scale `[J]`: s_j."""
    lab = np.asarray(labels, np.float64)
    cols = np.asarray(cols)
    n, k = lab.shape[:2]
    v_n, j_n = cols.shape
    rows = view_rows(lab, cols)                           # [n, J, 2V]
    r = residual_rows(rows, pca)                          # [n, J]
    g = np.full((n, k, k), np.nan)
    for v in range(v_n):
        sl = slice(2 * v, 2 * v + 2)
        for ja in range(j_n):
            for jb in range(ja + 1, j_n):
                ra, rb = rows[:, ja].copy(), rows[:, jb].copy()
                ra[:, sl], rb[:, sl] = rows[:, jb, sl], rows[:, ja, sl]
                gain = r[:, ja] + r[:, jb] - residual_rows(ra, pca) - residual_rows(rb, pca)
                a, b = cols[v, ja], cols[v, jb]
                dist = np.linalg.norm(lab[:, a] - lab[:, b], axis=-1)
                g[:, a, b] = g[:, b, a] = gain / (dist + scale[ja] + scale[jb])
    return g


def check(labels: np.ndarray, bodyparts, views, real: np.ndarray) -> dict | None:
    """Everything the frame score needs from the views, or None without views (or too
    few labeled rows to fit): "cols" [V, J], "pca", "residual" [n, J] (training px),
    "scale" [J] (median residual over the real frames), "gain" [n, K, K]."""
    if not views:
        return None
    cols = view_columns(bodyparts, views)
    real = np.asarray(real, bool)
    pca = fit_pca(labels, cols, real)
    if pca["mean"] is None:
        return None
    r = residual(labels, cols, pca)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scale = np.nanmedian(np.where(real[:, None], r, np.nan), 0)
    scale = np.where(np.isfinite(scale), scale, np.nanmedian(r) if np.isfinite(r).any()
                     else 1.0)
    return {"cols": cols, "pca": pca, "residual": r, "scale": scale,
            "gain": view_gain(labels, cols, pca, scale)}
