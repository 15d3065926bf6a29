"""Plain NumPy twins of ensemble_jax.kernels, written from the definitions, not the code.

Loops over every element, float64 throughout, no cleverness: slow and obviously right.
Each twin takes and returns NumPy arrays with the same shapes as its kernel.
"""
from __future__ import annotations

import math

import numpy as np


# ----------------------------------------------------------------------------- peaks
def find_peaks(heatmaps, window=3, threshold=0.0):
    hm = np.asarray(heatmaps, np.float64)
    *lead, H, W = hm.shape
    r = window // 2
    out = np.zeros(hm.shape, bool)
    for idx in np.ndindex(*lead):
        m = hm[idx]
        for y in range(H):
            for x in range(W):
                v = m[y, x]
                if math.isnan(v) or not v > threshold:
                    continue
                is_peak = True
                for yy in range(max(0, y - r), min(H, y + r + 1)):
                    for xx in range(max(0, x - r), min(W, x + r + 1)):
                        u = m[yy, xx]
                        if not math.isnan(u) and u > v:
                            is_peak = False
                out[idx + (y, x)] = is_peak
    return out


def multi_peak_entropy(heatmaps, window=3, threshold=0.0, normalize="softmax",
                       temperature=1.0):
    hm = np.asarray(heatmaps, np.float64)
    *lead, H, W = hm.shape
    peaks = find_peaks(hm, window, threshold)
    out = np.zeros(tuple(lead))
    for idx in np.ndindex(*lead):
        if np.isnan(hm[idx]).any():
            out[idx] = np.nan
            continue
        v = [hm[idx + (y, x)] for y in range(H) for x in range(W) if peaks[idx + (y, x)]]
        if len(v) < 2:
            out[idx] = 0.0
            continue
        if normalize == "softmax":
            top = max(v)
            e = [math.exp((a - top) / temperature) for a in v]
            p = [a / sum(e) for a in e]
        else:
            p = [a / sum(v) for a in v]
        out[idx] = -sum(q * math.log(q) for q in p if q > 0)
    return out


def frame_mpe(mpe, reduce="max"):
    mpe = np.asarray(mpe, np.float64)
    *lead, K = mpe.shape
    out = np.zeros(tuple(lead))
    for idx in np.ndindex(*lead):
        vals = [a for a in mpe[idx] if not math.isnan(a)]
        if not vals:
            out[idx] = np.nan
        else:
            out[idx] = max(vals) if reduce == "max" else sum(vals) / len(vals)
    return out


# ----------------------------------------------------------------------------- margins
def _label_pixel(x, y, stride, h, w):
    u = (x - (stride - 1) / 2.0) / stride
    v = (y - (stride - 1) / 2.0) / stride
    col = min(max(int(round(u)), 0), w - 1)          # Python round: half to even
    row = min(max(int(round(v)), 0), h - 1)
    return row, col


def heatmap_margin(heatmaps, keypoints_xy, stride, radius):
    hm = np.asarray(heatmaps, np.float64)
    kp = np.asarray(keypoints_xy, np.float64)
    *lead, h, w = hm.shape
    out = np.full(tuple(lead), np.nan)
    for idx in np.ndindex(*lead):
        x, y = kp[idx]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        row, col = _label_pixel(x, y, stride, h, w)
        best = -math.inf
        found = False
        for r in range(h):
            for c in range(w):
                if math.sqrt((r - row) ** 2 + (c - col) ** 2) > radius:
                    found = True
                    best = max(best, hm[idx + (r, c)])
        if found:
            out[idx] = hm[idx + (row, col)] - best
    return out


def gt_probability(heatmaps, keypoints_xy, stride):
    hm = np.asarray(heatmaps, np.float64)
    kp = np.asarray(keypoints_xy, np.float64)
    *lead, h, w = hm.shape
    out = np.full(tuple(lead), np.nan)
    for idx in np.ndindex(*lead):
        x, y = kp[idx]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        row, col = _label_pixel(x, y, stride, h, w)
        m = hm[idx]
        top = m.max()
        z = sum(math.exp(m[r, c] - top) for r in range(h) for c in range(w))
        out[idx] = math.exp(m[row, col] - top) / z
    return out


