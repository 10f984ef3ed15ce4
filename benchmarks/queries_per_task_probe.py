"""Probe: several queries of a task sharing one hypermodel forward (README, demo section).

The demo's HyperT5 stages read one query per training row, so each hypermodel forward gets
evidence on the part of its task's mapping that one query shows. This probe trains a
demo HyperT5 stage on batches of TASKS tasks x Q queries each, where the Q queries of a task
share its K examples and the generated parameters are repeated for them, and evaluates it as
the demo does (seqio, held-out tasks). The seqio pipeline makes one query per row, so the
batches come from a numpy copy of the synthetic family's sampling (a random training
member, strings of 5-10 letters, K + Q distinct strings; the hyper-input layout is checked
against `fewshot.encode_few_shot`). Q = 1 is the control for that copy.

  .venv/bin/python benchmarks/queries_per_task_probe.py --demo_dir DEMO --out OUT \
      --kind lora --tasks 32 --queries 4 --steps 2000

DEMO is a finished `python -m hypert5.demo --out DEMO` (its frozen downstream and stage-1
readers are used); prints and writes OUT/result.json (exact match, training seconds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def _objective_class():
  from hypert5.training import modes

  @dataclasses.dataclass(frozen=True)
  class SharedForwardObjective(modes.Objective):
    """Hyper mode whose batch has Q query rows per hyper row: each task's generated
    parameters are repeated for its Q consecutive queries."""

    def generate(self, trainable, frozen, batch, rng=None, enable_dropout=False):
      peft = super().generate(trainable, frozen, batch, rng, enable_dropout)
      q = batch["encoder_input_tokens"].shape[0] // batch["hyper_encoder_input_tokens"].shape[0]
      return jax.tree.map(lambda x: jnp.repeat(x, q, axis=0), peft) if q > 1 else peft

  return SharedForwardObjective


class Batches:
  """TASKS tasks x Q queries per batch, in the feature converter's layout (byte vocab)."""

  def __init__(self, tasks: int, queries: int, hyper_len: int, query_len: int, seed: int):
    from tasks import synthetic
    self.family, self.tasks, self.queries = synthetic.FAMILY, tasks, queries
    self.hyper_len, self.query_len = hyper_len, query_len
    self.rng = np.random.default_rng(seed)
    self._check_layout()

  def _check_layout(self) -> None:
    from hypert5.data import fewshot, vocab as vocab_lib
    support = self.family.support(self.family.heldout_members[0])
    ref, _ = fewshot.encode_few_shot(vocab_lib.as_vocabulary("byte"), list(support),
                                     self.hyper_len)
    if not (ref == self.hyper_tokens(support)).all():
      raise AssertionError("the probe's hyper-input layout differs from the pipeline's")

  VOCAB = 359  # byte vocabulary: 3 special ids + 256 bytes + 100 sentinels (from the top)

  @staticmethod
  def _ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]

  def hyper_tokens(self, pairs) -> np.ndarray:
    ids = []
    for i, (x, y) in enumerate(pairs):
      ids += [self.VOCAB - 1 - 2 * i] + self._ids(x) + [self.VOCAB - 2 - 2 * i] + self._ids(y)
    return np.pad(np.array(ids + [1], np.int32), (0, self.hyper_len - len(ids) - 1))

  def _padded(self, text: str) -> np.ndarray:
    ids = self._ids(text) + [1]
    return np.pad(np.array(ids, np.int32), (0, self.query_len - len(ids)))

  def __iter__(self) -> Iterator[dict]:
    f, members = self.family, self.family.train_members
    while True:
      hyper, enc, tgt = [], [], []
      for _ in range(self.tasks):
        member = members[self.rng.integers(len(members))]
        strings = f._strings(self.rng, f.k + self.queries)  # distinct: no query in support
        hyper.append(self.hyper_tokens([(x, member(x)) for x in strings[:f.k]]))
        for x in strings[f.k:]:
          enc.append(self._padded(x))
          tgt.append(self._padded(member(x)))
      tgt = np.stack(tgt)
      yield {"hyper_encoder_input_tokens": np.stack(hyper), "encoder_input_tokens": np.stack(enc),
             "decoder_input_tokens": np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
             "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.int32)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--demo_dir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--kind", choices=("prefix", "lora"), default="lora")
  p.add_argument("--tasks", type=int, default=32, help="tasks per batch")
  p.add_argument("--queries", type=int, default=4, help="queries per task")
  p.add_argument("--steps", type=int, default=2000)
  args = p.parse_args(argv)

  from hypert5 import demo, runs
  from hypert5.training import checkpoints, partitioning, trainer as trainer_lib
  os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
  link = os.path.join(args.out, "runs", "downstream")
  if not os.path.exists(link):
    os.symlink(os.path.join(os.path.abspath(args.demo_dir), "runs", "downstream"), link)
  demo._register_heldout(demo.HELDOUT[0])
  d = demo.Demo(args.out, False, [])
  stage = f"hyper_{args.kind}"
  gin = [f"experiments/demo_{stage}.gin"]
  d.configure(gin, stage, d._downstream(), f"experiment.init_head_from='{d._dir('downstream')}'",
              f"hypert5.TrainerConfig.num_steps={args.steps}")
  exp = runs.experiment()
  cfg, lengths = exp.trainer, exp.task_feature_lengths
  obj = _objective_class()(exp.objective.mode, exp.objective.t5, exp.objective.hyper)
  trainable, frozen = obj.init(jax.random.key(cfg.seed + 1), runs.load_downstream(exp))
  trainable = runs.init_head_from(trainable, exp.init_head_from, obj.hyper.peft_type)
  checkpoints.write_downstream_reference(exp.model_dir, {
      "downstream_checkpoint": exp.downstream_checkpoint, "mode": obj.mode})
  batches = iter(Batches(args.tasks, args.queries, lengths["hyper_inputs"], lengths["targets"],
                         cfg.seed))
  first = next(batches)
  trainer = trainer_lib.Trainer(obj, runs.optimizer(exp), cfg, partitioning.make_mesh(exp.mesh),
                                first)
  state = trainer.init_state(trainable)
  checkpointer = checkpoints.Checkpointer(exp.model_dir, cfg.keep_checkpoints,
                                          cfg.checkpoint_every, cfg.async_checkpoints)
  # FLOPs as logged are those of one query per hypermodel forward (runs._step_flops).
  hooks = [trainer_lib.MetricsLogger(exp.model_dir, cfg.log_every, runs._step_flops(exp),
                                     cfg.num_steps),
           trainer_lib.CheckpointHook(checkpointer)]
  start = time.perf_counter()
  trainer.train(state, trainer.place_frozen(frozen), runs._chain([first], batches), hooks)
  train_s = time.perf_counter() - start
  metrics = d.run("eval", gin + ["runs/eval.gin"], stage, d._downstream(),
                  "EVAL_MIXTURE='demo_heldout'")["mean"]
  result = {"kind": args.kind, "tasks": args.tasks, "queries": args.queries,
            "steps": args.steps, "train_s": round(train_s, 1), **metrics}
  with open(os.path.join(args.out, "result.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
