"""Input-pipeline throughput and truncation counts per task, on a fixed number of cores.

  python -m hypert5.data.throughput --cores 2 --import tasks \\
      --task synthetic_train:hyper_inputs=133,inputs=11,targets=11

Each task spec is `name:feature=length,...`, or `name:` + a preset (`synthetic`,
`synthetic_icl`, `t5` = 1024/512/128). Tasks that need a path are registered first with
`--register module:function` and `--register_kwargs` (JSON). Throughput counts examples
through task preprocessing, the feature converter and batching (what the trainer pulls),
with `performance.tf_data_options`, after a first batch that pays for graph building.
Truncation counts come from the task's `*_truncated` / `fewshot_dropped` features. The
benchmark suite can call `measure` and `truncation_stats` directly.
"""
import argparse
import importlib
import json
import os
import time
from typing import Dict, Mapping, Optional

PRESETS = {
    "synthetic": {"hyper_inputs": 133, "inputs": 11, "targets": 11},
    "synthetic_icl": {"inputs": 145, "targets": 11},
    "t5": {"hyper_inputs": 1024, "inputs": 512, "targets": 128},
    "t5_plain": {"inputs": 512, "targets": 128},
}


def measure(name: str, sequence_length: Mapping[str, int], split: str = "train",
            batch_size: int = 32, num_examples: int = 4096, seed: int = 0,
            cores: Optional[int] = None, shuffle: bool = True) -> Dict[str, float]:
  """Examples/s of converted, batched data from a registered task or mixture."""
  import seqio  # pylint: disable=g-import-not-at-top
  from hypert5.data import converters  # pylint: disable=g-import-not-at-top
  from hypert5.data import performance  # pylint: disable=g-import-not-at-top
  from hypert5.data import registry  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  provider = seqio.get_mixture_or_task(name)
  converter = converters.converter_for(provider, pack=False)
  ds = provider.get_dataset(dict(sequence_length), split=split, shuffle=shuffle, seed=seed,
                            num_epochs=None,
                            trim_output_features=registry.trims_output_features(provider))
  ds = converter(ds, dict(sequence_length)).batch(batch_size, drop_remainder=True)
  it = iter(ds.with_options(performance.tf_data_options(cores)))
  next(it)
  build = time.perf_counter() - start
  batches = max(num_examples // batch_size, 1)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - start
  return {"examples_per_s": batches * batch_size / elapsed, "build_s": build,
          "examples": float(batches * batch_size)}


def truncation_stats(name: str, sequence_length: Mapping[str, int], split: str = "train",
                     num_examples: int = 4096, seed: int = 0) -> Dict[str, float]:
  """Fraction of examples cut per feature, and few-shot examples dropped to fit.

  Mixtures drop non-model features, so this reads each sub-task on its own.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  provider = seqio.get_mixture_or_task(name)
  tasks = seqio.get_subtasks(provider)
  per_task = max(num_examples // len(tasks), 1)
  counts, total = {}, 0
  for task in tasks:
    ds = task.get_dataset(dict(sequence_length), split=split, shuffle=True, seed=seed,
                          num_epochs=None)
    keys = [k for k in ds.element_spec if k.endswith("_truncated") or k == "fewshot_dropped"]
    for ex in ds.map(lambda ex, keys=keys: {k: ex[k] for k in keys}).take(
        per_task).as_numpy_iterator():
      total += 1
      for k in keys:
        counts.setdefault(k, [0, 0])
        counts[k][0] += int(ex[k] > 0)
        counts[k][1] += int(ex[k])
  out = {"stats_examples": float(total)}
  for k, (examples, amount) in sorted(counts.items()):
    out[f"{k}_fraction"] = examples / max(total, 1)
    out[f"{k}_mean"] = amount / max(total, 1)
  return out


def _parse_spec(spec: str):
  name, _, lengths = spec.partition(":")
  if lengths in PRESETS:
    return name, PRESETS[lengths]
  if not lengths:
    raise ValueError(f"--task {spec!r}: give lengths (name:feature=n,...) or a preset "
                     f"{sorted(PRESETS)}.")
  return name, {k: int(v) for k, v in (kv.split("=") for kv in lengths.split(","))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", action="append", required=True,
                      help="name:feature=length,... or name:<preset>; repeatable")
  parser.add_argument("--import", dest="imports", action="append", default=[],
                      help="modules to import first (e.g. tasks)")
  parser.add_argument("--register", action="append", default=[],
                      help="module:function to call first (e.g. tasks.sni:register)")
  parser.add_argument("--register_kwargs", action="append", default=[],
                      help="JSON kwargs for the matching --register")
  parser.add_argument("--split", default="train")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--num_examples", type=int, default=4096)
  parser.add_argument("--cores", type=int, default=2,
                      help="pin the process to this many cores (0: no pinning)")
  parser.add_argument("--no_stats", action="store_true", help="skip truncation counts")
  args = parser.parse_args(argv)

  if args.cores and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  for module in args.imports:
    importlib.import_module(module)
  for i, target in enumerate(args.register):
    module, _, fn = target.partition(":")
    kwargs = json.loads(args.register_kwargs[i]) if i < len(args.register_kwargs) else {}
    getattr(importlib.import_module(module), fn)(**kwargs)

  for spec in args.task:
    name, lengths = _parse_spec(spec)
    result = measure(name, lengths, split=args.split, batch_size=args.batch_size,
                     num_examples=args.num_examples, cores=args.cores or None)
    if not args.no_stats:
      result.update(truncation_stats(name, lengths, split=args.split,
                                     num_examples=min(args.num_examples, 2048)))
    print(json.dumps({"task": name, "split": args.split, "cores": args.cores,
                      "sequence_length": lengths,
                      **{k: round(v, 3) for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
  main()
