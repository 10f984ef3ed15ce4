"""The Hugging Face transformers + PEFT (PyTorch) side of benchmarks/peer_hf_peft.py.

Run by peer_hf_peft.py with a separate interpreter that has torch, transformers and peft
(never the project's venv: they are not hypert5 dependencies):

  TORCH_PYTHON benchmarks/hf_peft_side.py WORKDIR

WORKDIR (written by peer_hf_peft.py) holds spec.json, batch.npz, hf_t5/ (our random T5
exported with hypert5.save_hf_t5) and adapter/ (our LoRA exported with
hypert5.save_peft_adapter). This script writes WORKDIR/hf_result.json and
WORKDIR/hf_arrays.npz (per-step losses, greedy tokens). It imports only torch,
transformers, peft and numpy.
"""
import json
import os
import platform
import sys
import time


def main(workdir: str) -> None:
  with open(os.path.join(workdir, "spec.json")) as f:
    spec = json.load(f)
  threads = spec["threads"]
  import numpy as np
  import torch
  torch.set_num_threads(threads)
  torch.set_num_interop_threads(threads)
  import warnings
  warnings.filterwarnings("ignore", category=FutureWarning)
  import peft
  import transformers
  transformers.logging.set_verbosity_error()  # e.g. the tie-weights notice for v1.1 configs
  transformers.utils.logging.disable_progress_bar()

  data = np.load(os.path.join(workdir, "batch.npz"))
  as_long = lambda name: torch.from_numpy(data[name].astype(np.int64))
  enc, dec, tgt = (as_long("encoder_input_tokens"), as_long("decoder_input_tokens"),
                   as_long("decoder_target_tokens"))
  prompts = as_long("prompts")

  def load(is_trainable: bool):
    base = transformers.T5ForConditionalGeneration.from_pretrained(
        os.path.join(workdir, "hf_t5"), dtype=torch.float32)
    return peft.PeftModel.from_pretrained(base, os.path.join(workdir, "adapter"),
                                          is_trainable=is_trainable)

  model = load(is_trainable=True)
  trainable = [p for p in model.parameters() if p.requires_grad]
  n_trainable = sum(p.numel() for p in trainable)

  # The same optimizer as ours: global-norm clipping, then AdamW (optax defaults for eps),
  # with optax's linear warm-up from 0 to lr over `warmup_steps`, then constant.
  opt = torch.optim.AdamW(trainable, lr=spec["lr"], betas=(spec["b1"], spec["b2"]), eps=1e-8,
                          weight_decay=0.0)
  warm = max(spec["lr_warmup_steps"], 1)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / warm, 1.0))

  model.train()  # dropout_rate is 0 in the exported config, lora_dropout 0 in the adapter
  mask = torch.ones_like(enc)
  losses, times = [], []
  for i in range(spec["warmup"] + spec["steps"]):
    t0 = time.perf_counter()
    out = model(input_ids=enc, attention_mask=mask, decoder_input_ids=dec, labels=tgt,
                use_cache=False)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, spec["clip_norm"])
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    loss = out.loss.item()
    times.append(time.perf_counter() - t0)
    losses.append(loss)
    print(f"  [hf+peft] step {i}: {times[-1]:.3f} s, loss {loss:.5f}", flush=True)

  # Generation uses the adapter as exported (as ours does), not the one just trained.
  del model, opt, out
  model = load(is_trainable=False).eval()
  new = spec["new_tokens"]
  # No EOS stop on either side: every run generates exactly `new` tokens per row.
  gen_kwargs = dict(attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                    min_new_tokens=0, do_sample=False, num_beams=spec["num_beams"],
                    use_cache=True,
                    eos_token_id=None, pad_token_id=0)
  gen_times, tokens = [], None
  with torch.inference_mode():
    for i in range(1 + spec["gen_runs"]):
      t0 = time.perf_counter()
      out_tokens = model.generate(input_ids=prompts, **gen_kwargs)
      gen_times.append(time.perf_counter() - t0)
      print(f"  [hf+peft] generate {i}: {gen_times[-1]:.3f} s", flush=True)
      tokens = out_tokens[:, 1:].numpy().astype(np.int32)  # drop the decoder start token
  if tokens.shape[1] != new:
    raise RuntimeError(f"HF generated {tokens.shape[1]} tokens per row, expected {new}")

  timed = times[spec["warmup"]:]
  b, n_in, n_tgt = enc.shape[0], enc.shape[1], dec.shape[1]
  step_time = float(np.median(timed))
  gen_time = float(np.median(gen_times[1:]))
  result = {
      "framework": "Hugging Face transformers + PEFT on PyTorch (eager)",
      "versions": {"python": platform.python_version(), "torch": torch.__version__,
                   "transformers": transformers.__version__, "peft": peft.__version__},
      "threads": {"torch.get_num_threads": torch.get_num_threads(),
                  "torch.get_num_interop_threads": torch.get_num_interop_threads(),
                  "cpu_affinity": len(os.sched_getaffinity(0))},
      "attn_implementation": getattr(model.config, "_attn_implementation", None),
      "trainable_params": n_trainable,
      "train": {"first_step_s": times[0], "step_times_s": timed, "step_time_s": step_time,
                "tokens_per_s": b * (n_in + n_tgt) / step_time, "losses": losses},
      "generate": {"first_call_s": gen_times[0], "times_s": gen_times[1:],
                   "time_s": gen_time,
                   "new_tokens_per_s": prompts.shape[0] * new / gen_time},
  }
  with open(os.path.join(workdir, "hf_result.json"), "w") as f:
    json.dump(result, f, indent=2)
  np.savez(os.path.join(workdir, "hf_arrays.npz"), losses=np.array(losses, np.float64),
           greedy_tokens=tokens)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  main(sys.argv[1])
