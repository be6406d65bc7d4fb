"""Devices: where the package's PyTorch computations run.

Every stage of the CLASP pipeline has a ``device`` parameter with the same
values (see ``docs/device.md``):

- ``None``: the stage's reference implementation (NumPy and SciPy for the
  affinity and the clustering; the ``pydensecrf`` backend of the refiner keeps
  its own setting), no PyTorch;
- ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``: the stage's PyTorch
  implementation on that device;
- ``"auto"``: CUDA when PyTorch sees a GPU, else the CPU.

:func:`check_device` checks a value without importing torch (for
``_parameter_constraints`` and for settings files); :func:`resolve_device`
turns it into a :class:`torch.device`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from numbers import Integral

import numpy as np
from joblib import cpu_count
from sklearn.utils._param_validation import Interval

__all__ = [
    "DEVICES",
    "MAX_N_JOBS",
    "as_tensor",
    "check_device",
    "n_jobs_constraints",
    "resolve_device",
    "torch_threads",
]

#: Most workers or threads any setting may start: the processors this process
#: may use (CPU affinity and container quotas counted). The work is CPU-bound:
#: more only adds memory.
MAX_N_JOBS = max(1, cpu_count())

#: What a ``device`` setting may be, in words (used in error messages).
DEVICES = "None, 'auto', 'cpu', 'cuda' or 'cuda:<index>'"

_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(device, *, name="device", allow_none=True):
    """Check a ``device`` value without importing torch.

    Parameters
    ----------
    device : None, str or torch.device
        The value to check.
    name : str, default="device"
        Its name in the error message (e.g. ``"segment__device"``).
    allow_none : bool, default=True
        Whether ``None`` (the NumPy reference path) is accepted.

    Returns
    -------
    device : None, str or torch.device
        The value, unchanged.

    Raises
    ------
    ValueError
        If the value is none of these; the message lists them.

    Examples
    --------
    >>> check_device("cuda:1")
    'cuda:1'
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    ValueError: device='gpu' is not supported: device must be None, 'auto', 'cpu', 'cuda' or 'cuda:<index>'.
    """
    if device is None and allow_none:
        return device
    if type(device).__name__ == "device" and type(device).__module__ == "torch":
        if device.type in ("cpu", "cuda"):
            return device
    elif isinstance(device, str) and _PATTERN.match(device):
        return device
    allowed = DEVICES if allow_none else DEVICES.removeprefix("None, ")
    raise ValueError(f"{name}={device!r} is not supported: {name} must be {allowed}.")


def n_jobs_constraints(*, negative=True):
    """The ``_parameter_constraints`` entry of an ``n_jobs``-like setting.

    ``None``, ``1`` to :data:`MAX_N_JOBS`, and (with ``negative``) joblib's
    ``-1`` (all processors) down to ``-MAX_N_JOBS``; anything else is refused
    when the estimator is fitted, and is a usage error on the command line.

    Parameters
    ----------
    negative : bool, default=True
        Whether joblib's negative values are accepted.

    Returns
    -------
    constraints : list

    Examples
    --------
    >>> from sklearn.utils._param_validation import validate_parameter_constraints
    >>> try:
    ...     validate_parameter_constraints({"n_jobs": n_jobs_constraints()},
    ...                                    {"n_jobs": 10**6}, caller_name="f")
    ... except ValueError:
    ...     print("refused")
    refused
    """
    positive = Interval(Integral, 1, MAX_N_JOBS, closed="both")
    if not negative:
        return [positive, None]
    return [Interval(Integral, -MAX_N_JOBS, -1, closed="both"), positive, None]


def resolve_device(device, *, name="device"):
    """The :class:`torch.device` for a ``device`` setting.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:<index>"``.
    name : str, default="device"
        Its name in error messages.

    Returns
    -------
    device : torch.device

    Raises
    ------
    ValueError
        For an unknown value, or a CUDA device that PyTorch does not see (the
        message says to use ``"cpu"`` or ``"auto"``).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    check_device(device, name=name, allow_none=False)
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={str(device)!r} but CUDA is not available to this PyTorch "
                f"({torch.__version__}); use {name}='cpu', or 'auto', which picks "
                f"CUDA when there is one."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={str(device)!r} but only {torch.cuda.device_count()} CUDA "
                f"device(s) exist."
            )
    return dev


def as_tensor(array, device, dtype=None):
    """A NumPy array as a tensor on ``device`` (no copy on the CPU).

    For a CUDA device the array is copied through pinned (page-locked) memory
    without blocking, so the copy overlaps the work already queued there.

    Parameters
    ----------
    array : ndarray or Tensor
        The data; a tensor is moved (or returned as it is).
    device : torch.device
        From :func:`resolve_device`.
    dtype : torch.dtype, default=None
        Converted to, if given.

    Returns
    -------
    tensor : Tensor

    Examples
    --------
    >>> import numpy as np
    >>> as_tensor(np.arange(3.0), resolve_device("cpu"))
    tensor([0., 1., 2.], dtype=torch.float64)
    """
    import torch

    if isinstance(array, torch.Tensor):
        t = array
    else:
        t = torch.from_numpy(np.ascontiguousarray(array))
        if device.type == "cuda":
            t = t.pin_memory()
    return t.to(device=device, dtype=dtype or t.dtype, non_blocking=True)


@contextmanager
def torch_threads(n_threads):
    """Context manager: PyTorch's CPU threads set to ``n_threads``, then restored.

    The torch paths of the affinity and the segmenter run problems of up to
    2,048 samples on one CPU thread, as the NumPy paths do with their BLAS
    (:func:`~sklearn_clasp.affinity.limit_threads`): on a busy machine, two
    threads waiting on each other made a 600-sample clustering 15 times
    slower than one.

    Parameters
    ----------
    n_threads : int or None
        ``None`` leaves the setting alone.

    Examples
    --------
    >>> import torch
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    """
    if n_threads is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    if old == n_threads:
        yield
        return
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)
