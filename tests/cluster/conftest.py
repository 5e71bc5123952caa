"""The cluster tests need Ray Serve (the `ray` extra): without it they skip, except under CI where that fails."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))  # ServerProcess


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_serve():
    if importlib.util.find_spec("ray") is None:  # found, not imported: the servers import it, not pytest
        if os.environ.get("CI") == "true":
            pytest.fail("ray[serve] is not installed: CI installs the ray extra (make install)")
        pytest.skip("ray[serve] is not installed (pip install 'slotserve[ray]')")
