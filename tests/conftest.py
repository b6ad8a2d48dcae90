import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """``tests/data``: small fixtures committed with the tests (origins in its README.md)."""
    return TEST_DATA


@pytest.fixture(params=["kept", "products"])
def gram_path(request, monkeypatch):
    """Runs a test twice: the chained fits' input Gram matrices kept and updated
    (``chained.KEPT_GRAM_RATIO`` 0: always, see ``chained.kept_gram``), then formed as products
    of the inputs (never)."""
    from completion import chained
    monkeypatch.setattr(chained, "KEPT_GRAM_RATIO", 0.0 if request.param == "kept" else np.inf)
    return request.param
