"""Writes the Hugging Face / PEFT golden files for hypert5's Llama (tests/goldens/llama_*).

Run by hand, never in CI or the test suite, in the separate golden virtualenv (torch,
transformers, peft; see tests/make_goldens.py for how it is made):

  /work/goldenvenv/bin/python tests/make_llama_goldens.py

(re)writes, from random init (no model hub), deterministically:

  tests/goldens/llama_tiny/   config.json, model.safetensors, golden.npz, meta.json
      A tiny LlamaForCausalLM: vocab 384, hidden 64, 2 layers, 4 query heads over 2 kv
      heads (GQA), head_dim 16, SwiGLU 128, untied lm_head, rms_norm_eps 1e-6, rope 10000.
      golden.npz:
        input_ids       int32 [3, 12]  bos=1 then ids in [3, 384), right-padded with 0
                                       (real lengths 12, 9, 5)
        attention_mask  int32 [3, 12]  1 on real tokens
        logits          float32 [3, 12, 384]  model(input_ids, attention_mask).logits
        logits_linear   float32 [3, 12, 384]  same weights, rope_parameters linear, factor 2
        logits_llama3   float32 [3, 12, 384]  same weights, llama3 scaling (factor 8, low 1,
                                       high 4, original_max_position_embeddings 16: every
                                       frequency band is exercised at head_dim 16)
        logits_tied     float32 [3, 12, 384]  tie_word_embeddings=true (lm_head = embed_tokens)
        greedy_tokens   int32 [3, 10]  per row, generate(greedy, max_new_tokens=10) from the
                                       unpadded prompt; 0 after eos (id 2)
        greedy_margin   float32 []     min over real greedy steps of top1 - top2 logit

The PEFT prefix-tuning check runs in both venvs (our exporter writes, PEFT reads):

  .venv/bin/python tests/make_llama_goldens.py --write_prefix tests/goldens/llama_ours_prefix
  /work/goldenvenv/bin/python tests/make_llama_goldens.py \
      --check_prefix tests/goldens/llama_ours_prefix --out tests/goldens/llama_ours_prefix/golden.npz

--write_prefix saves a seeded random Prefix (P = 4) with hypert5's save_peft_prefix;
--check_prefix loads llama_tiny + that adapter with PeftModel.from_pretrained and writes
`logits` [3, 12, 384] on the golden inputs (PEFT prepends ones to the attention mask and
starts the tokens at position P).
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDENS = os.path.join(HERE, "goldens")
BASE = os.path.join(GOLDENS, "llama_tiny")
REPO_ROOT = os.path.dirname(HERE)

CONFIG = dict(
  vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
  max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
  pad_token_id=0,
)
ROPE = {
  "logits": {"rope_type": "default", "rope_theta": 10000.0},
  "logits_linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
  "logits_llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                    "rope_theta": 10000.0},
}
BOS, EOS, PAD = 1, 2, 0
LENGTHS = (12, 9, 5)
MAX_NEW = 10
SEARCH_MARGIN, MIN_MARGIN = 0.05, 1e-3
PREFIX_LEN = 4


def make_inputs():
  rng = np.random.RandomState(4321)
  ids = np.zeros((3, max(LENGTHS)), np.int32)
  for row, n in enumerate(LENGTHS):
    ids[row, 0] = BOS
    ids[row, 1:n] = rng.randint(3, CONFIG["vocab_size"], n - 1)
  return ids, (ids > 0).astype(np.int32)


def write_prefix(directory):
  """Our side: a seeded random prefix, written by hypert5's exporter."""
  sys.path.insert(0, REPO_ROOT)
  import hypert5.training.llama_io as llama_io
  from hypert5.models import peft as peft_lib
  config, _ = llama_io.load_llama(BASE)
  rng = np.random.default_rng(2024)
  shape = (1, config.num_layers, PREFIX_LEN, config.num_kv_heads, config.head_dim)
  keys = rng.normal(0, 1.0, shape).astype(np.float32)
  values = rng.normal(0, 1.0, shape).astype(np.float32)
  prefix = peft_lib.Prefix(keys={"decoder_self": keys}, values={"decoder_self": values})
  llama_io.save_peft_prefix(prefix, config, directory,
                            base_model_name_or_path="tests/goldens/llama_tiny")
  print(f"wrote {directory}")


# ----------------------------------------------------------------- torch side


def torch_side():
  import peft
  import torch
  import transformers
  return peft, torch, transformers


def versions():
  peft, torch, transformers = torch_side()
  import safetensors
  return {"torch": torch.__version__, "transformers": transformers.__version__,
          "peft": peft.__version__, "safetensors": safetensors.__version__,
          "numpy": np.__version__}


def build(seed, eos_scale):
  _, torch, transformers = torch_side()
  config = transformers.LlamaConfig(**CONFIG, rope_parameters=dict(ROPE["logits"]))
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(0.5 + torch.rand(p.shape, generator=g))
      elif name == "model.embed_tokens.weight":
        p.copy_(torch.randn(p.shape, generator=g))
      elif name == "lm_head.weight":
        p.copy_(torch.randn(p.shape, generator=g) * 4.0 / p.shape[1] ** 0.5)
      elif p.ndim == 2:  # [out, in]
        p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
      else:
        raise ValueError(f"no init rule for {name}")
    model.lm_head.weight[EOS] *= eos_scale
  return model.eval()


def real_steps(tokens):
  n = []
  for row in tokens:
    hits = np.nonzero(row == EOS)[0]
    n.append(int(hits[0]) + 1 if len(hits) else len(row))
  return n