def gt_confidence(heatmaps, keypoints_xy, stride):
    hm = np.asarray(heatmaps, np.float64)
    kp = np.asarray(keypoints_xy, np.float64)
    *lead, h, w = hm.shape
    out = np.full(tuple(lead), np.nan)
    for idx in np.ndindex(*lead):
        x, y = kp[idx]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        row, col = _label_pixel(x, y, stride, h, w)
        out[idx] = 1.0 / (1.0 + math.exp(-hm[idx + (row, col)]))
    return out


# ----------------------------------------------------------------------------- influence
def _group_stats(vals):
    """-> (mean, sample variance) of a list; NaN where undefined."""
    n = len(vals)
    mean = sum(vals) / n if n > 0 else np.nan
    var = sum((a - mean) ** 2 for a in vals) / (n - 1) if n > 1 else np.nan
    return mean, var, n


def _effect(in_vals, out_vals):
    m_in, v_in, c_in = _group_stats(in_vals)
    m_out, v_out, c_out = _group_stats(out_vals)
    effect = m_in - m_out if (c_in > 0 and c_out > 0) else np.nan
    se = math.sqrt(v_in / c_in + v_out / c_out) if (c_in > 1 and c_out > 1) else np.nan
    return effect, se


def subset_influence(masks, values):
    """-> (effect [n, T], stderr [n, T], n_in [n], n_out [n])."""
    masks = np.asarray(masks)
    values = np.asarray(values, np.float64)
    M, n = masks.shape
    T = values.shape[1]
    effect = np.full((n, T), np.nan)
    stderr = np.full((n, T), np.nan)
    n_in = np.zeros(n, int)
    for i in range(n):
        members_in = [m for m in range(M) if masks[m, i] > 0]
        n_in[i] = len(members_in)
        for t in range(T):
            in_vals = [values[m, t] for m in range(M)
                       if masks[m, i] > 0 and not math.isnan(values[m, t])]
            out_vals = [values[m, t] for m in range(M)
                        if not masks[m, i] > 0 and not math.isnan(values[m, t])]
            effect[i, t], stderr[i, t] = _effect(in_vals, out_vals)
    return effect, stderr, n_in, M - n_in


def self_influence(masks, values_per_frame):
    """-> (effect [n], stderr [n], n_in [n], n_out [n])."""
    masks = np.asarray(masks)
    values = np.asarray(values_per_frame, np.float64)
    M, n = masks.shape
    effect = np.full(n, np.nan)
    stderr = np.full(n, np.nan)
    n_in = np.zeros(n, int)
    for i in range(n):
        n_in[i] = sum(1 for m in range(M) if masks[m, i] > 0)
        in_vals = [values[m, i] for m in range(M)
                   if masks[m, i] > 0 and not math.isnan(values[m, i])]
        out_vals = [values[m, i] for m in range(M)
                    if not masks[m, i] > 0 and not math.isnan(values[m, i])]
        effect[i], stderr[i] = _effect(in_vals, out_vals)
    return effect, stderr, n_in, M - n_in


# ----------------------------------------------------------------------------- datamodel
def ridge_datamodel(masks, values, l2=1e-2):
    """Each column separately, as an augmented least-squares problem (an independent route
    to the same minimiser of ||y - b - X w||^2 + l2 ||w||^2, intercept unpenalised)."""
    X = (np.asarray(masks) > 0).astype(np.float64)
    values = np.asarray(values, np.float64)
    M, n = X.shape
    T = values.shape[1]
    weights = np.zeros((n, T))
    bias = np.full(T, np.nan)
    for t in range(T):
        y = values[:, t].copy()
        ok = ~np.isnan(y)
        if not ok.any():
            continue
        y[~ok] = y[ok].mean()
        # Unknowns [b, w]; rows: data, then sqrt(l2) * w = 0.
        A = np.zeros((M + n, n + 1))
        A[:M, 0] = 1.0
        A[:M, 1:] = X
        A[M:, 1:] = math.sqrt(l2) * np.eye(n)
        rhs = np.concatenate([y, np.zeros(n)])
        sol = np.linalg.lstsq(A, rhs, rcond=None)[0]
        bias[t], weights[:, t] = sol[0], sol[1:]
    return weights, bias


# ----------------------------------------------------------------------------- representativeness
def representativeness(features, pool_mask=None):
    f = np.asarray(features, np.float64)
    N = f.shape[0]
    pool = np.ones(N, bool) if pool_mask is None else np.asarray(pool_mask, bool)
    ok = [bool(np.isfinite(f[i]).all()) for i in range(N)]

    def cos(a, b):
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        if na == 0 or nb == 0:
            return 0.0
        return sum(x * y for x, y in zip(a, b)) / (na * nb)

    out = np.full(N, np.nan)
    for i in range(N):
        if not ok[i]:
            continue
        sims = [cos(f[i], f[j]) for j in range(N) if j != i and pool[j] and ok[j]]
        if sims:
            out[i] = sum(sims) / len(sims)
    return out


