"""Writers for small fixtures in each real task format (S-NI, P3, MetaICL, BIG-bench)."""
import gzip
import json
import pathlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf


def words(rng: np.random.Generator, n: int) -> str:
  vocab = "alpha beta gamma delta river stone cloud green quick small".split()
  return " ".join(rng.choice(vocab, n))


# ---------------------------------------------------------------- S-NI --


def sni_task(rng, n_instances=8, n_positive=3, list_definition=False) -> Dict:
  definition = "Repeat the input backwards, word by word."
  instances = []
  for i in range(n_instances):
    text = f"item {i} " + words(rng, 3)
    instances.append({"id": f"x-{i}", "input": text,
                      "output": [" ".join(text.split()[::-1]), text.upper()]})
  positives = [{"input": f"example {i} " + words(rng, 2), "output": f"answer {i}",
                "explanation": "because"} for i in range(n_positive)]
  return {"Contributors": ["test"], "Source": ["test"], "Categories": ["Test"],
          "Definition": [definition] if list_definition else definition,
          "Positive Examples": positives, "Negative Examples": [], "Instances": instances}


def write_sni(root: pathlib.Path, train=("task001_a", "task002_b"), test=("task003_c",),
              **kwargs) -> pathlib.Path:
  rng = np.random.default_rng(0)
  (root / "tasks").mkdir(parents=True, exist_ok=True)
  (root / "splits" / "default").mkdir(parents=True, exist_ok=True)
  for i, name in enumerate(list(train) + list(test)):
    task = sni_task(rng, list_definition=bool(i % 2), **kwargs)
    (root / "tasks" / f"{name}.json").write_text(json.dumps(task))
  (root / "splits" / "default" / "train_tasks.txt").write_text("\n".join(train) + "\n")
  (root / "splits" / "default" / "test_tasks.txt").write_text("\n".join(test) + "\n")
  return root


# ------------------------------------------------------------------ P3 --


def p3_record(inputs: str, targets: str, choices: Optional[Sequence[str]] = None,
              drop: Sequence[str] = ()) -> bytes:
  """A P3-style tf.train.Example (token ids are dummies: we retokenize the text)."""
  ex = {"inputs": np.array([5, 6, 1], np.int32), "targets": np.array([7, 1], np.int32),
        "inputs_pretokenized": inputs, "targets_pretokenized": " " + targets}
  if choices is not None:
    ex["answer_choices"] = list(choices)
  for key in drop:
    ex.pop(key)
  return seqio.utils.dict_to_tfexample(ex).SerializeToString()


def write_tfrecord(path: pathlib.Path, records: List[bytes]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as w:
    for r in records:
      w.write(r)


def write_p3(root: pathlib.Path, n=12, drop: Sequence[str] = ()) -> pathlib.Path:
  """Two T0 training prompts, one held-out multiple-choice prompt (RTE), a score_eval dir."""
  rng = np.random.default_rng(1)
  data = root / "data"
  for prompt in ("ag_news_classify", "glue_mrpc_paraphrase"):
    for split in ("train", "validation"):
      recs = [p3_record(f"{prompt} {split} {i}: " + words(rng, 4), f"label{i % 3}", drop=drop)
              for i in range(n)]
      write_tfrecord(data / prompt / f"{split}.tfrecord-00000-of-00001", recs)
  choices = ["yes", "no"]
  for split in ("train", "validation"):
    recs = [p3_record(f"rte {split} {i}: does it follow? " + words(rng, 4), choices[i % 2],
                      choices, drop=drop) for i in range(n)]
    write_tfrecord(data / "super_glue_rte_GPT_3_style" / f"{split}.tfrecord-00000-of-00001",
                   recs)
  write_tfrecord(data / "super_glue_rte_GPT_3_style_score_eval" /
                 "validation.tfrecord-00000-of-00001", [p3_record("x", "y")])
  write_tfrecord(data / "unrelated_dataset_prompt" / "train.tfrecord-00000-of-00001",
                 [p3_record("x", "y")])
  return root


# ------------------------------------------------------------- MetaICL --


def write_metaicl(root: pathlib.Path, k=4) -> pathlib.Path:
  rng = np.random.default_rng(2)

  def dump(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

  for task in ("glue-sst2", "quarel"):
    rows = [{"task": task, "input": f"{task} {i} " + words(rng, 3), "output": ["pos", "neg"][i % 2],
             "options": ["pos", "neg"]} for i in range(24)]
    dump(root / task / f"{task}_16384_100_train.jsonl", rows)
  for task, options in (("superglue-cb", ["entailment", "contradiction", "neutral"]),
                        ("samsum", [])):
    def row(i, split):
      out = options[i % len(options)] if options else f"summary {i}"
      return {"task": task, "input": f"{task} {split} {i} " + words(rng, 3), "output": out,
              "options": options}
    dump(root / task / f"{task}_{k}_100_train.jsonl", [row(i, "train") for i in range(k)])
    dump(root / task / f"{task}_{k}_100_test.jsonl", [row(i, "test") for i in range(10)])
    dump(root / task / f"{task}_{k}_100_dev.jsonl", [row(i, "dev") for i in range(6)])
  (root / "config").mkdir(exist_ok=True)
  (root / "config" / "tiny.json").write_text(json.dumps(
      {"train": ["glue-sst2", "quarel"], "test": ["superglue-cb", "samsum"]}))
  return root


# ----------------------------------------------------------- BIG-bench --


def bigbench_task(name: str, multiple_choice: bool, n=8) -> Dict:
  if multiple_choice:
    examples = [{"input": f"{name} question {i}?",
                 "target_scores": {"red": int(i % 3 == 0), "blue": int(i % 3 == 1),
                                   "green": int(i % 3 == 2)}} for i in range(n)]
  else:
    examples = [{"input": f"{name} say {i}", "target": [f"{i}", f"number {i}"]}
                for i in range(n)]
  return {"name": name, "description": f"the {name} task", "keywords": ["test"],
          "metrics": ["multiple_choice_grade" if multiple_choice else "exact_str_match"],
          "preferred_score": "multiple_choice_grade", "task_prefix": f"Task {name}.",
          "examples": examples}


def write_bigbench_dir(root: pathlib.Path) -> pathlib.Path:
  for name, mc in (("colors", True), ("counting", False)):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "task.json").write_text(json.dumps(bigbench_task(name, mc)))
  # A parent task with a subtask, as in the sdist.
  (root / "family" / "sub_a").mkdir(parents=True, exist_ok=True)
  (root / "family" / "task.json").write_text(json.dumps(
      {"name": "family", "description": "parent", "subtasks": ["sub_a"]}))
  (root / "family" / "sub_a" / "task.json").write_text(json.dumps(
      bigbench_task("sub_a", False)))
  return root


def write_bigbench_jsonl(path: pathlib.Path) -> pathlib.Path:
  tasks = [bigbench_task("colors", True), bigbench_task("counting", False)]
  data = "".join(json.dumps(t) + "\n" for t in tasks).encode()
  path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
  return path


# ------------------------------------------------------------- reading --

HYPER_KEYS = {"hyper_encoder_input_tokens", "encoder_input_tokens", "decoder_input_tokens",
              "decoder_target_tokens", "decoder_loss_weights"}


def examples(name: str, lengths, split: str, n: int = 100, seed: int = 0):
  """The first n task-feature examples of a task (unshuffled)."""
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False,
                                                   seed=seed)
  return list(ds.take(n).as_numpy_iterator())


