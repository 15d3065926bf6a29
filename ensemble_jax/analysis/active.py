"""Active-learning selection: orders in which to label the frames of an unlabeled pool.

Every strategy returns an order (int indices into the pool, best first), so a budget of
b frames is `order[:b]` and larger budgets contain smaller ones.

  uniform              a random permutation (the baseline)
  score                descending score with random tie breaks (MPE, spread,
                       representativeness: higher = label first)
  cluster_balanced     k-means on features; clusters are visited in turn (largest first),
                       each handing over its next frame (random order inside a cluster)

Scores are computed by the caller from the ensemble trained on the labeled base set:
MPE (max over keypoints, mean over members), ensemble spread (mean over keypoints of
the members' RMS distance to their mean, in pixels) and representativeness (mean cosine
similarity of the frame's encoder features to the rest of the pool; with several members,
computed per member on centred features and averaged, see experiments/study5).
"""
from __future__ import annotations

import numpy as np

STRATEGIES = ("uniform", "mpe", "representativeness", "spread", "cluster")


def uniform_order(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n)


def score_order(score: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Descending `score` (NaN last), ties broken at random."""
    score = np.asarray(score, np.float64)
    s = np.where(np.isfinite(score), score, -np.inf)
    tie = rng.random(s.size)
    return np.lexsort((tie, -s))


def kmeans(features: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50, *,
           standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding. features float [N, D] ->
    (labels int [N], centres [k, D]). Features are standardised per dimension first unless
    `standardize=False` (for an embedding whose geometry is already the one wanted)."""
    x = np.asarray(features, np.float64)
    n = x.shape[0]
    k = int(max(1, min(k, n)))
    if standardize:
        sd = x.std(0)
        x = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None] - np.array(centres)[None]) ** 2).sum(-1), 1)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(x[rng.choice(n, p=p)])
    c = np.array(centres)
    labels = np.zeros(n, np.int64)
    for it in range(iters):
        d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
        new = d2.argmin(1)
        if it and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(0)
    return labels, c


def cluster_balanced_order(features: np.ndarray, k: int, rng: np.random.Generator, *,
                           standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(order, cluster labels): k-means clusters visited round-robin, largest first."""
    labels, _ = kmeans(features, k, rng, standardize=standardize)
    clusters = sorted(np.unique(labels), key=lambda j: -(labels == j).sum())
    queues = [list(rng.permutation(np.flatnonzero(labels == j))) for j in clusters]
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return np.asarray(order, np.int64), labels


def select_order(strategy: str, *, n: int, rng: np.random.Generator,
                 mpe: np.ndarray | None = None, spread: np.ndarray | None = None,
                 representativeness: np.ndarray | None = None,
                 features: np.ndarray | None = None, n_clusters: int = 5,
                 standardize: bool = True) -> np.ndarray:
    """The labeling order of an `n`-frame pool under `strategy` (see STRATEGIES)."""
    if strategy == "uniform":
        return uniform_order(n, rng)
    if strategy == "mpe":
        return score_order(mpe, rng)
    if strategy == "spread":
        return score_order(spread, rng)
    if strategy == "representativeness":
        return score_order(representativeness, rng)
    if strategy == "cluster":
        return cluster_balanced_order(features, n_clusters, rng, standardize=standardize)[0]
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