# ----------------------------------------------------------------------------- spread
def ensemble_spread(keypoints):
    kp = np.asarray(keypoints, np.float64)
    M, F, K, _ = kp.shape
    out = np.full((F, K), np.nan)
    for f in range(F):
        for k in range(K):
            pts = [kp[m, f, k] for m in range(M) if np.isfinite(kp[m, f, k]).all()]
            if not pts:
                continue
            mx = sum(p[0] for p in pts) / len(pts)
            my = sum(p[1] for p in pts) / len(pts)
            var = sum((p[0] - mx) ** 2 + (p[1] - my) ** 2 for p in pts) / len(pts)
            out[f, k] = math.sqrt(var)
    return out


def consensus(keypoints, confidences=None, method="weighted_mean"):
    kp = np.asarray(keypoints, np.float64)
    M, F, K, _ = kp.shape
    out = np.full((F, K, 2), np.nan)
    for f in range(F):
        for k in range(K):
            if method == "median":
                pts = [kp[m, f, k] for m in range(M) if np.isfinite(kp[m, f, k]).all()]
                if pts:
                    out[f, k] = [np.median([p[0] for p in pts]), np.median([p[1] for p in pts])]
                continue
            num, den = np.zeros(2), 0.0
            for m in range(M):
                c = float(confidences[m, f, k])
                if np.isfinite(kp[m, f, k]).all() and math.isfinite(c) and c > 0:
                    num += c * kp[m, f, k]
                    den += c
            if den > 0:
                out[f, k] = num / den
    return out


def scatter_add_once_addends(idx, values):
    """The addends of `determinism.scatter_add_once`, by loops: position j adds the sum
    (in batch order, float32) of every value whose index equals idx[j] if j is that
    index's first position, else 0."""
    idx = np.asarray(idx)
    values = np.asarray(values, np.float32)
    out = np.zeros_like(values)
    for j in range(len(idx)):
        if any(idx[i] == idx[j] for i in range(j)):
            continue
        total = np.zeros_like(values[j])
        for i in range(len(idx)):
            if idx[i] == idx[j]:
                total = (total + values[i]).astype(np.float32)
        out[j] = total
    return out


def scatter_in_order(target, idx, addends, order):
    """target[idx[j]] += addends[j] for j in `order`, one float32 addition at a time (what
    a GPU scatter does, in an order it does not fix)."""
    out = np.array(target, np.float32, copy=True)
    for j in order:
        out[idx[j]] = (out[idx[j]] + addends[j]).astype(np.float32)
    return out
# ----------------------------------------------------------------------------- attribution
def stratified_influence(masks, values, strata=None, n_strata=1):
    """Loops over (i, t, stratum) -> (effect, stderr, df) [n, T] (kernels/attribution.py)."""
    masks = np.asarray(masks) > 0
    values = np.asarray(values, np.float64)
    M, n = masks.shape
    T = values.shape[1]
    strata = np.zeros(M, int) if strata is None else np.asarray(strata)
    eff, se, dfo = (np.full((n, T), np.nan) for _ in range(3))
    for t in range(T):
        for i in range(n):
            ds, ws, vs, dfs = [], [], [], []
            for s in range(n_strata):
                g = (strata == s) & ~np.isnan(values[:, t])
                y = values[g, t]
                a = masks[g, i]
                N, c_in = len(y), int(a.sum())
                c_out = N - c_in
                if N < 2 or c_in == 0 or c_out == 0:
                    continue
                tau2 = y.var(ddof=1)
                if not tau2 > 0:
                    continue
                yi, yo = y[a], y[~a]
                ss = ((yi - yi.mean()) ** 2).sum() + ((yo - yo.mean()) ** 2).sum()
                h = c_in * c_out / N
                ds.append(yi.mean() - yo.mean())
                ws.append(h / tau2)
                vs.append((ss / (N - 2) if N >= 3 else tau2) / h)
                dfs.append(N - 2 if N >= 3 else 1)
            if not ws:
                continue
            lam = np.array(ws) / sum(ws)
            eff[i, t] = float(lam @ np.array(ds))
            u = lam ** 2 * np.array(vs)
            se[i, t] = math.sqrt(u.sum())
            if u.sum() > 0:
                dfo[i, t] = u.sum() ** 2 / (u ** 2 / np.array(dfs)).sum()
    return eff, se, dfo


