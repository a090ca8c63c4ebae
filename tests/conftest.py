"""Shared test fixtures: paths to the repository and to the project's shared data."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# ../shared/data next to the checkout holds real public data (see its README); users' clones may lack it
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

needs_shared_data = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA),
    reason=f"{SHARED_DATA} is absent: these tests read real data from the project's shared folder")


@pytest.fixture
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"{SHARED_DATA} is absent: this test reads real data from the project's shared folder")
    return SHARED_DATA
