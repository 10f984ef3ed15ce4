"""Recipes: the preprocessors, output features and metrics of each way of using a task.

Every few-shot task (S-NI, P3, MetaICL, BIG-bench, synthetic, a user's) is registered in
one of these modes; the source only yields text features (`task_name`, `inputs`, `targets`,
and optionally `support_inputs`/`support_targets`, `hyper_prefix`, `description`,
`answer_choices`, `references`):

  hyper   hypermodel reads prefix + K examples (hyper_inputs); T5 reads the query (inputs)
  icl     T5-MTF with the examples in context: inputs = prefix + K examples + query
  plain   T5-MTF: inputs = the query alone
  oracle  inputs = the task's description + query (the synthetic family's oracle baseline)
"""
import functools
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import seqio

from hypert5.data import features as features_lib
from hypert5.data import fewshot
from hypert5.data import metrics as metrics_lib
from hypert5.data import preprocessors as prep
from hypert5.data import registry

MODES = ("hyper", "icl", "plain", "oracle")


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}: expected one of {MODES}.")
  return mode


def task_name(prefix: str, mode: str, name: str) -> str:
  """`<prefix>_<name>` for hyper mode, `<prefix>_<mode>_<name>` for the baselines."""
  check_mode(mode)
  return f"{prefix}_{name}" if mode == "hyper" else f"{prefix}_{mode}_{name}"


def output_features(mode: str, vocabulary,
                    queries_per_task: int = 1) -> Mapping[str, seqio.Feature]:
  if check_mode(mode) == "hyper":
    return features_lib.hyper_features(vocabulary, queries_per_task)
  return features_lib.plain_features(vocabulary)


def preprocessors(mode: str, *, k: int, pool_size: int = 1024,
                  source: Optional[str] = None, queries_per_task: int = 1) -> List[Callable]:
  """The preprocessor list for `mode` (see the module docstring).

  Support the source gives (a fixed K-shot set) wins over sampling; `answer_choices`, when
  the source gives them (evaluation splits of multiple-choice tasks), expand into one
  scored row per choice after the support is chosen, so all rows share it. In hyper mode,
  `queries_per_task` > 1 makes each row Q queries of one task sharing one support set (for
  training: one hypermodel forward per Q queries; see `fewshot.group_queries`).
  """
  check_mode(mode)
  fewshot.check_k(k)
  grouped = mode == "hyper" and fewshot.check_queries_per_task(queries_per_task, source) > 1
  steps = []
  if grouped:
    steps.append(functools.partial(fewshot.group_queries, queries_per_task=queries_per_task,
                                   source=source))
  if mode in ("hyper", "icl"):
    steps.append(functools.partial(fewshot.sample_support, k=k, pool_size=pool_size,
                                   source=source))
  if grouped:
    steps.append(fewshot.split_queries)
  steps += [functools.partial(prep.rank_classification, source=source),
            seqio.preprocessors.tokenize]
  if mode == "hyper":
    steps.append(functools.partial(fewshot.format_few_shot, into="hyper_inputs"))
  elif mode == "icl":
    steps.append(functools.partial(fewshot.format_few_shot, into="inputs"))
  elif mode == "oracle":
    steps.append(functools.partial(fewshot.format_few_shot, into="inputs",
                                   prefix_feature="description", with_support=False))
  steps.append(prep.trim_and_count)
  if grouped:
    steps.append(functools.partial(fewshot.join_queries, queries_per_task=queries_per_task,
                                   source=source))
  return steps


# ------------------------------------------------------------------------ metrics --

GENERATIVE = "generative"        # ROUGE-L and exact match, over all references
CLASSIFICATION = "classification"  # generated labels: exact match and macro-F1
RANK = "rank"                      # multiple choice, scored rows: accuracy and macro-F1


def metrics(kind: str) -> Tuple[Callable, Sequence[Callable]]:
  """(postprocess_fn, metric_fns) for a task's evaluation kind."""
  if kind == GENERATIVE:
    return metrics_lib.postprocess_text, [metrics_lib.rouge_l, metrics_lib.exact_match]
  if kind == CLASSIFICATION:
    return metrics_lib.postprocess_text, [metrics_lib.exact_match, metrics_lib.macro_f1]
  if kind == RANK:
    return metrics_lib.postprocess_rank, [metrics_lib.rank_classification]
  raise ValueError(f"metric kind {kind!r}: expected {GENERATIVE}, {CLASSIFICATION} or {RANK}.")


def register(prefix: str, name: str, source, *, kind: str, vocabulary, k: int,
             modes: Sequence[str] = ("hyper",), pool_size: int = 1024,
             source_desc: Optional[str] = None,
             queries_per_task: int = 1) -> Mapping[str, str]:
  """Registers one data source as a seqio task per mode; returns {mode: task name}.

  Names are `task_name(prefix, mode, name)`. Registering again replaces the tasks.
  `queries_per_task` applies to hyper mode (the baselines have no forward to share).
  """
  postprocess_fn, metric_fns = metrics(kind)
  names = {}
  for mode in modes:
    names[mode] = task_name(prefix, mode, name)
    q = queries_per_task if mode == "hyper" else 1
    registry.add_task(
        names[mode], queries_per_task=q, source=source,
        output_features=output_features(mode, vocabulary, q),
        preprocessors=preprocessors(mode, k=k, pool_size=pool_size,
                                    source=source_desc or names[mode], queries_per_task=q),
        postprocess_fn=postprocess_fn, metric_fns=metric_fns)
  return names


def register_mixtures(prefix: str, suffix: str, names_by_task: Sequence[Mapping[str, str]],
                      modes: Sequence[str]) -> Sequence[str]:
  """One mixture per mode, `task_name(prefix, mode, suffix)`, over the tasks' names."""
  mixtures = []
  for mode in modes:
    tasks = [names[mode] for names in names_by_task]
    if tasks:
      mixtures.append(task_name(prefix, mode, suffix))
      registry.add_mixture(mixtures[-1], tasks)
  return mixtures
