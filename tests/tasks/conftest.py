"""Shared fixtures for task tests: the project's real data in ../shared/data, if present."""
import pathlib
import sys

import pytest

# The tests import the fixture writers as `task_fixtures` (pytest runs in importlib mode).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> pathlib.Path:
  """`<repo>/../shared/data`, or skip the test when this checkout has none."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"no shared data at {SHARED_DATA}")
  return SHARED_DATA
