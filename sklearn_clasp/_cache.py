"""Checks on cache directories, whose entries are pickles (trusted data)."""

import os
import warnings

__all__ = ["check_cache_location"]


def check_cache_location(memory, *, what="feature cache", stacklevel=3):
    """Warn when someone else could have written the entries of a cache directory.

    :class:`joblib.Memory` entries are pickles, loaded (and able to run code)
    on a cache hit, so a cache directory is as trusted as code. The check is
    made on POSIX systems only.

    Parameters
    ----------
    memory : str, os.PathLike, joblib.Memory or None
        The cache: a directory or an object with a ``location`` attribute.
        ``None`` (no cache) is never warned about.
    what : str, default="feature cache"
        What the cache holds, for the message.
    stacklevel : int, default=3
        Passed to :func:`warnings.warn`.

    Returns
    -------
    warned : bool
        Whether a warning was issued.
    """
    if isinstance(memory, (str, os.PathLike)):
        location = os.fspath(memory)
    else:
        location = getattr(memory, "location", None)
    if location is None or not hasattr(os, "geteuid"):
        return False
    try:
        st = os.stat(location)
    except OSError:  # not created yet: joblib creates it for us, owned by us
        return False
    if st.st_uid != os.geteuid():
        who = "is owned by another user"
    elif st.st_mode & 0o022:
        who = "is writable by other users"
    else:
        return False
    warnings.warn(
        f"memory={location!r}: the {what} directory {who}. Its entries are "
        f"pickles, loaded (and able to run code) on a cache hit; use a directory that "
        f"only you can write to.",
        UserWarning,
        stacklevel=stacklevel,
    )
    return True
