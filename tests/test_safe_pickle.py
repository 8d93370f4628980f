import pickle
from collections import OrderedDict

import numpy as np
import pytest

from mochi.safe_pickle import UnsafePickleError, safe_load


def _loads(data: bytes, tmp_path, name: str = "x.pkl"):
    path = tmp_path / name
    path.write_bytes(data)
    return safe_load(path)


def test_round_trips_numpy_and_containers(tmp_path):
    obj = {
        "model": OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3)),
        "labels": [1, 2, 3],
        "name": b"x",
    }
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        back = _loads(pickle.dumps(obj, protocol=proto), tmp_path)
        np.testing.assert_array_equal(back["model"]["w"], obj["model"]["w"])
        assert back["labels"] == [1, 2, 3] and back["name"] == b"x"
    p = tmp_path / "f.pkl"
    p.write_bytes(pickle.dumps(obj))
    assert safe_load(p)["labels"] == [1, 2, 3]


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"model": _Evil(str(marker))})
    with pytest.raises(UnsafePickleError, match="refusing to unpickle global io.open"):
        _loads(data, tmp_path)
    assert not marker.exists()
