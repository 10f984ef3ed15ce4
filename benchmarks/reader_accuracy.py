"""How well a demo downstream reads a task description: as text, as a prefix, as a LoRA.

Stage 1 of the demo trains the downstream in mode `peft_friendly`: some rows read the task
description as tokens, the others read the bare query with the description turned into a
prefix or a LoRA by a *description reader* (hypert5.training.modes). HyperT5-Prefix / -LoRA
start as these readers, so their accuracy is what a hypermodel that inferred the
description perfectly from the examples would start from.

  .venv/bin/python benchmarks/reader_accuracy.py --downstream_dir DIR/runs/downstream \
      --tasks 32 --split heldout

Scores the oracle rows (description + query) of the first --tasks held-out tasks (mean over
tasks of their validation queries, as the demo's table), or --rows rows of the training
mixture (--split train), three ways with the same downstream. Exact match is computed under
teacher forcing: every target token the argmax, which is exactly when greedy decoding
returns the target (so the text score equals the demo's oracle row). Prints and writes JSON
(--out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
  sys.path.insert(0, REPO)

WAYS = ("text", "prefix", "lora")


def score(downstream_dir: str, tasks: int = 32, split: str = "heldout",
          rows: int = 2048, batch_size: int = 64) -> dict:
  """{"text" | "prefix" | "lora": exact match %, "rows": n} of the downstream's oracle rows:
  the mean over held-out tasks of each one's validation queries (as the demo's table), or
  over the first `rows` shuffled rows of the training mixture."""
  import jax
  import seqio
  import tasks as tasks_lib  # noqa: F401  registers the synthetic tasks
  from hypert5 import main, runs
  from hypert5.training import model_io, peft_io
  from tasks import synthetic

  for path in ("hf", runs.REPARAM_FILE):
    if not os.path.exists(os.path.join(downstream_dir, path)):
      raise SystemExit(f"reader_accuracy: {os.path.join(downstream_dir, path)} not found; "
                       "point --downstream_dir at a finished demo's runs/downstream")
  mixture = "synthetic_oracle_train"
  main.parse_gin(["experiments/demo_downstream.gin"],
                 [f"MODEL_DIR='{downstream_dir}'", f"MIXTURE='{mixture}'"])
  exp = runs.experiment()
  obj, lengths = exp.objective, exp.task_feature_lengths
  _, t5_params = model_io.load_t5(os.path.join(downstream_dir, "hf"))
  reparam = peft_io.load_tree_safetensors(os.path.join(downstream_dir, runs.REPARAM_FILE))
  trainable = {"t5": t5_params, "reparam": reparam}
  split_oracle = runs._oracle_splitter(exp)  # pylint: disable=protected-access

  @jax.jit
  def exact(trainable, batch):
    out = {}
    for way in WAYS:
      logits = obj.oracle_logits(trainable, None if way == "text" else way, batch)
      right = ((logits.argmax(-1) == batch["decoder_target_tokens"])
               | (batch["decoder_loss_weights"] == 0))
      out[way] = right.all(-1).sum()
    return out

  def scores(ds, limit=None):
    """Exact match % per way and the row count of a converted dataset's batches."""
    totals, n = dict.fromkeys(WAYS, 0), 0
    for batch in ds.batch(batch_size).as_numpy_iterator():
      batch = split_oracle({k: v for k, v in batch.items() if k in runs.MODEL_KEYS})
      for way, count in jax.device_get(exact(trainable, batch)).items():
        totals[way] += int(count)
      n += len(batch["encoder_input_tokens"])
      if limit and n >= limit:
        break
    return {way: 100.0 * totals[way] / n for way in WAYS}, n

  converter = runs._converter(mixture)  # pylint: disable=protected-access
  if split == "train":
    ds = seqio.get_mixture_or_task(mixture).get_dataset(lengths, split="train", seed=1)
    result, n = scores(converter(ds, lengths), rows)
    return {**result, "rows": n}
  per_task, n = [], 0
  for i in range(tasks):
    task = seqio.get_mixture_or_task(synthetic.heldout_task_name(i, "oracle"))
    ds = task.get_dataset(lengths, split="validation", shuffle=False)
    result, count = scores(converter(ds, lengths))
    per_task.append(result)
    n += count
  return {**{way: sum(r[way] for r in per_task) / tasks for way in WAYS}, "rows": n}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--downstream_dir", required=True,
                 help="a demo's runs/downstream (holds hf/ and reparam.safetensors)")
  p.add_argument("--tasks", type=int, default=32, help="held-out tasks (--split heldout)")
  p.add_argument("--split", choices=("heldout", "train"), default="heldout")
  p.add_argument("--rows", type=int, default=2048, help="training rows (--split train)")
  p.add_argument("--out", default="out/reader_accuracy.json")
  args = p.parse_args(argv)
  result = {"downstream_dir": os.path.abspath(args.downstream_dir), "split": args.split,
            "tasks": args.tasks if args.split == "heldout" else None,
            **score(args.downstream_dir, args.tasks, args.split, args.rows)}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"{result['rows']} rows, exact match %: " +
        ", ".join(f"description as {way} {result[way]:.1f}" for way in WAYS))
  return 0


if __name__ == "__main__":
  sys.exit(main())
