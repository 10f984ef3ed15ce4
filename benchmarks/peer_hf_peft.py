"""Peer comparison: hypert5 (JAX/Flax) vs Hugging Face transformers + PEFT (PyTorch).

One command runs both sides on the same T5 shape, the same weights and the same batch:

  .venv/bin/python benchmarks/peer_hf_peft.py --size small --batch 8 --inputs 512 --targets 128

(a) a frozen T5 + LoRA training step (rank 8, alpha 16 on q and v of every attention
    block; global-norm clipping 1.0 + AdamW; float32): step time and tokens/s;
(b) greedy generation (or beam search: --num_beams) with a KV cache and the same LoRA
    applied: time and new tokens/s.

Our side runs in this process and is the code path of `hypert5 bench` (hypert5/runs.py::bench)
in mode `lora`: modes.Objective, optimizers.make_optimizer, trainer_lib.Trainer and its
jitted, donated train step on bench's random-token batch, timed the same way (median of
`--steps` after `--warmup`). Generation is hypert5.decoding.greedy (beam_search) under jax.jit.
The torch side runs benchmarks/hf_peft_side.py in a subprocess with `--torch_python`
(or $HYPERT5_TORCH_PYTHON; default /work/goldenvenv/bin/python): torch, transformers and
peft are not hypert5 dependencies. Both sides use the same weights: our random T5 goes to
HF through hypert5.save_hf_t5 and our LoRA through hypert5.save_peft_adapter (B drawn
nonzero, so the step-0 losses check the LoRA path too); the script prints both sides'
losses and the greedy-token agreement as a sanity check.

Threads: both sides get the same CPUs. XLA's CPU client sizes its thread pool to the CPUs
this process may run on (its default); torch gets torch.set_num_threads(that number).
`--threads N` pins both processes to the first N of them (sched_setaffinity, before JAX
starts) so the counts stay equal.

Ratios are "ours ÷ HF" for throughput (tokens/s): above 1 means hypert5 is faster.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_TORCH_PYTHON = "/work/goldenvenv/bin/python"
INSTALL_HINT = ("make one with:  python3 -m venv /work/goldenvenv && "
                "/work/goldenvenv/bin/pip install torch==2.13.0 transformers peft  "
                "(then pass --torch_python=/work/goldenvenv/bin/python or set "
                "HYPERT5_TORCH_PYTHON)")


class TorchSideMissing(RuntimeError):
  """The torch interpreter is absent or lacks torch / transformers / peft."""


def check_torch_python(python: str) -> str:
  """Returns the versions line of `python`'s torch/transformers/peft, or raises
  TorchSideMissing naming how to make such an interpreter."""
  if not (os.path.isfile(python) and os.access(python, os.X_OK)):
    raise TorchSideMissing(f"torch interpreter {python!r} not found; {INSTALL_HINT}")
  # find_spec + metadata: a fraction of a second, where importing torch + transformers
  # takes several (the torch side imports them anyway and reports a broken install).
  probe = ("import importlib.util as u, importlib.metadata as m\n"
           "need = ('torch', 'transformers', 'peft', 'safetensors', 'numpy')\n"
           "missing = [n for n in need if u.find_spec(n) is None]\n"
           "if missing: raise SystemExit('missing ' + ', '.join(missing))\n"
           "print(' '.join(n + ' ' + m.version(n) for n in need[:3]))")
  proc = subprocess.run([python, "-c", probe], capture_output=True, text=True)
  if proc.returncode:
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    raise TorchSideMissing(f"{python} cannot run the torch side ({last}); {INSTALL_HINT}")
  return proc.stdout.strip()


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="small", help="hypert5.models.configs.SIZES name")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=512, help="encoder length")
  p.add_argument("--targets", type=int, default=128, help="decoder length")
  p.add_argument("--steps", type=int, default=5, help="timed training steps per side")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed first steps (ours: compilation)")
  p.add_argument("--gen_batch", type=int, default=None, help="default: --batch")
  p.add_argument("--gen_inputs", type=int, default=None, help="prompt length; default: --inputs")
  p.add_argument("--new_tokens", type=int, default=32, help="generated tokens per row")
  p.add_argument("--num_beams", type=int, default=1,
                 help="generation: 1 greedy, K > 1 beam search (length penalty 1 on both sides)")
  p.add_argument("--gen_runs", type=int, default=3, help="timed generate calls (after one untimed)")
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--threads", type=int, default=None,
                 help="CPUs for both sides (default: every CPU this process may use)")
  p.add_argument("--torch_python", default=os.environ.get("HYPERT5_TORCH_PYTHON",
                                                          DEFAULT_TORCH_PYTHON))
  p.add_argument("--out", default=None,
                 help="result JSON (default: out/peer_hf_peft_<size>.json in the repo)")
  p.add_argument("--keep_workdir", action="store_true",
                 help="keep the exported model, adapter and batch")
  return p


# -- the machine -------------------------------------------------------------------------


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _load() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def _count_threads(name_part: str) -> int | None:
  """Threads of this process whose name contains `name_part` (Linux), e.g. XLA's pool."""
  try:
    tasks = os.listdir("/proc/self/task")
  except OSError:
    return None
  count = 0
  for tid in tasks:
    try:
      with open(f"/proc/self/task/{tid}/comm") as f:
        count += name_part in f.read()
    except OSError:
      pass
  return count


