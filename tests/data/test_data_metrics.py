"""Metric functions: ROUGE-L, exact match, macro-F1, rank classification, task averages."""
import numpy as np
import pytest

from hypert5.data import metrics


def test_rouge_l_takes_the_best_reference():
  out = metrics.rouge_l([["the cat sat", "a dog ran"], "hello world"],
                        ["a dog ran", "hello there world"])
  # 100 for the first; LCS 2 of 2 and 3 tokens -> F1 = 0.8 for the second.
  assert out["rougeL"] == pytest.approx((100 + 80) / 2)


def test_exact_match_normalizes():
  out = metrics.exact_match(["The Answer.", ["x", "Yes"]], ["answer", "yes!"])
  assert out == {"exact_match": 100.0}
  assert metrics.exact_match(["a b"], ["a c"]) == {"exact_match": 0.0}


def test_macro_f1():
  out = metrics.macro_f1(["pos", "pos", "neg", "neg"], ["pos", "neg", "neg", "neg"])
  # pos: P=1 R=.5 F=2/3; neg: P=2/3 R=1 F=.8
  assert out["macro_f1"] == pytest.approx(100 * (2 / 3 + 0.8) / 2)


def test_rank_classification_accuracy():
  def row(ex, choice, correct):
    return metrics.postprocess_rank(None, {"idx": np.array([ex, choice]),
                                           "is_correct": np.int32(correct)}, is_target=True)
  targets = [row(0, 0, 0), row(0, 1, 1), row(1, 0, 1), row(1, 1, 0), row(1, 2, 0)]
  scores = [-2.0, -1.0, -3.0, -0.5, -4.0]  # example 0 right, example 1 wrong
  out = metrics.rank_classification(targets, scores)
  assert out["accuracy"] == 50.0
  # Ties go to the lower choice index.
  assert metrics.rank_classification(targets[:2], [-1.0, -1.0])["accuracy"] == 0.0


def test_postprocess_text_uses_references():
  ex = {"references": np.array([b"one", b"two "], dtype=object)}
  assert metrics.postprocess_text(b"one", example=ex, is_target=True) == ["one", "two"]
  assert metrics.postprocess_text(" pred ", example=ex, is_target=False) == "pred"


def test_average_over_tasks():
  class Scalar:
    def __init__(self, value):
      self.value = value
  per_task = {"a": {"accuracy": 50.0, "rougeL": 10.0}, "b": {"accuracy": Scalar(100.0)},
              "c": {"accuracy": 0.0}}
  out = metrics.average_over_tasks(per_task, tasks=["a", "b"])
  assert out == {"accuracy": 75.0, "rougeL": 10.0, "num_tasks": 2.0}
