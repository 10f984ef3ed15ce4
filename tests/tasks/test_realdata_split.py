"""The small real-data run's BIG-bench split (gin/experiments/common/realdata_tiny.gin):
every held-out name is a task in ../shared/data's BIG-bench file, and no training task
shares a parent task with a held-out one (no sibling subtask leaks into training)."""
import gzip
import json
import pathlib
import re

GIN = pathlib.Path(__file__).resolve().parents[2] / "gin/experiments/common/realdata_tiny.gin"


def _heldout() -> list[str]:
  body = re.search(r"tasks\.bigbench\.register\.heldout = \[(.*?)\]", GIN.read_text(), re.S)
  return re.findall(r"'([^']+)'", body.group(1))


def test_heldout_tasks_exist_and_have_no_training_siblings(shared_data):
  heldout = _heldout()
  assert len(heldout) == len(set(heldout)) == 16
  with gzip.open(shared_data / "bigbench_tasks_first200.jsonl.gz", "rt") as f:
    paths = [json.loads(line)["task_path"] for line in f]
  missing = sorted(set(heldout) - set(paths))
  assert not missing, f"held-out tasks not in the BIG-bench file: {missing}"
  parents = {p.split("/")[0] for p in heldout}
  siblings = sorted(p for p in paths if p not in heldout and p.split("/")[0] in parents)
  assert not siblings, f"training tasks share a parent with held-out ones: {siblings}"


def test_translations_of_held_out_tasks_stay_out_of_training(shared_data):
  """BIG-bench lists translations (`entailed_polarity_hindi`, `misconceptions_russian`) apart
  from the held-out tasks they translate; the register leaves them out of training
  (tasks.bigbench._related)."""
  from tasks import bigbench
  heldout = _heldout()
  with gzip.open(shared_data / "bigbench_tasks_first200.jsonl.gz", "rt") as f:
    paths = [json.loads(line)["task_path"] for line in f]
  related = [p for p in paths if p not in heldout and bigbench._related(p, heldout)]
  assert related == ["entailed_polarity_hindi", "misconceptions_russian"]