def t_pvalues(effect, stderr, df):
    from scipy import stats
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * stats.t.sf(np.abs(np.asarray(effect, np.float64) / stderr), df)


def bh_qvalues(p):
    p = np.asarray(p, np.float64)
    flat = p.ravel()
    ok = np.flatnonzero(~np.isnan(flat))
    m = ok.size
    q = np.full(flat.shape, np.nan)
    for idx in ok:     # q_i = min over j with p_j >= p_i of p_j m / rank_j
        best = 1.0
        for jdx in ok:
            if flat[jdx] >= flat[idx]:
                rank = int((flat[ok] <= flat[jdx]).sum())
                best = min(best, flat[jdx] * m / rank)
        q[idx] = best
    return q.reshape(p.shape)


def data_oob(counts, values):
    counts = np.asarray(counts)
    values = np.asarray(values, np.float64)
    n = counts.shape[1]
    score, se = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        v = [values[m, i] for m in range(counts.shape[0])
             if counts[m, i] <= 0 and not np.isnan(values[m, i])]
        if v:
            score[i] = np.mean(v)
        if len(v) > 1:
            se[i] = np.std(v, ddof=1) / math.sqrt(len(v))
    return score, se, (counts <= 0).sum(0)


def lds_per_test(pred, actual, strata=None, n_strata=1):
    from scipy import stats
    pred, actual = np.asarray(pred, np.float64), np.asarray(actual, np.float64)
    V, T = pred.shape
    strata = np.zeros(V, int) if strata is None else np.asarray(strata)
    out = np.full(T, np.nan)
    for t in range(T):
        rs, ws = [], []
        for s in range(n_strata):
            g = (strata == s) & ~np.isnan(actual[:, t]) & ~np.isnan(pred[:, t])
            if g.sum() < 3:
                continue
            a, b = pred[g, t], actual[g, t]
            if np.ptp(a) == 0 or np.ptp(b) == 0:
                continue
            rs.append(stats.spearmanr(a, b).statistic)
            ws.append(g.sum())
        if ws:
            out[t] = np.average(rs, weights=ws)
    return out


def fit_datamodel(masks, values, lam, kind="ridge", strata=None, n_strata=1, sweeps=5000):
    """Per column: ridge as augmented least squares with one intercept per stratum; LASSO
    by cyclic coordinate descent on stratum-centred data."""
    X = (np.asarray(masks) > 0).astype(np.float64)
    y_all = np.asarray(values, np.float64)
    M, n = X.shape
    T = y_all.shape[1]
    strata = np.zeros(M, int) if strata is None else np.asarray(strata)
    G = (strata[:, None] == np.arange(n_strata)[None]).astype(float)
    W = np.zeros((n, T))
    B = np.full((n_strata, T), np.nan)
    for t in range(T):
        y = y_all[:, t].copy()
        for s in range(n_strata):
            g = (strata == s)
            ok = g & ~np.isnan(y)
            y[g & np.isnan(y)] = y[ok].mean() if ok.any() else 0.0
        if kind == "ridge":
            A = np.zeros((M + n, n_strata + n))
            A[:M, :n_strata] = G
            A[:M, n_strata:] = X
            A[M:, n_strata:] = math.sqrt(lam) * np.eye(n)
            sol = np.linalg.lstsq(A, np.concatenate([y, np.zeros(n)]), rcond=None)[0]
            w = sol[n_strata:]
        else:
            Xc, yc = X.copy(), y.copy()
            for s in range(n_strata):
                g = strata == s
                if g.any():
                    Xc[g] -= X[g].mean(0)
                    yc[g] -= y[g].mean()
            w = np.zeros(n)
            r = yc.copy()
            col = (Xc ** 2).sum(0)
            for _ in range(sweeps):
                delta = 0.0
                for j in range(n):
                    if col[j] == 0:
                        continue
                    rho = Xc[:, j] @ r + col[j] * w[j]
                    new = np.sign(rho) * max(abs(rho) - lam, 0.0) / col[j]
                    r -= Xc[:, j] * (new - w[j])
                    delta = max(delta, abs(new - w[j]))
                    w[j] = new
                if delta < 1e-12:
                    break
        W[:, t] = w
        for s in range(n_strata):
            g = strata == s
            if g.any() and not np.isnan(y_all[g, t]).all():
                B[s, t] = y[g].mean() - X[g].mean(0) @ w
    return W, B
