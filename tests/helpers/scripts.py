"""Loads a repository script that is not a package module (benchmarks/*.py, launch/launch.py)."""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script(path: str):
  """The module at `path` (relative to the repository), registered in sys.modules under its
  file name: dataclasses look their defining module up there."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
  module = sys.modules[name] = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