# -- our side ----------------------------------------------------------------------------


def bench_batch(b: int, n_in: int, n_tgt: int, vocab: int):
  """hypert5 bench's batch (hypert5/runs.py::bench): same generator, same order."""
  import numpy as np
  rng = np.random.default_rng(0)
  tok = lambda n: rng.integers(2, vocab, (b, n)).astype(np.int32)
  return {"encoder_input_tokens": tok(n_in),
          "decoder_input_tokens": tok(n_tgt),
          "decoder_target_tokens": tok(n_tgt),
          "decoder_loss_weights": np.ones((b, n_tgt), np.int32)}


def run_ours(args, workdir: str) -> dict:
  import jax
  import numpy as np
  import flax
  import jaxlib
  import hypert5
  from hypert5 import decoding
  from hypert5.models import configs, hypermodel, t5
  from hypert5.training import modes, optimizers, partitioning, trainer as trainer_lib

  cfg = configs.get_config(args.size)
  hyper = hypermodel.HyperT5Config(t5=cfg, peft_type="lora", lora_rank=8, lora_alpha=16.0)
  obj = modes.Objective("lora", cfg, hyper)
  opt_cfg = optimizers.OptimizerConfig(name="adamw", learning_rate=args.lr,
                                       schedule="constant", warmup_steps=1,
                                       weight_decay=0.0, clip_norm=1.0)
  trainer_cfg = trainer_lib.TrainerConfig(enable_dropout=False)
  b, n_in, n_tgt = args.batch, args.inputs, args.targets
  batch = bench_batch(b, n_in, n_tgt, cfg.vocab_size)

  # As runs.bench: downstream from key 0, trainable from key 1; then B drawn nonzero so
  # that the loss check below exercises the LoRA path (the timing does not depend on it).
  mesh = partitioning.make_mesh(partitioning.MeshConfig())
  opt = optimizers.make_optimizer(opt_cfg)
  downstream = t5.init_params(cfg, jax.random.key(0))
  lora, frozen = obj.init(jax.random.key(1), downstream)
  leaves, treedef = jax.tree.flatten(lora.b)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  lora = lora.replace(b=jax.tree.unflatten(treedef, [
      0.02 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]))

  hypert5.save_hf_t5(cfg, downstream, os.path.join(workdir, "hf_t5"))
  hypert5.save_peft_adapter(lora, cfg, os.path.join(workdir, "adapter"))

  tr = trainer_lib.Trainer(obj, opt, trainer_cfg, mesh, batch)
  state, frozen = tr.init_state(lora), tr.place_frozen(frozen)
  times, losses = [], []
  with jax.set_mesh(mesh), partitioning.axis_rules():
    placed = jax.device_put(batch, tr.batch_sh)
    for i in range(args.warmup + args.steps):
      t0 = time.perf_counter()
      state, metrics = tr._step(state, frozen, placed)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
      losses.append(float(metrics["loss"]))
      print(f"  [ours] step {i}: {times[-1]:.3f} s, loss {losses[-1]:.5f}", flush=True)
  del state
  timed = times[args.warmup:]
  step_time = float(np.median(timed))

  # Greedy or beam generation with the (initial) LoRA, KV cache on, no EOS stop (eos_id=-1).
  gb, g_in, new = args.gen_batch, args.gen_inputs, args.new_tokens
  prompts = np.random.default_rng(1).integers(2, cfg.vocab_size, (gb, g_in)).astype(np.int32)
  model = t5.T5(cfg)
  if args.num_beams > 1:
    gen = jax.jit(lambda params, peft, enc: decoding.beam_search(
        model, params, enc, new, peft=peft, num_beams=args.num_beams, eos_id=-1)[0])
  else:
    gen = jax.jit(lambda params, peft, enc: decoding.greedy(
        model, params, enc, new, peft=peft, eos_id=-1, use_cache=True))
  gen_times, tokens = [], None
  for i in range(1 + args.gen_runs):
    t0 = time.perf_counter()
    tokens = jax.block_until_ready(gen(downstream, lora, prompts))
    gen_times.append(time.perf_counter() - t0)
    print(f"  [ours] generate {i}: {gen_times[-1]:.3f} s", flush=True)
  gen_time = float(np.median(gen_times[1:]))

  np.savez(os.path.join(workdir, "batch.npz"), prompts=prompts, **batch)
  return {
      "framework": "hypert5 (JAX/Flax, XLA CPU)",
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "jaxlib": jaxlib.__version__,
                   "flax": flax.__version__},
      "threads": {"xla_cpu_pool": "XLA default: one thread per CPU in the affinity mask",
                  "xla_eigen_threads_seen": _count_threads("XLAEigen"),
                  "cpu_affinity": len(os.sched_getaffinity(0)),
                  "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")},
      "devices": [str(d) for d in jax.devices()],
      "trainable_params": modes.count_params(lora),
      "train": {"first_step_s": times[0], "step_times_s": timed, "step_time_s": step_time,
                "tokens_per_s": b * (n_in + n_tgt) / step_time, "losses": losses},
      "generate": {"first_call_s": gen_times[0], "times_s": gen_times[1:], "time_s": gen_time,
                   "new_tokens_per_s": gb * new / gen_time},
      "_greedy_tokens": np.asarray(tokens),
      "_config": cfg,
  }


