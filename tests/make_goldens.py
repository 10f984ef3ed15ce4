"""Writes the Hugging Face / PEFT golden files in tests/goldens/ that the JAX T5 is tested against.

Run by hand, never in CI or the test suite. torch, transformers and peft are NOT project
dependencies; they live in a separate virtualenv outside the repository:

  python3 -m venv /work/goldenvenv
  /work/goldenvenv/bin/pip install torch==2.13.0 transformers peft safetensors numpy
  cd <repo root>
  /work/goldenvenv/bin/python tests/make_goldens.py

That (re)writes, from random init (no model hub needed), deterministically:

  tests/goldens/t5_v1_0/        config.json, generation_config.json, model.safetensors,
                                golden.npz, meta.json   (relu FFN, tied embeddings, decoder
                                output scaled by d_model**-0.5)
  tests/goldens/t5_v1_1/        same files               (gated-gelu FFN, separate lm_head,
                                no output scaling)
  tests/goldens/peft_lora_v1_1/ adapter_config.json, adapter_model.safetensors, golden.npz,
                                meta.json                (PEFT LoRA r=4 on q and v of t5_v1_1)

golden.npz holds the shared inputs and HF's outputs for them:
  encoder_input_tokens int32 [3, 12]   ids in [2, 384), then eos=1, then 0-padding
  decoder_input_tokens int32 [3, 7]    0 (decoder start), ids, 0-padding (targets shifted right)
  logits               float32 [3, 7, 384]  model(enc, attention_mask=enc > 0, dec).logits
  greedy_tokens        int32 [3, 10]   generate(greedy, max_new_tokens=10), start token
                                       dropped, 0 after eos / to length 10
  greedy_margin        float32 []      min over real greedy steps of top1 - top2 logit
  beam_tokens          int32 [3, 10]   generate(num_beams=4, early_stopping=True,
                                       length_penalty=1.0, max_new_tokens=10), same layout
                                       (not in the peft golden). HF fills finished
                                       beams with eos when pad is 0; written here as 0
  beam_scores          float32 [3]     its sequences_scores (not in the peft golden)
meta.json records the torch / transformers / peft versions, seeds and margins.

Every golden is computed from the files as read back from disk. t5_v1_1/config.json is edited
after save_pretrained to say "tie_word_embeddings": false, as the hub's v1.1 configs do
(transformers 5 writes true there and marks the missing output scaling with
"scale_decoder_outputs": false); its model.safetensors holds a separate lm_head.weight.
t5_v1_0 stores only shared.weight (encoder/decoder embeddings and lm_head are tied to it) and
scales the decoder output by d_model**-0.5 before the lm_head.

Reverse direction (our code writes a PEFT adapter, HF reads it):

  /work/goldenvenv/bin/python tests/make_goldens.py --check_adapter DIR --out FILE.npz

loads tests/goldens/t5_v1_1 as the base model, the LoRA adapter in DIR with
PeftModel.from_pretrained, runs the golden inputs and writes `logits` [3, 7, 384] float32 and
`greedy_tokens` [3, 10] int32 to FILE.npz.
"""
import argparse
import json
import os
import sys

