"""Command-line usage errors: one actionable line, no traceback."""
from typing import Any


class UsageError(Exception):
  """Bad configuration or input from the command line; the message says what to do."""


def required(value: Any, name: str) -> Any:
  """`value`, or a UsageError naming the gin macro/binding that must be set."""
  import gin
  if value is None or value is gin.REQUIRED:
    raise UsageError(f"{name} is required: pass --gin.{name}=... (or bind it in a gin file)")
  return value
