"""The one error type the data layer raises for bad input data."""


class DataError(ValueError):
  """Bad or unusable input data.

  Messages follow one shape: `<file>: task <task>: <field>: <what is wrong>. <what to do>.`
  so that a failure in a mixture of hundreds of tasks points at one file.
  """


def where(path=None, task=None, field=None) -> str:
  """The `<file>: task <task>: <field>:` prefix of a DataError message."""
  parts = []
  if path is not None:
    parts.append(str(path))
  if task is not None:
    parts.append(f"task {task}")
  if field is not None:
    parts.append(f"field {field!r}")
  return ": ".join(parts) + (": " if parts else "")
