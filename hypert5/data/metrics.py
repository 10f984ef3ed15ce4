"""seqio metric functions (per task) and the average over tasks.

Signatures follow seqio's legacy metric functions: `(targets, predictions)` for generated
text, `(targets, scores)` for rank classification. Each returns a dict of floats in
percent. A target may be one string or a list of references (max over references).
`postprocess_text` / `postprocess_rank` are the matching task postprocess functions.
"""
import collections
import re
import string
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
from rouge_score import rouge_scorer

# ---------------------------------------------------------------- postprocessing --


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def postprocess_text(output, example: Optional[Mapping[str, Any]] = None,
                     is_target: bool = False):
  """Strips generated text; for targets, all `references` of the example when it has them."""
  if is_target and example is not None and "references" in example:
    refs = [_text(r).strip() for r in np.asarray(example["references"]).reshape(-1)]
    if refs:
      return refs
  return _text(output).strip()


def postprocess_rank(output, example: Optional[Mapping[str, Any]] = None,
                     is_target: bool = False):
  """For targets, the row's (example index, choice index) and whether the choice is right."""
  if not is_target:
    return output
  idx = np.asarray(example["idx"]).reshape(-1)
  return {"idx": (int(idx[0]), int(idx[1])), "is_correct": bool(example["is_correct"])}


# ----------------------------------------------------------------- text metrics --


def normalize(text: str) -> str:
  """SQuAD-style: lower case, no punctuation or articles, single spaces."""
  text = _text(text).lower()
  text = "".join(c for c in text if c not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _refs(target) -> Sequence[str]:
  if isinstance(target, (list, tuple, np.ndarray)):
    return [_text(t) for t in target]
  return [_text(target)]


def _check_lengths(targets, predictions):
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")


_SCORER = None


def _rouge_scorer():
  global _SCORER
  if _SCORER is None:
    _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  return _SCORER


def rouge_l(targets: Sequence, predictions: Sequence[str]) -> Dict[str, float]:
  """Mean over examples of ROUGE-L F1, max over each example's references (rouge_score)."""
  _check_lengths(targets, predictions)
  if not targets:
    return {"rougeL": 0.0}
  scorer = _rouge_scorer()
  best = [max(scorer.score(ref, _text(pred))["rougeL"].fmeasure for ref in _refs(tgt))
          for tgt, pred in zip(targets, predictions)]
  return {"rougeL": 100.0 * float(np.mean(best))}


def exact_match(targets: Sequence, predictions: Sequence[str]) -> Dict[str, float]:
  """Percent of predictions equal to some reference after `normalize`."""
  _check_lengths(targets, predictions)
  if not targets:
    return {"exact_match": 0.0}
  hits = [any(normalize(pred) == normalize(ref) for ref in _refs(tgt))
          for tgt, pred in zip(targets, predictions)]
  return {"exact_match": 100.0 * float(np.mean(hits))}


def _macro_f1(gold: Sequence, pred: Sequence) -> float:
  """Mean F1 over the gold classes (a predicted class never seen in gold counts as wrong)."""
  labels = sorted(set(gold), key=str)
  f1s = []
  for label in labels:
    tp = sum(g == label and p == label for g, p in zip(gold, pred))
    fp = sum(g != label and p == label for g, p in zip(gold, pred))
    fn = sum(g == label and p != label for g, p in zip(gold, pred))
    f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
  return 100.0 * float(np.mean(f1s)) if f1s else 0.0


def macro_f1(targets: Sequence, predictions: Sequence[str]) -> Dict[str, float]:
  """Macro-F1 over the gold labels, comparing normalized strings (first reference)."""
  _check_lengths(targets, predictions)
  gold = [normalize(_refs(t)[0]) for t in targets]
  return {"macro_f1": _macro_f1(gold, [normalize(p) for p in predictions])}


# ------------------------------------------------------------ rank classification --


def rank_classification(targets: Sequence[Mapping[str, Any]],
                        scores: Sequence[float]) -> Dict[str, float]:
  """Accuracy and macro-F1 of picking each example's highest-scoring choice.

  `targets` come from `postprocess_rank` (one per choice row); `scores` are the model's
  log-likelihoods of the rows' targets. Ties go to the lowest choice index.
  """
  if len(targets) != len(scores):
    raise ValueError(f"{len(targets)} choice rows but {len(scores)} scores.")
  rows = collections.defaultdict(list)
  for tgt, score in zip(targets, scores):
    ex, choice = tgt["idx"]
    rows[ex].append((choice, float(np.sum(score)), bool(tgt["is_correct"])))
  if not rows:
    return {"accuracy": 0.0, "macro_f1": 0.0}
  correct, gold, pred = [], [], []
  for ex in sorted(rows):
    choices = sorted(rows[ex])
    best = max(range(len(choices)), key=lambda j: (choices[j][1], -choices[j][0]))
    correct.append(choices[best][2])
    gold.append(next((c for c, _, ok in choices if ok), -1))
    pred.append(choices[best][0])
  return {"accuracy": 100.0 * float(np.mean(correct)), "macro_f1": _macro_f1(gold, pred)}


# --------------------------------------------------------------- across tasks --


def average_over_tasks(per_task: Mapping[str, Mapping[str, Any]],
                       tasks: Optional[Sequence[str]] = None) -> Dict[str, float]:
  """Unweighted mean of each metric over the tasks that report it.

  `per_task` is what `seqio.Evaluator` returns ({task: {metric: value}}); values may be
  floats or seqio `Scalar`s. `tasks` restricts the average (e.g. to a mixture's tasks).
  Adds `num_tasks`.
  """
  values = collections.defaultdict(list)
  names = [t for t in per_task if tasks is None or t in set(tasks)]
  for task in names:
    for metric, value in per_task[task].items():
      value = getattr(value, "value", value)
      if isinstance(value, (int, float, np.floating, np.integer)):
        values[metric].append(float(value))
  out = {metric: float(np.mean(v)) for metric, v in values.items()}
  out["num_tasks"] = float(len(names))
  return out
