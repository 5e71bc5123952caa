"""Shared fixtures: paths into ../shared, which CI always has beside the clone."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_file(*parts: str) -> Path:
    """A file under ../shared; skip when it is absent, except under CI where that is a failure."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI must run with ../shared beside the clone")
        pytest.skip(f"{path} not present (../shared is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def stories_path() -> Path:
    """stories260K.gguf: models/ (from `make model`) first, else ../shared/models."""
    local = REPO / "models" / "stories260K.gguf"
    return local if local.exists() else shared_file("models", "stories260K.gguf")
