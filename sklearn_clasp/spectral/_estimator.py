"""The estimator: :class:`AdaptiveSpectralSegmenter`, a thin layer over the core."""

from __future__ import annotations

import logging
import numbers

import numpy as np
from scipy import sparse
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.metrics import adjusted_rand_score
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    check_is_fitted,
    check_non_negative,
    check_symmetric,
    validate_data,
)

from ..affinity import MAX_DENSE_SAMPLES, cosine_affinity, local_scaling_affinity
from ..records import (
    check_records,
    check_untabled_output,
    forget_fitted,
    grid_feature_matrix,
    is_record_sequence,
)
from ._background import background_scores, segment_statistics
from ._core import (
    _CORE_CONSTRAINTS,
    DEFAULTS,
    adaptive_spectral_clustering,
    check_k_bounds,
    cluster_features,
    spectral_extension,
)

logger = logging.getLogger("sklearn_clasp.spectral")

#: Settings that reproduce the CLASP paper's K selection exactly: eigenvalues of
#: the affinity itself, the elbow rule, the best silhouette around it, and no
#: one-segment test.
PAPER_SETTINGS = {
    "spectrum": "affinity",
    "eigengap_rule": "elbow",
    "k_selection": "silhouette",
    "single_segment_threshold": None,
}

#: The background score shipped in ``info["background"]`` (``None``: the
#: per-segment statistics without a flagged segment). Chosen by the protocol of
#: ``benchmarks/k_selection_protocol.md``; see ``docs/spectral.md``.
BACKGROUND_SCORE = None


def background_info(labels, grid_shape, features):
    """``info["background"]``: per-segment statistics and the flagged segment."""
    stats = segment_statistics(labels, grid_shape=grid_shape, features=features)
    out = {"segment": None, "score": float("nan"), "score_name": BACKGROUND_SCORE}
    if BACKGROUND_SCORE is not None and len(stats["area"]) > 1:
        scores = background_scores(stats, BACKGROUND_SCORE)
        best = int(np.argmax(scores))
        out.update(segment=best, score=float(scores[best]), scores=scores.tolist())
    out.update(stats)
    return out


