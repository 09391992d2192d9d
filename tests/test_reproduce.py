"""symnmf.reproduce: the seed handling of the comparison (its tables are checked through the CLI's tests)."""
import numpy as np
import pytest

from symnmf import datasets, reproduce

pytestmark = pytest.mark.skipif("digits" not in datasets.available(), reason="the digits data set is not available")


def _rows(seed, out_dir=None):
    rows = reproduce.reproduce(datasets=["digits"], methods=("hals",), subset=40, max_iter=3, seed=seed, log=None,
                               plot=False, out_dir=out_dir)
    return [(row["rel_error"], row["acc"]) for row in rows]


def test_seed_none_draws_one_seed_from_numpys_global_state(tmp_path):
    import json

    np.random.seed(5)
    first = _rows(None, out_dir=tmp_path)
    drawn = json.loads((tmp_path / "results.json").read_text())["meta"]["seed"]
    assert isinstance(drawn, int)
    np.random.seed(5)
    assert _rows(None) == first == _rows(drawn)  # the drawn seed, written down, repeats the run


def test_a_seed_of_another_type_is_refused_by_name():
    with pytest.raises(TypeError, match="seed must be None, an int"):
        reproduce.reproduce(datasets=["digits"], methods=("hals",), subset=40, max_iter=3, seed="seven", log=None)
