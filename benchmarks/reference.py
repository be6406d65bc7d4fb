"""The straightforward CLASP implementation a user would write from the paper.

Dense ``scipy.linalg.eigh`` of the full cosine affinity, the paper's elbow
rule on the eigengaps, then for every K of the search range: k-means with 10
restarts on the row-normalised leading eigenvectors and
``sklearn.metrics.silhouette_score``. The benchmarks compare the package
against it, side by side.
"""

import math

import numpy as np
import scipy.linalg
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import normalize


def straightforward_clasp(X, *, k_min=2, k_max=15, beta=0.5, random_state=0):
    """Return ``(labels, chosen_k, k0)`` for features ``X`` (n_patches, dim)."""
    Xn = normalize(X)
    A = np.maximum(Xn @ Xn.T, 0.0)
    w, V = scipy.linalg.eigh(A)
    w, V = w[::-1], V[:, ::-1]
    gaps = w[:k_max] - w[1 : k_max + 1]
    x = np.arange(1, gaps.size + 1)
    x0, y0, x1, y1 = x[0], gaps[0], x[-1], gaps[-1]
    dist = np.abs((y1 - y0) * x - (x1 - x0) * gaps + x1 * y0 - y1 * x0)
    k0 = int(np.argmax(dist)) + 2
    lo = max(k_min, math.floor(k0 * (1 - beta)))
    hi = min(k_max, math.ceil(k0 * (1 + beta)))
    best = (-np.inf, None, None)
    for k in range(lo, hi + 1):
        emb = normalize(V[:, :k])
        labels = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit_predict(emb)
        if len(np.unique(labels)) < 2:
            continue
        s = silhouette_score(X, labels, metric="cosine")
        if s > best[0]:
            best = (s, k, labels)
    return best[2], best[1], k0