def _content_box(frame):
    """(x0, y0, x1, y1): inclusive bounds of a frame's non-zero pixels; None if all zero."""
    nz = np.argwhere(frame.max(-1) > 0)
    if nz.size == 0:
        return None
    (y0, x0), (y1, x1) = nz.min(0), nz.max(0)
    return x0, y0, x1, y1


def _warp_frame(frame, a, t, box):
    """One frame [H, W, C] warped bilinearly (source of output p' at A^-1 (p' - c - t) + c)
    inside `box`: (warped [H, W, C], valid bool [H, W]: the source lies in the box)."""
    h, w, _ = frame.shape
    x0, y0, x1, y1 = box
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    inv = np.linalg.inv(np.asarray(a, np.float64))
    out = np.zeros_like(frame)
    valid = np.zeros((h, w), bool)
    for yy in range(h):
        for xx in range(w):
            sx, sy = inv @ (np.array([xx, yy], float) - c - t) + c
            if not (x0 - 0.5 <= sx <= x1 + 0.5 and y0 - 0.5 <= sy <= y1 + 0.5):
                continue
            valid[yy, xx] = True
            fx, fy = int(np.floor(sx)), int(np.floor(sy))
            for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                xi, yi = fx + dx, fy + dy
                if 0 <= xi < w and 0 <= yi < h:
                    wt = (1 - abs(sx - xi)) * (1 - abs(sy - yi))
                    out[yy, xx] += wt * frame[yi, xi]
    return out, valid


def affine_warp(images, a, t):
    """Twin of training.augment.warp_images: images float [B, H, W, C], A [B, 2, 2],
    t [B, 2]; output pixel p' samples the input bilinearly at A^-1 (p' - c - t) + c, 0
    outside the frame's content box (bounding box of its non-zero pixels)."""
    images = np.asarray(images, np.float64)
    out = np.zeros_like(images)
    for i in range(images.shape[0]):
        box = _content_box(images[i])
        if box is not None:
            out[i] = _warp_frame(images[i], a[i], t[i], box)[0]
    return out


def photometric_warp(images, a, t, u, noise, blur_prob, contrast, brightness):
    """Twin of training.augment.warp_photometric given its random draws: u [B, 3]
    (blur, contrast, brightness uniforms), noise [B, H, W, 1] (already scaled). Frame i is
    blurred (3x3 binomial, edges replicated) when u[i, 0] < blur_prob, warped inside the
    source's content box, its contrast scaled about the mean of the source's content,
    brightness and noise added, clipped to [0, 1], 0 outside the warped content."""
    images = np.asarray(images, np.float64)
    b, h, w, ch = images.shape
    out = np.zeros_like(images)
    k = np.array([1.0, 2.0, 1.0]) / 4.0
    for i in range(b):
        src = images[i]
        if u[i, 0] < blur_prob:
            p = np.pad(src, ((1, 1), (1, 1), (0, 0)), mode="edge")
            src = sum(k[dy] * k[dx] * p[dy:dy + h, dx:dx + w]
                      for dy in range(3) for dx in range(3))
        box = _content_box(images[i])                       # of the source, before blur
        x0, y0, x1, y1 = box
        warped, valid = _warp_frame(src, a[i], t[i], box)
        mean = images[i, y0:y1 + 1, x0:x1 + 1].mean()
        x = (warped - mean) * (1 + contrast * (2 * u[i, 1] - 1)) + mean
        x = np.clip(x + brightness * (2 * u[i, 2] - 1) + noise[i], 0, 1)
        out[i] = x * valid[..., None]
    return out


# ----------------------------------------------------------------------------- coherent sampler
def coherent_draw(positions, subset, u):
    """positions [n] (frame i's point on the circle), subset: the member's frames (any
    order), u [B] uniforms -> [B] frames: for each u, the subset frame whose position is
    the first at or after u going round the circle."""
    out = []
    for x in np.asarray(u, np.float64):
        best, best_d = None, None
        for f in subset:
            d = (float(positions[f]) - x) % 1.0      # distance going forward from u
            if best_d is None or d < best_d:
                best, best_d = int(f), d
        out.append(best)
    return np.asarray(out)


