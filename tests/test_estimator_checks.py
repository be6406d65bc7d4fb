"""scikit-learn's own estimator checks, on every public estimator.

The estimators whose input is an ordinary 2-D array (the affinity and the
segmenter on plain matrices) pass every check. The image steps and the
pipeline take lists of images or records; their tags say so
(``two_d_array=False``), so ``check_estimator`` runs only the checks that
apply to any input, and tests/test_contract.py checks the rest on image lists.
"""

import warnings

import pytest
from sklearn.exceptions import SkipTestWarning
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks

from sklearn_clasp import (
    PAPER_SETTINGS,
    AdaptiveSpectralSegmenter,
    CosineAffinity,
    CRFRefiner,
    HandcraftedPatchEmbedder,
    make_clasp_pipeline,
)

ESTIMATORS = [
    CosineAffinity(),
    CosineAffinity(clip_negative=False),
    AdaptiveSpectralSegmenter(random_state=0),
    AdaptiveSpectralSegmenter(spectrum="normalized", eigengap_rule="largest", random_state=0),
    AdaptiveSpectralSegmenter(random_state=0, **PAPER_SETTINGS),
    AdaptiveSpectralSegmenter(affinity="local_scaling", random_state=0),
    AdaptiveSpectralSegmenter(eigengap_rule="entropy", k_selection="rotation", random_state=0),
    AdaptiveSpectralSegmenter(affinity="precomputed", random_state=0),
    AdaptiveSpectralSegmenter(affinity="precomputed", spectrum="normalized", random_state=0),
]

# Every check passes for feature-matrix input (the ordinary 2-D case). With
# affinity="precomputed" the input is an (n, n) affinity, not ordinary 2-D data,
# and one check does not apply:
PRECOMPUTED_XFAIL = {
    "check_clustering": (
        "feeds a non-square (n_samples, 2) feature matrix as if it were a "
        "precomputed affinity (the check builds no kernel for pairwise estimators)"
    ),
}


def _expected_failed_checks(estimator):
    if getattr(estimator, "affinity", None) == "precomputed":
        return PRECOMPUTED_XFAIL
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def _image_estimators():
    from sklearn_clasp.embedding import DinoPatchEmbedder

    return [
        HandcraftedPatchEmbedder(),
        DinoPatchEmbedder(weights="random", download=False),
        CRFRefiner(),
        make_clasp_pipeline("handcrafted"),
        make_clasp_pipeline("dinov2", weights="random", download=False),
    ]


@pytest.mark.parametrize("estimator", _image_estimators(), ids=lambda e: type(e).__name__
                         + ("" if not hasattr(e, "steps") else f"[{e.steps[0][1].__class__.__name__}]"))
def test_image_estimators_pass_the_checks_that_apply(estimator):
    # their input is a list of images or records: the tags say so, and
    # check_estimator skips the checks on 2-D arrays (instead of failing them)
    assert get_tags(estimator).input_tags.two_d_array is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_estimator(estimator)
    assert any(issubclass(w.category, SkipTestWarning) for w in caught)
