"""The K-selection figure (sklearn_clasp.explain)."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from threadpoolctl import threadpool_limits

from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.datasets import make_shapes_image
from sklearn_clasp.explain import (
    eigengap_scores,
    explain_figure,
    explain_reason,
    plot_explanation,
)
from sklearn_clasp.records import PatchGrid
from sklearn_clasp.spectral import eigengap_k


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _record(**info):
    image = np.zeros((28, 42, 3), np.uint8)
    image[:, 28:] = 200
    base = {
        "n_clusters": 2,
        "eigengap_k": 2,
        "eigenvalues": np.array([5.0, 3.0, 1.0, 0.9, 0.8]),
        "silhouette_scores": {2: 0.6, 3: 0.4},
        "silhouette": 0.6,
        "second_eigenvalue": 0.4,
        "single_segment": False,
    }
    base.update(info)
    labels = np.array([[0, 0, 1], [0, 0, 1]])
    mask = np.repeat(np.repeat(labels, 14, axis=0), 14, axis=1)
    return PatchGrid(image=image, grid_shape=(2, 3), labels=labels, info=base,
                     source="/data/photo.png"), mask


# --------------------------------------------------------------------------
# eigengap_scores and explain_reason
# --------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["relative", "largest", "elbow"])
def test_eigengap_scores_pick_the_same_k0_as_the_segmenter(rule):
    rng = np.random.RandomState(0)
    for trial in range(200):
        m = rng.randint(1, 16)
        lam = np.sort(rng.gamma(1.0, size=m + 1))[::-1]
        if trial % 3 == 0:  # exact ties and non-positive eigenvalues
            lam = np.round(lam, 1) - 0.3
        k_min = rng.randint(1, 5)
        k_max = rng.randint(1, 18)
        idx, scores, eligible, best, k0 = eigengap_scores(lam, rule=rule, k_min=k_min,
                                                          k_max=k_max)
        assert k0 == eigengap_k(lam, rule=rule, k_min=k_min, k_max=k_max)
        assert len(idx) == len(scores) == len(eligible) == min(m, k_max)
        assert eligible[best - 1]
        assert scores[best - 1] >= np.max(scores[eligible]) - 1e-9


def test_eigengap_scores_by_hand():
    lam = [5.0, 3.0, 1.0, 0.9, 0.8]  # gaps 2, 2, 0.1, 0.1
    _, scores, eligible, best, k0 = eigengap_scores(lam, rule="relative", k_min=2)
    np.testing.assert_allclose(scores, [0.4, 2 / 3, 0.1, 0.1 / 0.9])
    assert eligible.tolist() == [False, True, True, True] and (best, k0) == (2, 2)
    _, scores, _, best, k0 = eigengap_scores(lam, rule="largest", k_min=1)
    np.testing.assert_allclose(scores, [2, 2, 0.1, 0.1])
    assert (best, k0) == (1, 1)  # a tie goes to the first gap
    _, scores, _, best, k0 = eigengap_scores(lam, rule="elbow")
    # chord from (1, 2) to (4, 0.1): gap 2 is farthest above it; K0 = i* + 1
    assert (best, k0) == (2, 3)
    assert eigengap_scores([1.0], rule="relative")[3:] == (0, 1)


def test_explain_reason():
    info = {"n_clusters": 3, "eigengap_k": 4, "single_segment": False,
            "silhouette_scores": {"2": 0.2, "3": 0.5, "4": 0.5, "5": None, "6": 0.1}}
    assert explain_reason(info, eigengap_rule="elbow") == (
        "K = 3: eigengap elbow gives K0 = 4; best silhouette 0.500 at K = 3 "
        "(searched K = 2..6)")
    # each one-segment test says why, with its own numbers
    one = {"n_clusters": 1, "eigengap_k": 3, "single_segment": True,
           "single_segment_test": {"test": "cheeger", "second_eigenvalue": np.float64(0.0213),
                                   "threshold": 0.05}}
    assert explain_reason(one) == (
        "K = 1 (one segment): the second eigenvalue of the normalised affinity 0.021 is "
        "below the threshold 0.05: no cut separates the patches")
    one["single_segment_test"] = {"test": "entropy", "effective_number": 1.23}
    assert explain_reason(one) == ("K = 1 (one segment): the effective number of leading "
                                   "eigenvalues exp(H) = 1.23 rounds to 1")
    # the other selections name their own scores
    stable = {"n_clusters": 4, "eigengap_k": 4, "k_selection": "stability",
              "k_scores": {3: 0.9, 4: 0.97}, "silhouette_scores": {3: 0.5, 4: 0.4}}
    assert explain_reason(stable) == ("K = 4: largest relative eigengap gives K0 = 4; most "
                                      "stable k-means restarts 0.970 at K = 4 (searched "
                                      "K = 3..4)")
    assert explain_reason({**stable, "k_selection": "eigengap"}).endswith("K = K0 (no search)")
    none_valid = {"n_clusters": 2, "eigengap_k": 2, "silhouette_scores": {2: float("nan")}}
    assert explain_reason(none_valid, eigengap_rule="largest") == (
        "K = 2: largest eigengap gives K0 = 2; no K in K = 2 gave a valid score, "
        "kept K = 2")
    tiny = {"n_clusters": 2, "eigengap_k": 2, "silhouette_scores": {}}
    assert explain_reason(tiny).endswith("no search (too few patches)")
    with pytest.raises(ValueError, match="eigengap_rule"):
        explain_reason(info, eigengap_rule="biggest")


# --------------------------------------------------------------------------
# plot_explanation
# --------------------------------------------------------------------------
def test_plot_explanation_panels():
    record, mask = _record()
    record = record.replace(info={"k_bounds": (2, 4)})  # the bounds the segmenter used
    fig = plot_explanation(record, mask, figsize=(8, 5), dpi=40)
    image_ax, spec_ax, sil_ax, labels_ax, mask_ax, gap_ax = fig.axes
    assert fig._suptitle.get_text() == explain_reason(dict(record.info))
    assert image_ax.get_title() == "photo.png (28 x 42 px)"
    assert labels_ax.get_title() == "patch labels (2 x 3 patches, K = 2)"
    assert mask_ax.get_title() == "refined mask (crf, 2 segments)"
    # the eigenvalue curve and the relative gaps between eigenvalues i and i + 1
    np.testing.assert_allclose(spec_ax.lines[0].get_ydata(), [5, 3, 1, 0.9, 0.8])
    bars = gap_ax.patches
    np.testing.assert_allclose([b.get_height() for b in bars], [0.4, 2 / 3, 0.1, 0.1 / 0.9])
    np.testing.assert_allclose([b.get_x() + b.get_width() / 2 for b in bars],
                               [1.5, 2.5, 3.5, 4.5])
    reds = [i for i, b in enumerate(bars) if b.get_facecolor()[:3] == to_rgba("tab:red")[:3]]
    assert reds == [1]  # gap 2 wins; gap 1 is below k_min
    k0_lines = [ln for ln in spec_ax.lines if list(ln.get_xdata()) == [2.0, 2.0]]
    assert k0_lines, "K0 is marked with a vertical line"
    # the silhouette curve with the chosen K starred
    curve = sil_ax.lines[0]
    assert list(curve.get_xdata()) == [2, 3] and list(curve.get_ydata()) == [0.6, 0.4]
    star = [ln for ln in sil_ax.lines if ln.get_marker() == "*"]
    assert len(star) == 1 and list(star[0].get_xdata()) == [2]


def test_plot_explanation_one_segment():
    record, _ = _record(n_clusters=1, single_segment=True, silhouette_scores={},
                        single_segment_test={"test": "entropy", "effective_number": 1.1})
    mask = np.zeros((28, 42), np.int64)
    fig = plot_explanation(record, mask, figsize=(8, 5), dpi=40)
    sil_ax = fig.axes[2]
    assert not sil_ax.lines
    assert "exp(H) = 1.10 rounds to 1" in sil_ax.texts[0].get_text()
    assert fig._suptitle.get_text().startswith("K = 1 (one segment)")
    assert fig.axes[4].get_title() == "refined mask (crf, 1 segment)"


def test_the_figure_draws_the_rule_the_record_was_segmented_with(tmp_path):
    """plot_explanation(record, mask) titled a PAPER_SETTINGS record with the relative rule
    and put the winning gap at i = 1 against K0 = 3."""
    from sklearn_clasp.datasets import make_shapes_image
    from sklearn_clasp.pipeline import clasp_one

    image, _ = make_shapes_image(112, 112, n_shapes=3, random_state=0)
    pipe = make_clasp_pipeline("handcrafted", random_state=0, short_side=None, paper=True)
    mask, record = clasp_one(pipe, image)
    assert record.info["eigengap_rule"] == "elbow" and record.info["beta"] == 0.5
    fig = plot_explanation(record, mask, dpi=30)
    assert "eigengap elbow gives K0 = " in fig._suptitle.get_text()
    assert fig._suptitle.get_text() == explain_reason(dict(record.info))
    assert fig._suptitle.get_text() == explain_figure(image, pipe, dpi=30)._suptitle.get_text()
    with pytest.raises(ValueError, match=r"dpi=0: must be an int in the range \[1, 1000\]"):
        plot_explanation(record, mask, dpi=0)


def test_plot_explanation_rejects_bad_input():
    record, mask = _record()
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\)"):
        plot_explanation(record, record.labels)
    with pytest.raises(ValueError, match="no patch labels"):
        plot_explanation(record.replace(labels=None), mask)
    with pytest.raises(TypeError, match="segmented PatchGrid"):
        plot_explanation(mask, mask)


# --------------------------------------------------------------------------
# explain_figure
# --------------------------------------------------------------------------
def test_explain_figure_end_to_end(tmp_path):
    image, _ = make_shapes_image(112, 140, n_shapes=2, noise=3.0, random_state=0)
    pipe = make_clasp_pipeline("handcrafted", short_side=None, k_max=6, random_state=0)
    pipe.set_params(segment__eigengap_rule="largest", refine__method="nearest")
    fig = explain_figure(image, pipe, figsize=(8, 5), dpi=40)
    title = fig._suptitle.get_text()
    assert title.startswith("K = 3: largest eigengap gives K0 = ")
    assert fig.axes[4].get_title().startswith("refined mask (nearest, 3 segments")
    assert "largest eigengap" in fig.axes[1].get_title()
    path = tmp_path / "fig.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_figure_fits_a_clone_of_an_unfitted_embedder():
    import warnings

    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    pipe = make_clasp_pipeline("dinov2", weights="random", short_side=None, refine="nearest",
                               random_state=0)
    image = np.zeros((42, 56, 3), np.uint8)
    image[:, 28:] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn
        fig = explain_figure(image, pipe, figsize=(6, 4), dpi=30)
    assert fig._suptitle.get_text().startswith("K = ")
    with pytest.raises(NotFittedError):
        check_is_fitted(pipe[0])


def test_explain_figure_needs_a_clasp_pipeline():
    with pytest.raises(TypeError, match="CLASP Pipeline with a 'segment' step"):
        explain_figure(np.zeros((28, 28, 3), np.uint8), pipeline="handcrafted")
