"""benchmarks/peer_hf_peft.py runs end to end at tiny size (a couple of steps).

The Hugging Face side needs a separate interpreter with torch, transformers and peft
($HYPERT5_TORCH_PYTHON, default /work/goldenvenv/bin/python); where there is none (CI) the
test skips. Speed is not asserted (benchmarks measure it); the two sides must compute the
same model: equal losses at step 0 and the same greedy tokens.
"""
import json
import os
import subprocess
import sys

import pytest
from scripts import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "peer_hf_peft.py")


def test_missing_torch_interpreter_is_a_clear_error(tmp_path):
  bench = load_script("benchmarks/peer_hf_peft.py")
  with pytest.raises(bench.TorchSideMissing, match="pip install torch==2.13.0 transformers peft"):
    bench.check_torch_python(str(tmp_path / "no_such_python"))
  assert bench.main(["--torch_python", str(tmp_path / "no_such_python")]) == 2


@pytest.mark.parametrize("num_beams", [1, 2])
def test_tiny_peer_comparison_runs_and_both_sides_agree(tmp_path, num_beams):
  bench = load_script("benchmarks/peer_hf_peft.py")
  torch_python = os.environ.get("HYPERT5_TORCH_PYTHON", bench.DEFAULT_TORCH_PYTHON)
  try:
    bench.check_torch_python(torch_python)
  except bench.TorchSideMissing as e:
    pytest.skip(f"no torch interpreter for the Hugging Face side: {e}")
  out = tmp_path / "peer.json"
  # Correctness only: cheaper compiles (XLA -O0, rbg random init) keep this near 20 s of CPU.
  env = dict(os.environ, JAX_DEFAULT_PRNG_IMPL="unsafe_rbg",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  proc = subprocess.run(
      [sys.executable, SCRIPT, "--size", "tiny", "--batch", "2", "--inputs", "16",
       "--targets", "8", "--steps", "2", "--warmup", "1", "--new_tokens", "4",
       "--gen_runs", "1", "--num_beams", str(num_beams), "--threads", "1",
       "--torch_python", torch_python, "--out", str(out)],
      capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "speed-up, ours vs HF" in proc.stdout
  result = json.loads(out.read_text())
  assert set(result["ratios_ours_over_hf"]) == {"train_tokens_per_s", "generate_tokens_per_s"}
  assert all(r > 0 for r in result["ratios_ours_over_hf"].values())
  assert result["machine"]["cpus_used_by_each_side"] == 1
  assert result["hf_peft"]["threads"]["torch.get_num_threads"] == 1
  sanity = result["sanity"]
  assert sanity["loss_step0"]["abs_diff"] < 1e-4, sanity
  assert sanity["max_abs_loss_diff_all_steps"] < 1e-3, sanity
  assert sanity["trainable_params"]["ours"] == sanity["trainable_params"]["hf_peft"]
  assert sanity["greedy_token_agreement"] == 1.0, sanity