def multiview_residual(labels, cols, fit, n_components=3):
    """Twin of `analysis.multiview.fit_pca` + `residual`: the PCA from the eigenvectors of
    the covariance of the fit rows (not an SVD), refit without the rows beyond Q3 + 3 IQR
    of the first fit's residuals, each row's residual by least squares on the component
    basis, one row at a time. labels [n, K, 2], cols [V, J], fit bool [n]
    -> [n, J] pixels (NaN where a view is unlabeled)."""
    labels = np.asarray(labels, np.float64)
    cols = np.asarray(cols)
    n = labels.shape[0]
    v_n, j_n = cols.shape
    rows = np.full((n, j_n, 2 * v_n), np.nan)
    for i in range(n):
        for j in range(j_n):
            rows[i, j] = np.concatenate([labels[i, cols[v, j]] for v in range(v_n)])
    x = np.array([rows[i, j] for i in range(n) for j in range(j_n)
                  if fit[i] and np.isfinite(rows[i, j]).all()])

    def fit_basis(x):
        mean = x.mean(0)
        w, vec = np.linalg.eigh(np.cov((x - mean).T))
        return mean, vec[:, np.argsort(w)[::-1][:n_components]]   # [2V], [2V, C]

    def resid(y, basis):
        coef = np.linalg.lstsq(basis, y, rcond=None)[0]
        return math.sqrt(float(((y - basis @ coef) ** 2).sum()))
    mean, basis = fit_basis(x)
    r = np.array([resid(row - mean, basis) for row in x])
    q1, q3 = np.percentile(r, [25, 75])
    mean, basis = fit_basis(x[r <= q3 + 3 * (q3 - q1)])   # refit without the far-out rows
    out = np.full((n, j_n), np.nan)
    for i in range(n):
        for j in range(j_n):
            y = rows[i, j] - mean
            if np.isfinite(y).all():
                out[i, j] = resid(y, basis)
    return out


# ----------------------------------------------------------------------------- crop windows
def crop_offsets(u, keypoints, valid_hw, size, background_share, jitter):
    """Twin of training.crop.offsets_from_uniforms: u [B, 3] uniforms, keypoints [B, K, 2]
    (x, y; NaN = unlabeled), valid_hw [B, 2] (height, width) -> int [B, 2] (y0, x0). A
    foreground window is centred on the labeled keypoints' box centre shifted by up to
    jitter * size; a background one (u[b, 0] < background_share, or nothing labeled)
    starts uniformly among the starts that keep it inside the frame; both are then kept
    inside the frame (start 0 where the frame is smaller than the window)."""
    out = np.zeros((len(u), 2), np.int64)
    for b in range(len(u)):
        pts = [p for p in np.asarray(keypoints[b], np.float64) if np.isfinite(p).all()]
        background = not pts or u[b][0] < background_share
        for axis, (coord, extent, uu) in enumerate(((1, size[0], u[b][2]),
                                                    (0, size[1], u[b][1]))):
            free = max(int(valid_hw[b][axis]) - extent, 0)
            if background:
                start = math.floor(uu * (free + 1))
            else:
                vals = [p[coord] for p in pts]
                centre = (min(vals) + max(vals)) / 2 + (2 * uu - 1) * jitter * extent
                start = math.floor(centre - (extent - 1) / 2 + 0.5)  # nearest start
            out[b, axis] = min(max(start, 0), free)
    return out


def crop_windows(images, keypoints, offsets, valid_hw, size):
    """Twin of training.crop.cut_windows: window pixel (i, j) of frame b is frame pixel
    (y0 + i, x0 + j) when that lies inside the frame's valid area, else 0; a label moves
    to p - (x0, y0) and is NaN when it falls outside [-0.5, w - 0.5] x [-0.5, h - 0.5]."""
    h, w = size
    b_n, _, _, c = images.shape
    out = np.zeros((b_n, h, w, c), images.dtype)
    kp = np.full(np.shape(keypoints), np.nan)
    for b in range(b_n):
        y0, x0 = (int(v) for v in offsets[b])
        for i in range(h):
            for j in range(w):
                if y0 + i < valid_hw[b][0] and x0 + j < valid_hw[b][1]:
                    out[b, i, j] = images[b, y0 + i, x0 + j]
        for k, (x, y) in enumerate(np.asarray(keypoints[b], np.float64)):
            x, y = x - x0, y - y0
            if -0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5:
                kp[b, k] = (x, y)
    return out, kp
