import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # for na_reference


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long-running test (deselect with -m "not slow")')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
