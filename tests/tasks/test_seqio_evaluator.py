"""The eval contract end to end with seqio.Evaluator: fixed support, metrics, averages."""
import numpy as np
import pytest
import seqio

import task_fixtures as fx
import tasks
from hypert5.data import HyperFeatureConverter, fewshot, get_vocabulary, metrics
from tasks import p3


def _evaluate(name, lengths, split, predict_fn=None, score_fn=None):
  evaluator = seqio.Evaluator(name, HyperFeatureConverter(), eval_split=split,
                              sequence_length=lengths, async_compute_metrics=False)
  all_metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                      score_fn=score_fn)
  return all_metrics.result()


def test_generative_tasks_score_perfect_predictions():
  lengths = tasks.synthetic.FAMILY.sequence_lengths("hyper")
  seen_hyper = set()

  def predict_fn(ds):  # an oracle "model": echo the targets
    out = []
    for i, batch in ds.batch(16).as_numpy_iterator():
      for j in range(len(i)):
        seen_hyper.add(tuple(batch["hyper_encoder_input_tokens"][j]))
        out.append((int(i[j]), batch["decoder_target_tokens"][j]))
    return out

  result = _evaluate(tasks.synthetic.heldout_task_name(0), lengths, "test", predict_fn)
  task_metrics = result[tasks.synthetic.heldout_task_name(0)]
  assert task_metrics["exact_match"] == 100.0 and task_metrics["rougeL"] == 100.0
  assert len(seen_hyper) == 1  # one K-shot set: its parameters are generated once


def test_rank_classification_with_seqio(tmp_path):
  p3.register(str(fx.write_p3(tmp_path / "p3")), k=2, vocabulary="byte")
  lengths = {"hyper_inputs": 256, "inputs": 64, "targets": 8}
  name = "p3_super_glue_rte_GPT_3_style"
  rows = fx.examples(name, lengths, "validation")
  correct = [bool(r["is_correct"]) for r in rows]

  def score_fn(ds):  # prefers the right choice for the first half of the queries
    return [(int(i), 0.0 if correct[int(i)] == (int(i) < len(rows) // 2) else -1.0)
            for i, _ in ds.as_numpy_iterator()]

  result = _evaluate(name, lengths, "validation", score_fn=score_fn)
  assert result[name]["accuracy"] == 50.0
  avg = metrics.average_over_tasks({name: result[name], "other": {"accuracy": 100.0}})
  assert avg["accuracy"] == 75.0
  np.testing.assert_array_equal(sorted(set(correct)), [False, True])


def test_task_hyper_inputs_for_generating_once():
  lengths = tasks.synthetic.FAMILY.sequence_lengths("hyper")
  name = tasks.synthetic.heldout_task_name(2)
  tokens = fewshot.task_hyper_inputs(name, lengths, split="test")
  assert tokens.shape == (lengths["hyper_inputs"],) and tokens.dtype == np.int32
  first = fx.examples(name, lengths, "test", n=1)[0]["hyper_inputs"]
  np.testing.assert_array_equal(tokens[:len(first)], first)
  with pytest.raises(ValueError, match="sampled per query"):
    fewshot.task_hyper_inputs("synthetic_train", lengths, split="validation")


def test_encode_few_shot_matches_the_task_layout():
  family = tasks.synthetic.FAMILY
  lengths = family.sequence_lengths("hyper")
  support = family.support(family.heldout_members[2])
  tokens, kept = fewshot.encode_few_shot(get_vocabulary("byte"), support,
                                         lengths["hyper_inputs"])
  assert kept == len(support)
  np.testing.assert_array_equal(
      tokens, fewshot.task_hyper_inputs(tasks.synthetic.heldout_task_name(2), lengths, "test"))
  short, kept = fewshot.encode_few_shot(get_vocabulary("byte"), support, 30, prefix="do:")
  assert kept < len(support) and short[:3].tolist() == get_vocabulary("byte").encode("do:")