def grouped_batch(name: str, lengths, queries: int, size: int = 2):
  """One converted training batch of a task or mixture registered with queries_per_task:
  its query features are [size, queries, length] under one hyper input per row."""
  from hypert5.data import converters, registry  # pylint: disable=g-import-not-at-top
  assert registry.queries_per_task(name) == queries
  out = next(seqio.get_dataset(name, lengths, converters.converter_for(name), "train",
                               shuffle=False, batch_size=size,
                               trim_output_features=False).as_numpy_iterator())
  assert out["hyper_encoder_input_tokens"].shape == (size, lengths["hyper_inputs"])
  for key in HYPER_KEYS - {"hyper_encoder_input_tokens"}:
    length = lengths["inputs" if key == "encoder_input_tokens" else "targets"]
    assert out[key].shape == (size, queries, length), key
  assert (out["decoder_target_tokens"][..., 0] > 0).all()  # every query is real
  return out


def grouped_texts(name: str, lengths, queries: int, size: int = 2):
  """`grouped_batch` of a byte-vocabulary task decoded: [(hyper input, [Q query texts])],
  each row's queries checked distinct and absent from its hyper input (its support)."""
  from hypert5.data import get_vocabulary  # pylint: disable=g-import-not-at-top
  v = get_vocabulary("byte")
  out = grouped_batch(name, lengths, queries, size)
  rows = []
  for hyper, row in zip(out["hyper_encoder_input_tokens"], out["encoder_input_tokens"]):
    hyper, texts = v.decode(hyper.tolist()), [v.decode(q.tolist()) for q in row]
    assert len(set(texts)) == queries and not any(t in hyper for t in texts), (hyper, texts)
    rows.append((hyper, texts))
  return rows


def batch(name: str, lengths, split: str, size: int = 4, seed: int = 0):
  """One converted batch (numpy) of a task or mixture, checked against its lengths."""
  from hypert5.data import converters  # pylint: disable=g-import-not-at-top
  provider = seqio.get_mixture_or_task(name)
  conv = converters.converter_for(provider, pack=False)
  ds = provider.get_dataset(lengths, split=split, shuffle=False, seed=seed)
  out = next(conv(ds, lengths).batch(size).as_numpy_iterator())
  for key, value in out.items():
    assert value.dtype == np.int32, key
  if "hyper_inputs" in lengths:
    assert set(out) == HYPER_KEYS
    assert out["hyper_encoder_input_tokens"].shape == (size, lengths["hyper_inputs"])
  assert out["encoder_input_tokens"].shape == (size, lengths["inputs"])
  assert out["decoder_target_tokens"].shape == (size, lengths["targets"])
  np.testing.assert_array_equal(out["decoder_loss_weights"], out["decoder_target_tokens"] > 0)
  np.testing.assert_array_equal(out["decoder_input_tokens"][:, 1:],
                                out["decoder_target_tokens"][:, :-1])
  assert (out["decoder_input_tokens"][:, 0] == 0).all()
  return out