class AdaptiveSpectralSegmenter(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin,
                                BaseEstimator):
    """CLASP's adaptive spectral clustering: picks K itself, then clusters.

    Two kinds of input:

    * A plain matrix (the scikit-learn clusterer, as
      :class:`~sklearn.cluster.SpectralClustering`): ``(n_samples,
      n_features)`` features, clustered on their cosine affinity
      (``affinity="cosine"``) or their self-tuning Gaussian affinity
      (``affinity="local_scaling"``, for ordinary Euclidean data), or a
      square ``(n_samples, n_samples)`` affinity (``affinity="precomputed"``).
      ``fit`` sets the attributes below (scalars: ``n_clusters_`` is an
      ``int``); :meth:`predict` labels new samples and :meth:`transform`
      places them in the spectral embedding (Nystroem extension), a feature
      table (:meth:`get_feature_names_out`, ``set_output``); :meth:`score`
      is the adjusted Rand index, so
      :class:`~sklearn.model_selection.GridSearchCV` works with or without
      ``scoring=``.
    * A list of :class:`~sklearn_clasp.records.PatchGrid` records, one per
      image, as a Pipeline step. Training-free: each image is segmented on
      its own by :meth:`transform` (or :meth:`predict`, which returns the
      ``(h, w)`` label grids), without ``fit``, on the record's ``affinity``
      when it has one (from :class:`CosineAffinity`), else on its features;
      the records come back with ``labels``, ``proba`` (``(h, w, K)`` soft
      assignment) and every per-image diagnostic in ``info``
      (``n_clusters``, ``eigengap_k``, ``eigenvalues``,
      ``silhouette_scores``, ...). The estimator keeps nothing about the
      images: ``fit`` on records only checks them and forgets an earlier fit
      on a matrix, so no attribute can describe other images than the
      masks next to it. An image's result depends only on the image and
      the parameters, not on its place in the list.

    What each method means on each input: :doc:`/sklearn_semantics`.

    The algorithm, each rule and the measurements behind the defaults are in
    :doc:`/spectral`.

    Parameters
    ----------
    affinity : {"cosine", "local_scaling", "precomputed"}, default="cosine"
        How a plain matrix is read. Ignored for records.
    spectrum : {"affinity", "normalized"}, default="affinity"
        Decompose the affinity itself (the paper) or the normalised affinity.
    eigengap_rule : {"relative", "largest", "elbow", "entropy"}, default="relative"
        How the first estimate ``K0`` is read from the eigenvalues.
    k_selection : {"silhouette", "eigengap", "stability", "gap", "rotation"}, \
            default="silhouette"
        How the final K is chosen.
    k_min : int, default=1
        Smallest K; ``K = 1`` only with ``k_min=1`` and a one-segment test.
    k_max : int, default=15
        Largest K, at most 64.
    beta : float, default=0.5
        Relative half-width of the search around ``K0``.
    single_segment_test : {"entropy", "cheeger", "gap"} or None, default="entropy"
        The one-segment test (with ``k_min=1``).
    single_segment_threshold : float or None, default=0.05
        Threshold of the ``"cheeger"`` test; ``None`` disables every
        one-segment test.
    n_init : int, default=3
        k-means restarts per K, at most :data:`MAX_N_INIT`.
    max_dense_samples : int or None, default=10_000
        Memory bound when the segmenter builds the affinity itself: past it,
        landmark samples (:func:`cluster_features`). ``None``: always dense.
    random_state : int, RandomState instance or None, default=None
        Makes the eigensolver, k-means and the landmarks repeatable.
    device : {None, "auto", "cpu", "cuda"} or "cuda:<index>", default=None
        ``None``: NumPy and SciPy. Otherwise the affinity (when the segmenter
        builds it), the eigenpairs, k-means and the silhouettes run in
        PyTorch on that device, with the same results up to rounding (see
        :doc:`/device`).

    Attributes
    ----------
    All set by :meth:`fit` on a plain matrix only (records leave none).

    labels_ : ndarray of shape (n_samples,)
        Cluster of each sample.
    n_clusters_ : int
        The chosen K.
    eigengap_k_ : int
        K0, the first estimate.
    eigenvalues_ : ndarray
        Leading eigenvalues of the decomposed matrix, descending.
    silhouette_scores_ : dict
        K -> silhouette of the candidate partitions; empty for one segment.
    proba_ : ndarray of shape (n_samples, K)
        Soft assignment of each sample to the clusters (argmax: ``labels_``).
    cluster_centers_ : ndarray of shape (K, K)
        The k-means centres in the spectral embedding, used by
        :meth:`predict`.
    eigenvectors_ : ndarray of shape (n_fit, K)
        Leading ``K = n_clusters_`` eigenvectors, used by :meth:`transform`
        and :meth:`predict`; ``n_fit`` is ``n_samples`` or the landmarks.
    degrees_ : ndarray of shape (n_fit,) or None
        Affinity degrees of the fitted samples (``spectrum="normalized"``).
    X_fit_ : ndarray of shape (n_fit, n_features) or None
        The fitted features (feature input).
    local_scales_ : ndarray of shape (n_fit,) or None
        Local scales of the fitted samples (``affinity="local_scaling"``).
    landmark_indices_ : ndarray of shape (n_fit,) or None
        Rows of ``X`` used as landmarks, else ``None``.
    n_features_in_ : int
        Features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the features, when ``X`` had string column names.

    See Also
    --------
    adaptive_spectral_clustering : The functional form on an affinity.
    cluster_features : The functional form on features, in bounded memory.
    sklearn.cluster.SpectralClustering : Spectral clustering with a fixed K.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp import AdaptiveSpectralSegmenter
    >>> rng = np.random.RandomState(0)
    >>> X = np.repeat(np.eye(4), 25, axis=0) + 0.05 * rng.randn(100, 4)
    >>> seg = AdaptiveSpectralSegmenter(random_state=0).fit(X)
    >>> seg.n_clusters_
    4
    >>> bool((seg.predict(X) == seg.labels_).all()), seg.transform(X[:2]).shape
    (True, (2, 4))
    >>> y = np.repeat(np.arange(4), 25)
    >>> seg.score(X, y)        # adjusted Rand index against y
    1.0
    """

    # Needs no fit on image records (ClaspPipeline.fit only checks its settings).
    _training_free = True

    _parameter_constraints: dict = {
        "affinity": [StrOptions({"cosine", "local_scaling", "precomputed"})],
        **_CORE_CONSTRAINTS,
        "max_dense_samples": [Interval(numbers.Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        *,
        affinity="cosine",
        spectrum=DEFAULTS["spectrum"],
        eigengap_rule=DEFAULTS["eigengap_rule"],
        k_selection=DEFAULTS["k_selection"],
        k_min=DEFAULTS["k_min"],
        k_max=DEFAULTS["k_max"],
        beta=DEFAULTS["beta"],
        single_segment_test=DEFAULTS["single_segment_test"],
        single_segment_threshold=DEFAULTS["single_segment_threshold"],
        n_init=DEFAULTS["n_init"],
        max_dense_samples=MAX_DENSE_SAMPLES,
        random_state=None,
        device=DEFAULTS["device"],
    ):
        self.affinity = affinity
        self.spectrum = spectrum
        self.eigengap_rule = eigengap_rule
        self.k_selection = k_selection
        self.k_min = k_min
        self.k_max = k_max
        self.beta = beta
        self.single_segment_test = single_segment_test
        self.single_segment_threshold = single_segment_threshold
        self.n_init = n_init
        self.max_dense_samples = max_dense_samples
        self.random_state = random_state
        self.device = device

    # -- helpers ----------------------------------------------------------
    def _core_params(self, random_state, k_min=None):
        return dict(
            spectrum=self.spectrum, eigengap_rule=self.eigengap_rule,
            k_selection=self.k_selection,
            k_min=self.k_min if k_min is None else k_min, k_max=self.k_max,
            beta=self.beta, single_segment_test=self.single_segment_test,
            single_segment_threshold=self.single_segment_threshold, n_init=self.n_init,
            random_state=random_state, device=self.device,
        )

    def _segment_array(self, X):
        """Segment a plain matrix; set what transform needs; return labels, info, emb."""
        if self.affinity == "precomputed":
            if X.shape[0] != X.shape[1]:
                raise ValueError(
                    f"affinity='precomputed' needs a square affinity matrix; got "
                    f"shape {X.shape}. Pass features with affinity='cosine'."
                )
            if self.spectrum == "normalized":
                check_non_negative(
                    X, "AdaptiveSpectralSegmenter (a precomputed affinity with "
                    "spectrum='normalized'; clip negative affinities or use "
                    "spectrum='affinity')"
                )
            labels, info, emb = adaptive_spectral_clustering(
                X, return_embedding=True, **self._core_params(self.random_state))
            degrees = (np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
                       if self.spectrum == "normalized" else None)
            emb = emb._replace(degrees=degrees)
            self.X_fit_ = None
            self.local_scales_ = None
        else:
            labels, info, emb = cluster_features(
                X, affinity=self.affinity, max_dense_samples=self.max_dense_samples,
                return_embedding=True, **self._core_params(self.random_state))
            self.X_fit_ = X if emb.landmarks is None else X[emb.landmarks]
            self.local_scales_ = None
            if self.affinity == "local_scaling":
                from ..affinity import local_scales

                self.local_scales_ = local_scales(self.X_fit_)
        self.degrees_ = emb.degrees
        self.eigenvectors_ = emb.eigenvectors[:, :emb.embedding.shape[1]]
        self.cluster_centers_ = np.asarray(emb.centers, dtype=np.float64)
        self.landmark_indices_ = emb.landmarks
        return labels, info, emb

    def _image_seed(self):
        """One seed for every image of a call, from ``random_state`` alone."""
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _segment_record(self, rec, seed):
        feats = (grid_feature_matrix(rec, step="AdaptiveSpectralSegmenter")
                 if rec.features is not None else None)
        n = rec.n_patches
        k_min = self.k_min
        if n >= 3 and k_min > n - 1:
            logger.info("%s has %d patches: k_min=%d clipped to %d", rec.name, n,
                        k_min, n - 1)
            k_min = n - 1
        params = self._core_params(seed, k_min=k_min)
        if rec.affinity is not None:
            A = rec.affinity
            if A.shape != (n, n):
                raise ValueError(
                    f"AdaptiveSpectralSegmenter: record {rec.name!r} has a "
                    f"{A.shape[0]} x {A.shape[1]} affinity for {n} "
                    f"patches; recompute it with CosineAffinity."
                )
            labels, info, emb = adaptive_spectral_clustering(
                A, features=feats, return_embedding=True, check_input=True, **params)
        else:
            labels, info, emb = cluster_features(
                feats, max_dense_samples=self.max_dense_samples, return_embedding=True,
                **params)
        h, w = rec.grid_shape
        info["background"] = background_info(labels, rec.grid_shape, feats)
        return rec.replace(labels=labels.reshape(h, w),
                           proba=emb.proba.reshape(h, w, -1), info=info)

    def _set_fitted(self, labels, info, proba):
        """The attributes of a fit on a plain matrix (as SpectralClustering's)."""
        self.labels_ = labels
        self.proba_ = proba
        self.n_clusters_ = int(info["n_clusters"])
        self.eigengap_k_ = int(info["eigengap_k"])
        self.eigenvalues_ = np.asarray(info["eigenvalues"])
        self.silhouette_scores_ = {int(k): float(v)
                                   for k, v in info["silhouette_scores"].items()}

    @staticmethod
    def _check_input(rec):
        """A record to segment has features or an affinity."""
        if rec.affinity is None and rec.features is None:
            raise ValueError(
                f"AdaptiveSpectralSegmenter: record {rec.name!r} has neither "
                f"features nor an affinity; put a patch embedder before it."
            )

    def _segment_records(self, X):
        records = check_records(X, step="AdaptiveSpectralSegmenter")
        for rec in records:
            self._check_input(rec)
        check_k_bounds(self.k_min, self.k_max)
        seed = self._image_seed()
        return [self._segment_record(r, seed) for r in records]

    def _check_records_only(self, X):
        """``fit`` on records: check them, learn nothing, forget a matrix fit."""
        check_k_bounds(self.k_min, self.k_max)
        for rec in check_records(X, step="AdaptiveSpectralSegmenter"):
            self._check_input(rec)
            if rec.features is not None:
                grid_feature_matrix(rec, step="AdaptiveSpectralSegmenter")
            n = rec.n_patches
            if rec.affinity is not None and rec.affinity.shape != (n, n):
                raise ValueError(
                    f"AdaptiveSpectralSegmenter: record {rec.name!r} has a "
                    f"{rec.affinity.shape[0]} x {rec.affinity.shape[1]} affinity for "
                    f"{n} patches; recompute it with CosineAffinity."
                )
        forget_fitted(self)
        self._fitted_on_records = True

    def _check_settings(self):
        """What ``fit`` checks beyond the parameter constraints."""
        check_k_bounds(self.k_min, self.k_max)

    def __sklearn_is_fitted__(self):
        return hasattr(self, "labels_") or getattr(self, "_fitted_on_records", False)

    @property
    def _n_features_out(self):
        return self.eigenvectors_.shape[1]

    def _check_matrix_fitted(self, method):
        check_is_fitted(self)
        if not hasattr(self, "eigenvectors_"):
            raise ValueError(
                f"AdaptiveSpectralSegmenter.{method}: this segmenter was fitted on "
                f"image records, which leave nothing to {method} a matrix with; "
                f"{method} records (no fit needed), or fit a matrix first."
            )

    # -- API ---------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Cluster a matrix and store the result; on records, only check them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_samples), \
                or list of PatchGrid
            Features, a precomputed affinity, or per-image records. Records
            are checked, not segmented: nothing is learned from images (see
            :meth:`transform`).
        y : None
            Ignored.

        Returns
        -------
        self : AdaptiveSpectralSegmenter
        """
        if is_record_sequence(X):
            self._check_records_only(X)
            return self
        self._fit_matrix(X)
        return self

    def _fit_matrix(self, X):
        check_k_bounds(self.k_min, self.k_max)
        self._fitted_on_records = False
        precomputed = self.affinity == "precomputed"
        X = validate_data(
            self, X, accept_sparse=["csr", "csc", "coo"] if precomputed else False,
            dtype=[np.float64, np.float32], ensure_min_samples=2,
        )
        if precomputed and not sparse.issparse(X):
            X = check_symmetric(X, raise_warning=False)
        labels, info, emb = self._segment_array(X)
        self._set_fitted(labels, info, emb.proba)
        return emb.embedding.astype(X.dtype, copy=False)

    def fit_predict(self, X, y=None):
        """Cluster ``X`` and return the labels.

        Parameters
        ----------
        X : array-like or list of PatchGrid
            See :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        labels : ndarray of shape (n_samples,), or list of ndarray of shape (h, w)
            The labels of the samples, or each image's patch labels.
        """
        if is_record_sequence(X):
            self._validate_params()
            self._check_records_only(X)
            return [r.labels for r in self._segment_records(X)]
        return self.fit(X).labels_

    def fit_transform(self, X, y=None):
        """Cluster ``X``; return the spectral embedding, or the segmented records.

        Parameters
        ----------
        X : array-like or list of PatchGrid
            See :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        Xt : ndarray of shape (n_samples, K), or list of PatchGrid
            The row-normalised spectral embedding (``K = n_clusters_``
            columns), or the segmented records.
        """
        self._validate_params()
        if is_record_sequence(X):
            check_untabled_output(self, "PatchGrid records")
            self._check_records_only(X)
            return self._segment_records(X)
        return self._fit_matrix(X)

    def predict(self, X):
        """Label new samples, or segment each record's image.

        Parameters
        ----------
        X : array-like or list of PatchGrid
            A matrix as in :meth:`transform` (needs a fit on a matrix): each
            sample takes the cluster whose k-means centre is nearest to it in
            the spectral embedding (on the fitted samples this gives back
            ``labels_``). Records: segmented afresh, no fit needed.

        Returns
        -------
        labels : ndarray of shape (n_samples,), or list of ndarray of shape (h, w)
        """
        if is_record_sequence(X):
            self._validate_params()
            return [r.labels for r in self._segment_records(X)]
        self._check_matrix_fitted("predict")
        E = np.asarray(self._extend(X), dtype=np.float64)
        C = self.cluster_centers_
        if C.shape[0] == 1:
            return np.zeros(E.shape[0], dtype=np.int64)
        d2 = (E * E).sum(1)[:, None] - 2.0 * E @ C.T + (C * C).sum(1)[None, :]
        return np.argmin(d2, axis=1).astype(np.int64)

    def score(self, X, y=None):
        """Adjusted Rand index of :meth:`predict` on ``X`` against ``y``.

        The default score of a search
        (``GridSearchCV(AdaptiveSpectralSegmenter(), grid).fit(X, y)``
        without ``scoring=``): :func:`~sklearn.metrics.adjusted_rand_score`
        of ``y`` and ``predict(X)``, as ``scoring="adjusted_rand_score"``
        gives.

        There is no score without ``y``: no unsupervised score measured so
        far ranks the settings as the ground truth does better than the
        silhouette the segmenter maximises itself (``benchmarks/RESULTS.md``),
        so none is offered as a default; pass ``scoring=`` to choose one
        knowingly.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples (with ``affinity="precomputed"``, their affinity to the
            fitted samples).
        y : array-like of shape (n_samples,)
            True labels.

        Returns
        -------
        score : float
            In ``[-1, 1]`` (1: the same partition); higher is better.

        Raises
        ------
        ValueError
            Without ``y``.
        """
        if is_record_sequence(X):
            raise TypeError(
                "AdaptiveSpectralSegmenter.score scores plain matrices; to score "
                "image segmentations use the scorers of sklearn_clasp.metrics "
                "(make_segmentation_scorer)."
            )
        if y is None:
            raise ValueError(
                "AdaptiveSpectralSegmenter.score needs the true labels y (it is the "
                "adjusted Rand index of predict(X) against y). Without labels, pass "
                "scoring= to the search: no unsupervised score has been found to "
                "rank settings as the ground truth does better than the silhouette "
                "the segmenter maximises itself (see benchmarks/RESULTS.md)."
            )
        labels = self.predict(X)
        return float(adjusted_rand_score(np.asarray(y).ravel(), labels))

    def transform(self, X):
        """Segment each record of ``X``, or embed the matrix ``X`` spectrally.

        Parameters
        ----------
        X : array-like or list of PatchGrid
            Records are segmented afresh (each image on its own, no fit
            needed). A plain matrix (features, or with
            ``affinity="precomputed"`` its ``(n_samples, n_fitted)`` affinity
            to the fitted samples) is placed in the fitted spectral embedding
            by the Nystroem extension ``v(x) = a(x) V / lambda``,
            row-normalised: on the fitted samples this gives back exactly the
            embedding k-means clustered.

        Returns
        -------
        Xt : list of PatchGrid, or ndarray of shape (n_samples, K)
            The segmented records, or the samples in the spectral embedding
            (``K = n_clusters_`` columns; a data frame with
            ``set_output(transform="pandas")``).
        """
        if is_record_sequence(X):
            self._validate_params()
            check_untabled_output(self, "PatchGrid records")
            return self._segment_records(X)
        self._check_matrix_fitted("transform")
        return self._extend(X)

    def _extend(self, X):
        X = validate_data(
            self, X,
            accept_sparse=["csr", "csc", "coo"] if self.affinity == "precomputed" else False,
            dtype=[np.float64, np.float32], reset=False,
        )
        if self.affinity == "precomputed":
            A = X
        elif self.affinity == "local_scaling":
            A = local_scaling_affinity(X, self.X_fit_, scales_Y=self.local_scales_)
        else:
            A = cosine_affinity(X, self.X_fit_)
        emb = spectral_extension(A, self.eigenvectors_, self.eigenvalues_, self.degrees_)
        return emb.astype(X.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = self.affinity == "precomputed"
        tags.input_tags.sparse = self.affinity == "precomputed"
        tags.input_tags.positive_only = (
            self.affinity == "precomputed" and self.spectrum == "normalized"
        )
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