def run(model, ids, mask):
  _, torch, _ = torch_side()
  with torch.no_grad():
    out = {"input_ids": ids, "attention_mask": mask,
           "logits": model(input_ids=torch.from_numpy(ids).long(),
                           attention_mask=torch.from_numpy(mask).long()).logits.numpy()}
    tokens = np.zeros((3, MAX_NEW), np.int32)
    margin = np.inf
    for row, n in enumerate(LENGTHS):
      prompt = torch.from_numpy(ids[row:row + 1, :n]).long()
      gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                           max_new_tokens=MAX_NEW, do_sample=False, num_beams=1,
                           pad_token_id=PAD, eos_token_id=EOS)[0, n:].numpy()
      tokens[row, :len(gen)] = gen
      k = real_steps(tokens[row:row + 1])[0]
      tokens[row, k:] = PAD
      # Margin from a teacher-forced pass over prompt + greedy output.
      full = torch.from_numpy(np.concatenate([ids[row, :n], tokens[row, :k]])[None]).long()
      tf = model(input_ids=full).logits[0, n - 1:n - 1 + k].numpy()
      assert (tf.argmax(-1) == tokens[row, :k]).all(), "generate != teacher-forced argmax"
      top2 = np.sort(tf, axis=-1)[:, -2:]
      margin = min(margin, float((top2[:, 1] - top2[:, 0]).min()))
  out["greedy_tokens"] = tokens
  out["greedy_margin"] = np.float32(margin)
  return out


def acceptable(out):
  n = real_steps(out["greedy_tokens"])
  ends = any(3 <= k < MAX_NEW for k in n)
  runs = any(k == MAX_NEW for k in n)
  return ends and runs and out["greedy_margin"] > SEARCH_MARGIN


def variant_logits(rope=None, tied=False):
  """Logits of the saved weights under another rope / tying setting."""
  _, torch, transformers = torch_side()
  config = transformers.LlamaConfig.from_pretrained(BASE)
  if rope is not None:
    config.rope_parameters = dict(rope)
  base = transformers.LlamaForCausalLM.from_pretrained(BASE)
  if tied:  # transformers will not tie a checkpoint whose lm_head differs: drop it
    config.tie_word_embeddings = True
    model = transformers.LlamaForCausalLM(config)
    state = {k: v for k, v in base.state_dict().items() if k != "lm_head.weight"}
    model.load_state_dict(state, strict=False)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
  else:
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(base.state_dict())
  model.eval()
  ids, mask = make_inputs()
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids).long(),
                 attention_mask=torch.from_numpy(mask).long()).logits.numpy()


def make_base():
  _, _, transformers = torch_side()
  ids, mask = make_inputs()
  for seed in range(200):
    for eos_scale in (1.0, 1.5, 2.0, 2.5, 3.0):
      out = run(build(seed, eos_scale), ids, mask)
      if acceptable(out):
        break
    else:
      continue
    break
  else:
    raise RuntimeError("no seed gave an acceptable greedy decode")
  model = build(seed, eos_scale)
  os.makedirs(BASE, exist_ok=True)
  model.save_pretrained(BASE, safe_serialization=True)
  for extra in ("generation_config.json",):
    if os.path.exists(os.path.join(BASE, extra)):
      os.remove(os.path.join(BASE, extra))
  reloaded = transformers.LlamaForCausalLM.from_pretrained(BASE).eval()
  out = run(reloaded, ids, mask)  # goldens from the files as read back
  assert acceptable(out) and out["greedy_margin"] > MIN_MARGIN
  for name in ("logits_linear", "logits_llama3"):
    out[name] = variant_logits(rope=ROPE[name])
    assert np.abs(out[name] - out["logits"]).max() > 0.05, f"{name}: scaling has no effect"
  out["logits_tied"] = variant_logits(tied=True)
  np.savez(os.path.join(BASE, "golden.npz"), **out)
  meta = {"versions": versions(), "seed": seed, "eos_scale": eos_scale,
          "greedy_margin": float(out["greedy_margin"]), "rope": ROPE,
          "greedy_eos_steps": real_steps(out["greedy_tokens"])}
  with open(os.path.join(BASE, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write("\n")
  print(f"llama_tiny: seed={seed} eos_scale={eos_scale} margin={out['greedy_margin']:.4f}")
  for k, v in out.items():
    print(f"  {k:16s} {v.dtype} {list(v.shape)}")


def check_prefix(adapter_dir, out_path):
  peft, torch, transformers = torch_side()
  base = transformers.LlamaForCausalLM.from_pretrained(BASE).eval()
  model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
  cfg = model.active_peft_config
  assert cfg.peft_type == peft.PeftType.PREFIX_TUNING and cfg.num_virtual_tokens == PREFIX_LEN
  ids, mask = make_inputs()
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(ids).long(),
                   attention_mask=torch.from_numpy(mask).long()).logits.numpy()
    plain = base(input_ids=torch.from_numpy(ids).long(),
                 attention_mask=torch.from_numpy(mask).long()).logits.numpy()
  np.savez(out_path, logits=logits)
  print(f"wrote {out_path}: logits {list(logits.shape)}; "
        f"max|prefix - base logits| = {np.abs(logits - plain).max():.3f}")


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--write_prefix", metavar="DIR", help="(hypert5 venv) write our adapter")
  parser.add_argument("--check_prefix", metavar="DIR", help="(golden venv) run PEFT on it")
  parser.add_argument("--out", metavar="FILE.npz")
  args = parser.parse_args(argv)
  if args.write_prefix:
    write_prefix(args.write_prefix)
    return
  _, torch, _ = torch_side()
  torch.set_num_threads(1)  # deterministic CPU reductions
  if args.check_prefix:
    if not args.out:
      parser.error("--check_prefix needs --out FILE.npz")
    check_prefix(args.check_prefix, args.out)
    return
  print("versions:", versions())
  make_base()


if __name__ == "__main__":
  main(sys.argv[1:])
