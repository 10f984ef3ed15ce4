"""One shuffle-buffer size for every task of a mixture (`experiment.shuffle_buffer_size`)."""
import pytest
import seqio
import tensorflow as tf

from hypert5 import main, runs
from hypert5.data import performance, registry

N = 64  # examples per task


def _task(name: str, task_id: int) -> seqio.Task:
  def source(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.range(N).map(
        lambda i: {"inputs": tf.cast(tf.stack([task_id, i]), tf.int32)})
  return registry.add_task(
      name, source=seqio.FunctionDataSource(source, splits=["train"]),
      output_features={"inputs": seqio.Feature(seqio.PassThroughVocabulary(N), add_eos=False)})


@pytest.fixture(scope="module")
def nested_mixture():
  a, b = _task("shuffle_test_a", 0), _task("shuffle_test_b", 1)
  registry.add_mixture("shuffle_test_inner", [b.name])
  return registry.add_mixture("shuffle_test_outer", [a.name, "shuffle_test_inner"]), (a, b)


def _orders(mixture: seqio.Mixture) -> dict[int, list[int]]:
  """Each task's example indices in the order the shuffled mixture yields them."""
  ds = mixture.get_dataset(None, split="train", shuffle=True, seed=3, num_epochs=1)
  orders: dict[int, list[int]] = {0: [], 1: []}
  for ex in ds.as_numpy_iterator():
    orders[int(ex["inputs"][0])].append(int(ex["inputs"][1]))
  return orders


def test_size_reaches_every_task_of_a_nested_mixture_and_is_restored(nested_mixture):
  mixture, tasks = nested_mixture
  # One epoch of a mixture ends when one of its tasks runs out, so compare prefixes.
  with performance.shuffle_buffers(mixture, 1):
    unshuffled = _orders(mixture)  # a buffer of one example shuffles nothing
  for order in unshuffled.values():
    assert len(order) >= N // 2 and order == list(range(len(order)))
  assert [t.shuffle_buffer_size for t in tasks] == [seqio.SHUFFLE_BUFFER_SIZE] * 2
  shuffled = _orders(mixture)  # each task's own buffer again
  for order in shuffled.values():
    assert len(order) >= N // 2 and len(set(order)) == len(order)
    assert order != list(range(len(order)))
  with performance.shuffle_buffers(mixture, None):  # None keeps each task's own
    assert _orders(mixture) == shuffled


def test_experiment_shuffle_buffer_size_reaches_the_training_tasks(monkeypatch, tmp_path):
  seen = []
  real_shuffle = tf.data.Dataset.shuffle
  monkeypatch.setattr(tf.data.Dataset, "shuffle", lambda ds, size, *a, **kw: (
      seen.append(int(size)), real_shuffle(ds, size, *a, **kw))[1])
  main.parse_gin(["experiments/synthetic_tiny.gin"], [
      f"MODEL_DIR='{tmp_path}'", "experiment.shuffle_buffer_size=7"])
  exp = runs.experiment()
  batch = next(runs.train_batches(exp))
  assert seen == [7] and batch["encoder_input_tokens"].shape[0] == exp.batch_size
  assert runs._provider(exp.mixture).shuffle_buffer_size == seqio.SHUFFLE_BUFFER_SIZE


def test_non_positive_size_is_a_one_line_error(nested_mixture, capsys):
  code = main.main(["train", "--gin_file=experiments/synthetic_tiny.gin",
                    "--gin.MODEL_DIR='/tmp/x'", "--gin.experiment.shuffle_buffer_size=0"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "experiment.shuffle_buffer_size=0" in err[0], err
  with pytest.raises(ValueError, match="positive"):
    with performance.shuffle_buffers(nested_mixture[0], 0):
      pass