import numpy as np
import peft
import safetensors
import torch
import transformers

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = dict(
  vocab_size=384, d_model=64, d_ff=128, num_heads=4, d_kv=16, num_layers=2,
  num_decoder_layers=2, relative_attention_num_buckets=32,
  relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.0,
  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
VARIANTS = {
  "t5_v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
  "t5_v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
EOS, PAD = 1, 0
MAX_NEW = 10
# Seed search keeps the first model whose greedy margin is at least this; the hard floor
# asserted on what is written is MIN_MARGIN.
SEARCH_MARGIN = 0.05
MIN_MARGIN = 1e-3
LORA = dict(r=4, lora_alpha=8, target_modules=["q", "v"], lora_dropout=0.0)


def versions():
  return {
    "torch": torch.__version__, "transformers": transformers.__version__,
    "peft": peft.__version__, "safetensors": safetensors.__version__,
    "numpy": np.__version__,
  }


def make_inputs():
  """Encoder / decoder inputs shared by every golden (fixed seed)."""
  rng = np.random.RandomState(1234)
  enc = np.zeros((3, 12), np.int32)
  for row, n in enumerate((12, 9, 5)):  # real tokens, eos included
    enc[row, :n - 1] = rng.randint(2, COMMON["vocab_size"], n - 1)
    enc[row, n - 1] = EOS
  dec = np.zeros((3, 7), np.int32)  # t5x: decoder_input = targets shifted right
  for row, n in enumerate((7, 6, 3)):  # real tokens, decoder start included
    dec[row, 1:n] = rng.randint(2, COMMON["vocab_size"], n - 1)
  dec[1, 5] = EOS  # row 1: targets [a b c d eos 0 0] shifted right
  return enc, dec


# Random init scales (std of a kernel is scale / sqrt(fan_in)). HF's own init gives tiny,
# near-tied logits. With tied embeddings (v1.0) the input token's own embedding, carried by the
# residual stream, makes every token predict itself; a small embedding with strong sublayer
# outputs (and a large final layer-norm scale to bring logits back to std ~3) avoids that.
INIT = {
  "t5_v1_0": dict(embedding=0.1, kernel=0.5, self_out=4.0, cross_out=0.5,
                  decoder_final_norm=30.0, lm_head=None),
  "t5_v1_1": dict(embedding=1.0, kernel=0.5, self_out=0.5, cross_out=0.5,
                  decoder_final_norm=1.0, lm_head=6.0),
}


def randomise(model, init, seed, eos_scale):
  """Overwrites HF's init with larger random values; every value ends up in the checkpoint."""
  g = torch.Generator().manual_seed(seed)
  cfg = model.config
  if init["lm_head"] is not None:  # v1.1: make sure lm_head is its own tensor
    model.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
  normal = lambda p, std: p.copy_(torch.randn(p.shape, generator=g) * std)
  with torch.no_grad():
    for name, p in model.named_parameters():  # tied tensors are listed once
      if "relative_attention_bias" in name:
        normal(p, 1.0)
      elif "layer_norm" in name:
        p.copy_(0.5 + torch.rand(p.shape, generator=g))
        if name == "decoder.final_layer_norm.weight":
          p *= init["decoder_final_norm"]
      elif name == "shared.weight":
        normal(p, init["embedding"])
      elif name == "lm_head.weight":
        normal(p, init["lm_head"] / cfg.d_model ** 0.5)
      elif name.endswith(("SelfAttention.o.weight", "DenseReluDense.wo.weight")):
        normal(p, init["self_out"] / p.shape[1] ** 0.5)  # torch Linear weight is [out, in]
      elif name.endswith("EncDecAttention.o.weight"):
        normal(p, init["cross_out"] / p.shape[1] ** 0.5)
      elif p.ndim == 2:
        normal(p, init["kernel"] / p.shape[1] ** 0.5)
      else:
        raise ValueError(f"no init rule for {name} {tuple(p.shape)}")
    out = model.shared.weight if init["lm_head"] is None else model.lm_head.weight
    out[EOS] *= eos_scale  # steers how often greedy decoding emits eos
  return model


def build(variant, seed, eos_scale):
  config = transformers.T5Config(**COMMON, **VARIANTS[variant])
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(config)
  return randomise(model, INIT[variant], seed, eos_scale).eval()


def pad_to(seqs, length):
  """Drops the decoder-start column of generate() output and 0-pads to `length`."""
  seqs = seqs[:, 1:].numpy().astype(np.int32)
  out = np.zeros((seqs.shape[0], length), np.int32)
  out[:, :seqs.shape[1]] = seqs
  return out


def real_steps(tokens):
  """Per row, the number of generated tokens that count: up to and including eos."""
  n = []
  for row in tokens:
    hits = np.nonzero(row == EOS)[0]
    n.append(int(hits[0]) + 1 if len(hits) else len(row))
  return n


@torch.no_grad()
def run_model(model, enc, dec, beam=True):
  enc_t = torch.from_numpy(enc).long()
  mask = (enc_t > 0).long()
  out = {
    "encoder_input_tokens": enc, "decoder_input_tokens": dec,
    "logits": model(input_ids=enc_t, attention_mask=mask,
                    decoder_input_ids=torch.from_numpy(dec).long()).logits.numpy(),
  }
  greedy = model.generate(
    input_ids=enc_t, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
    num_beams=1, min_new_tokens=0)
  tokens = pad_to(greedy, MAX_NEW)
  # Margin from a teacher-forced pass over the greedy output, which must agree with it.
  dec_in = np.concatenate([np.zeros((3, 1), np.int32), tokens[:, :-1]], axis=1)
  tf = model(input_ids=enc_t, attention_mask=mask,
             decoder_input_ids=torch.from_numpy(dec_in).long()).logits.numpy()
  margin = np.inf
  for row, n in enumerate(real_steps(tokens)):
    top2 = np.sort(tf[row, :n], axis=-1)[:, -2:]
    margin = min(margin, float((top2[:, 1] - top2[:, 0]).min()))
    assert (tf[row, :n].argmax(-1) == tokens[row, :n]).all(), "generate != teacher-forced argmax"
    assert (tokens[row, n:] == PAD).all(), "expected padding after eos"
  out["greedy_tokens"] = tokens
  out["greedy_margin"] = np.float32(margin)
  if beam:
    b = model.generate(
      input_ids=enc_t, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
      num_beams=4, num_return_sequences=1, length_penalty=1.0, early_stopping=True,
      output_scores=True, return_dict_in_generate=True)
    # transformers 5 fills finished beams with `pad_token_id or eos` (eos when pad is 0);
    # write 0 after the first eos, the layout of greedy_tokens.
    beam_tokens = pad_to(b.sequences, MAX_NEW)
    for row, n in enumerate(real_steps(beam_tokens)):
      beam_tokens[row, n:] = PAD
    out["beam_tokens"] = beam_tokens
    out["beam_scores"] = b.sequences_scores.numpy().astype(np.float32)
  return out


def acceptable(out):
  """Some row stops with eos (after >= 2 tokens, before the end), some row runs to the end
  with >= 6 distinct tokens, no real token is the pad id, and no step is close to a tie."""
  tokens = out["greedy_tokens"]
  n = real_steps(tokens)
  ends = any(3 <= k < MAX_NEW for k in n)
  runs = any(k == MAX_NEW and t[-1] != EOS and len(set(t)) >= 6 for k, t in zip(n, tokens))
  no_pad = all((t[:k] != PAD).all() for k, t in zip(n, tokens))
  return ends and runs and no_pad and out["greedy_margin"] > SEARCH_MARGIN


def load_base(variant):
  return transformers.T5ForConditionalGeneration.from_pretrained(
    os.path.join(GOLDENS, variant)).eval()


def check_same_weights(a, b):
  sa, sb = a.state_dict(), b.state_dict()
  assert sa.keys() == sb.keys(), (sa.keys() ^ sb.keys())
  for k in sa:
    assert torch.equal(sa[k], sb[k]), f"{k} changed on save/reload"


def save_npz(path, out):
  np.savez(path, **out)
  print(f"wrote {os.path.relpath(path, REPO_ROOT)}")
  for k, v in out.items():
    print(f"  {k:22s} {v.dtype} {list(v.shape)}")


def save_meta(directory, meta):
  with open(os.path.join(directory, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write("\n")


def print_keys(path):
  from safetensors.numpy import load_file
  for k, v in sorted(load_file(path).items()):
    print(f"  {k} {v.dtype} {list(v.shape)}")


def make_model(variant, enc, dec):
  for seed in range(200):
    for eos_scale in (1.0, 1.25, 1.5, 1.75, 2.0, 2.5):
      model = build(variant, seed, eos_scale)
      out = run_model(model, enc, dec, beam=False)
      if acceptable(out):
        break
    else:
      continue
    break
  else:
    raise RuntimeError(f"{variant}: no seed gave an acceptable greedy decode")
  print(f"{variant}: seed={seed} eos_scale={eos_scale}")
  directory = os.path.join(GOLDENS, variant)
  os.makedirs(directory, exist_ok=True)
  model.save_pretrained(directory, safe_serialization=True)
  if variant == "t5_v1_1":
    # transformers 5 writes tie_word_embeddings=true (plus scale_decoder_outputs=false) even
    # for an untied lm_head; write what the hub's v1.1 configs say, so any version reads it.
    path = os.path.join(directory, "config.json")
    with open(path) as f:
      config = json.load(f)
    config["tie_word_embeddings"] = False
    with open(path, "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
      f.write("\n")
  # Goldens come from the model as read back from disk: that is what our importer sees.
  reloaded = load_base(variant)
  check_same_weights(model, reloaded)
  assert reloaded.config.scale_decoder_outputs == (variant == "t5_v1_0")
  assert (reloaded.lm_head.weight is reloaded.shared.weight) == (variant == "t5_v1_0")
  out = run_model(reloaded, enc, dec)
  assert acceptable(out) and out["greedy_margin"] > MIN_MARGIN, out["greedy_margin"]
  save_npz(os.path.join(directory, "golden.npz"), out)
  save_meta(directory, {
    "versions": versions(), "seed": seed, "eos_scale": eos_scale,
    "greedy_margin": float(out["greedy_margin"]),
    "greedy_eos_steps": real_steps(out["greedy_tokens"]),
  })
  print(f"  {os.path.relpath(directory, REPO_ROOT)}/model.safetensors:")
  print_keys(os.path.join(directory, "model.safetensors"))
  return out


def adapted(adapter_dir):
  base = load_base("t5_v1_1")
  return peft.PeftModel.from_pretrained(base, adapter_dir).eval()


def make_lora(enc, dec, base_out):
  directory = os.path.join(GOLDENS, "peft_lora_v1_1")
  for seed in range(100):
    model = peft.get_peft_model(
      load_base("t5_v1_1"), peft.LoraConfig(task_type="SEQ_2_SEQ_LM", **LORA))
    g = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
      for name, p in model.named_parameters():
        if "lora_A" in name:  # [r, d_in]
          p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
        elif "lora_B" in name:  # [d_out, r]; PEFT initialises it to zero
          p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval()
    out = run_model(model, enc, dec, beam=False)
    delta = float(np.abs(out["logits"] - base_out["logits"]).max())
    if out["greedy_margin"] > SEARCH_MARGIN and delta > 0.1:
      break
  else:
    raise RuntimeError("no LoRA seed gave an acceptable margin")
  print(f"peft_lora_v1_1: seed={10_000 + seed} max|adapted - base logits|={delta:.4f}")
  os.makedirs(directory, exist_ok=True)
  model.save_pretrained(directory, safe_serialization=True)
  os.remove(os.path.join(directory, "README.md"))  # PEFT's boilerplate model card
  path = os.path.join(directory, "adapter_config.json")
  with open(path) as f:
    config = json.load(f)
  config["base_model_name_or_path"] = "tests/goldens/t5_v1_1"  # not this machine's path
  config["target_modules"] = sorted(config["target_modules"])  # PEFT writes a set's order
  with open(path, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
  # Golden from the adapter as read back from disk.
  reread = run_model(adapted(directory), enc, dec, beam=False)
  for k in out:
    assert np.array_equal(out[k], reread[k]), f"{k} differs after adapter save/reload"
  assert reread["greedy_margin"] > MIN_MARGIN
  save_npz(os.path.join(directory, "golden.npz"), reread)
  save_meta(directory, {
    "versions": versions(), "seed": 10_000 + seed, "lora": LORA,
    "greedy_margin": float(reread["greedy_margin"]),
    "max_abs_logit_change_vs_base": delta,
    "greedy_eos_steps": real_steps(reread["greedy_tokens"]),
  })
  print(f"  {os.path.relpath(directory, REPO_ROOT)}/adapter_model.safetensors:")
  print_keys(os.path.join(directory, "adapter_model.safetensors"))
  print(f"  adapter_config.json: {json.dumps(config, sort_keys=True)}")


def check_adapter(adapter_dir, out_path):
  golden = np.load(os.path.join(GOLDENS, "t5_v1_1", "golden.npz"))
  enc, dec = golden["encoder_input_tokens"], golden["decoder_input_tokens"]
  out = run_model(adapted(adapter_dir), enc, dec, beam=False)
  np.savez(out_path, logits=out["logits"], greedy_tokens=out["greedy_tokens"])
  print(f"wrote {out_path}: logits {list(out['logits'].shape)}, greedy_tokens "
        f"{list(out['greedy_tokens'].shape)}")
  ref = np.load(os.path.join(GOLDENS, "peft_lora_v1_1", "golden.npz"))["logits"]
  print(f"(for reference) max|logits - peft_lora_v1_1 golden| = "
        f"{np.abs(out['logits'] - ref).max():.3e}")


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check_adapter", metavar="DIR",
                      help="PEFT LoRA adapter for t5_v1_1 to run on the golden inputs")
  parser.add_argument("--out", metavar="FILE.npz", help="where --check_adapter writes logits")
  args = parser.parse_args(argv)
  torch.set_num_threads(1)  # deterministic CPU reductions
  if args.check_adapter:
    if not args.out:
      parser.error("--check_adapter needs --out FILE.npz")
    check_adapter(args.check_adapter, args.out)
    return
  print("versions:", versions())
  enc, dec = make_inputs()
  make_model("t5_v1_0", enc, dec)
  base_out = make_model("t5_v1_1", enc, dec)
  make_lora(enc, dec, base_out)


if __name__ == "__main__":
  main(sys.argv[1:])
