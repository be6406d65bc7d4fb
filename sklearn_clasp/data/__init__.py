"""Sample images bundled with sklearn-clasp.

Three small public-domain / CC0 photographs from scikit-image's data set
(``astronaut``, ``coffee``, ``chelsea``), downscaled to at most 320 pixels on
the longer side. Sources and licences are listed in ``LICENSES.md`` next to
the files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["SAMPLE_IMAGE_NAMES", "sample_image_paths"]

#: Stems of the bundled sample images, in the order :func:`sample_image_paths` returns them.
SAMPLE_IMAGE_NAMES = ("astronaut", "coffee", "chelsea")


def sample_image_paths() -> list[Path]:
    """Paths of the bundled sample images.

    Returns
    -------
    paths : list of pathlib.Path
        ``astronaut.jpg``, ``coffee.jpg`` and ``chelsea.jpg``, in that order
        (RGB JPEG files, at most 320 pixels on the longer side).

    Raises
    ------
    FileNotFoundError
        If the package was installed without its data files.

    Examples
    --------
    >>> from sklearn_clasp.data import sample_image_paths
    >>> [p.name for p in sample_image_paths()]
    ['astronaut.jpg', 'coffee.jpg', 'chelsea.jpg']
    """
    root = resources.files(__name__)
    paths = []
    for stem in SAMPLE_IMAGE_NAMES:
        entry = root.joinpath(f"{stem}.jpg")
        if not entry.is_file():
            raise FileNotFoundError(
                f"sample image {stem}.jpg is missing from the sklearn_clasp.data "
                f"package; reinstall sklearn-clasp with its package data "
                f"(pip install --force-reinstall sklearn-clasp)."
            )
        paths.append(Path(str(entry)))
    return paths