def equivalent_bench_command(args) -> str:
  lengths = {"inputs": args.inputs, "targets": args.targets}
  return (f".venv/bin/hypert5 bench --gin_file=models/{args.size}.gin "
          "--gin_file=models/hyper_lora.gin --gin_file=runs/bench.gin "
          "--gin.experiment.mode=\"'lora'\" "
          "--gin.bench.input_batches=0 "
          f"--gin.experiment.batch_size={args.batch} "
          f"--gin.experiment.task_feature_lengths=\"{lengths}\" "
          "--gin.hypert5.OptimizerConfig.name=\"'adamw'\" "
          f"--gin.hypert5.OptimizerConfig.learning_rate={args.lr} "
          "--gin.hypert5.OptimizerConfig.schedule=\"'constant'\" "
          "--gin.hypert5.OptimizerConfig.warmup_steps=1 "
          f"--gin.bench.steps={args.steps} --gin.bench.warmup={args.warmup}")


# -- report ------------------------------------------------------------------------------


def _generation(num_beams: int) -> str:
  return "greedy" if num_beams == 1 else f"{num_beams}-beam"


def _table(result: dict) -> str:
  o, h = result["ours"], result["hf_peft"]
  gen = _generation(result["setup"]["num_beams"])
  rows = [
      ("train step time (s, median)", o["train"]["step_time_s"], h["train"]["step_time_s"],
       h["train"]["step_time_s"] / o["train"]["step_time_s"]),
      ("train tokens/s (enc+dec)", o["train"]["tokens_per_s"], h["train"]["tokens_per_s"],
       o["train"]["tokens_per_s"] / h["train"]["tokens_per_s"]),
      (f"{gen} generate time (s, median)", o["generate"]["time_s"], h["generate"]["time_s"],
       h["generate"]["time_s"] / o["generate"]["time_s"]),
      (f"{gen} new tokens/s", o["generate"]["new_tokens_per_s"],
       h["generate"]["new_tokens_per_s"],
       o["generate"]["new_tokens_per_s"] / h["generate"]["new_tokens_per_s"]),
      ("first train step (s; ours compiles)", o["train"]["first_step_s"],
       h["train"]["first_step_s"], None),
      ("first generate call (s; ours compiles)", o["generate"]["first_call_s"],
       h["generate"]["first_call_s"], None),
  ]
  fmt = lambda x: "-" if x is None else (f"{x:,.0f}" if x >= 1000 else f"{x:.4g}")
  lines = ["| measurement | hypert5 (JAX) | HF + PEFT (torch) | speed-up, ours vs HF |",
           "| --- | --- | --- | --- |"]
  for name, a, b, r in rows:
    lines.append(f"| {name} | {fmt(a)} | {fmt(b)} | {'-' if r is None else f'{r:.2f}x'} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.num_beams < 1:
    parser.error(f"--num_beams {args.num_beams}: expected 1 (greedy) or more (beam search)")
  args.gen_batch = args.gen_batch or args.batch
  args.gen_inputs = args.gen_inputs or args.inputs
  try:
    torch_versions = check_torch_python(args.torch_python)
  except TorchSideMissing as e:
    print(f"peer_hf_peft: {e}", file=sys.stderr)
    return 2

  # Equal CPUs on both sides; must happen before JAX creates its thread pool.
  cpus = sorted(os.sched_getaffinity(0))
  if args.threads:
    if args.threads > len(cpus):
      print(f"peer_hf_peft: --threads={args.threads} but only {len(cpus)} CPUs are available",
            file=sys.stderr)
      return 2
    cpus = cpus[:args.threads]
    os.sched_setaffinity(0, cpus)
  threads = len(cpus)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # One CPU device: simulated host devices (a test setting) would split our side's batch.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

  out = args.out or os.path.join(REPO, "out", f"peer_hf_peft_{args.size}.json")
  workdir = tempfile.mkdtemp(prefix="peer_hf_peft_")
  sys.path.insert(0, REPO)
  try:
    load_before = _load()
    print(f"[ours] hypert5 {args.size}: batch {args.batch}, inputs {args.inputs}, targets "
          f"{args.targets}; {args.warmup} + {args.steps} steps, then "
          f"{_generation(args.num_beams)} "
          f"{args.gen_batch}x{args.gen_inputs} -> {args.new_tokens} tokens", flush=True)
    t0 = time.perf_counter()
    ours = run_ours(args, workdir)
    ours["wall_s"] = time.perf_counter() - t0
    our_tokens, cfg = ours.pop("_greedy_tokens"), ours.pop("_config")
    with open(os.path.join(workdir, "spec.json"), "w") as f:
      json.dump({"threads": threads, "steps": args.steps, "warmup": args.warmup,
                 "lr": args.lr, "lr_warmup_steps": 1, "b1": 0.9, "b2": 0.999,
                 "clip_norm": 1.0, "new_tokens": args.new_tokens, "gen_runs": args.gen_runs,
                 "num_beams": args.num_beams},
                f)

    print(f"[hf+peft] {args.torch_python} ({torch_versions})", flush=True)
    t0 = time.perf_counter()
    # The child inherits this process's CPU affinity (set above for --threads).
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    proc = subprocess.run(
        [args.torch_python, os.path.join(HERE, "hf_peft_side.py"), workdir], env=env)
    if proc.returncode:
      print(f"peer_hf_peft: the torch side failed (exit {proc.returncode}); see above",
            file=sys.stderr)
      return 1
    with open(os.path.join(workdir, "hf_result.json")) as f:
      hf = json.load(f)
    hf["wall_s"] = time.perf_counter() - t0
    import numpy as np
    hf_arrays = np.load(os.path.join(workdir, "hf_arrays.npz"))

    our_losses = np.array(ours["train"]["losses"])
    hf_losses = hf_arrays["losses"]
    agree = float(np.mean(our_tokens == hf_arrays["greedy_tokens"]))
    first_diff = np.nonzero(np.any(our_tokens != hf_arrays["greedy_tokens"], axis=0))[0]
    sanity = {
        "loss_step0": {"ours": float(our_losses[0]), "hf_peft": float(hf_losses[0]),
                       "abs_diff": float(abs(our_losses[0] - hf_losses[0]))},
        "loss_last": {"ours": float(our_losses[-1]), "hf_peft": float(hf_losses[-1]),
                      "abs_diff": float(abs(our_losses[-1] - hf_losses[-1]))},
        "max_abs_loss_diff_all_steps": float(np.max(np.abs(our_losses - hf_losses))),
        "greedy_token_agreement": agree,
        "greedy_first_differing_position": int(first_diff[0]) if len(first_diff) else None,
        "trainable_params": {"ours": ours["trainable_params"],
                             "hf_peft": hf["trainable_params"]},
    }
    result = {
        "command": " ".join([os.path.relpath(sys.executable, REPO)
                             if sys.executable.startswith(REPO) else sys.executable,
                             os.path.relpath(os.path.abspath(__file__), REPO)] +
                            (argv if argv is not None else sys.argv[1:])),
        "equivalent_hypert5_bench": equivalent_bench_command(args),
        "machine": {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(),
                    "cpus_used_by_each_side": threads, "platform": platform.platform(),
                    "load_avg_before": load_before, "load_avg_after": _load(),
                    "note": "sides run one after the other, same CPUs"},
        "setup": {"size": args.size, "d_model": cfg.d_model, "d_ff": cfg.d_ff,
                  "num_heads": cfg.num_heads, "head_dim": cfg.head_dim,
                  "layers": [cfg.num_encoder_layers, cfg.num_decoder_layers],
                  "vocab": cfg.vocab_size, "dtype": "float32", "batch": args.batch,
                  "inputs": args.inputs, "targets": args.targets, "steps": args.steps,
                  "warmup": args.warmup, "lora": "rank 8, alpha 16, q and v of every attention",
                  "optimizer": f"clip 1.0 + AdamW lr {args.lr} (0 on the first step), wd 0",
                  "gen_batch": args.gen_batch, "gen_inputs": args.gen_inputs,
                  "new_tokens": args.new_tokens, "gen_runs": args.gen_runs,
                  "num_beams": args.num_beams},
        "ours": ours, "hf_peft": hf, "sanity": sanity,
        "ratios_ours_over_hf": {
            "train_tokens_per_s": ours["train"]["tokens_per_s"] / hf["train"]["tokens_per_s"],
            "generate_tokens_per_s": (ours["generate"]["new_tokens_per_s"] /
                                      hf["generate"]["new_tokens_per_s"])},
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(result, f, indent=2)

    m = result["machine"]
    print(f"\nmachine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {threads} used by each "
          f"side (XLA default pool; torch.set_num_threads({threads})); load avg before "
          f"{m['load_avg_before']}, after {m['load_avg_after']}")
    print(f"ours: jax {ours['versions']['jax']}, flax {ours['versions']['flax']} | "
          f"HF: torch {hf['versions']['torch']}, transformers "
          f"{hf['versions']['transformers']}, peft {hf['versions']['peft']}")
    print(f"T5 {args.size} (d_model {cfg.d_model}, {cfg.num_encoder_layers}+"
          f"{cfg.num_decoder_layers} layers), float32, LoRA r8 q,v "
          f"({ours['trainable_params']:,} trainable params); train batch {args.batch}x"
          f"({args.inputs}+{args.targets}), {args.steps} timed steps; "
          f"{_generation(args.num_beams)} "
          f"{args.gen_batch}x{args.gen_inputs} prompt -> {args.new_tokens} new tokens\n")
    print(_table(result))
    s = sanity
    print(f"\nsanity: loss at step 0 ours {s['loss_step0']['ours']:.6f} vs HF "
          f"{s['loss_step0']['hf_peft']:.6f} (|diff| {s['loss_step0']['abs_diff']:.2e}); "
          f"max |diff| over {len(our_losses)} steps {s['max_abs_loss_diff_all_steps']:.2e}; "
          f"generated tokens agree {agree:.1%}; trainable params ours "
          f"{ours['trainable_params']:,} vs HF {hf['trainable_params']:,}")
    print(f"wrote {out}")
    return 0
  finally:
    if args.keep_workdir:
      print(f"workdir kept: {workdir}")
    else:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
