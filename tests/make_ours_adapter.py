"""Writes tests/goldens/ours_lora_v1_1: a LoRA adapter saved by hypert5.save_peft_adapter.

The reverse-direction golden (our adapter read by PEFT) is then made in the golden venv:

  .venv/bin/python tests/make_ours_adapter.py
  /work/goldenvenv/bin/python tests/make_goldens.py \
      --check_adapter tests/goldens/ours_lora_v1_1 --out tests/goldens/ours_lora_v1_1/golden.npz

It targets a mix PEFT can only express as a regex (q, k and o of some blocks, the MLP's
wi_0), so both target_modules forms are exercised.
"""
import os

import jax
import numpy as np

import hypert5
from hypert5.models import peft as peft_lib

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = [("encoder_self", "q"), ("encoder_self", "o"), ("decoder_self", "k"),
           ("decoder_cross", "v"), ("decoder_mlp", "wi_0")]


def main():
  config, _ = hypert5.load_t5(os.path.join(HERE, "goldens", "t5_v1_1"))
  rng = np.random.default_rng(1234)
  a, b = {}, {}
  for kind, proj in TARGETS:
    a_shape, b_shape = peft_lib.lora_shapes(config, kind, proj, rank=2)
    a.setdefault(kind, {})[proj] = rng.normal(0, 0.3, (1,) + a_shape).astype(np.float32)
    b.setdefault(kind, {})[proj] = rng.normal(0, 0.3, (1,) + b_shape).astype(np.float32)
  lora = hypert5.LoRA(a=a, b=b, alpha=6.0)
  hypert5.save_peft_adapter(lora, config, os.path.join(HERE, "goldens", "ours_lora_v1_1"),
                            base_model_name_or_path="tests/goldens/t5_v1_1")


if __name__ == "__main__":
  main()
