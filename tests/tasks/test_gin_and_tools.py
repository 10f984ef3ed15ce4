"""Tasks registered from gin by path; the throughput tool runs."""
import gin
import seqio

import task_fixtures as fx
import tasks  # registers the file-free tasks (and the gin configurables)
from hypert5.data import throughput


def test_register_from_gin(tmp_path):
  root = fx.write_sni(tmp_path / "ni")

  @gin.configurable("collect_registrations")
  def collect(registered=()):
    return registered

  try:
    gin.parse_config(f"""
      import tasks.sni
      tasks.sni.register.data_dir = "{root}"
      tasks.sni.register.vocabulary = "byte"
      tasks.sni.register.k = 1
      collect_registrations.registered = [@tasks.sni.register()]
    """)
    assert collect()[0] == {"train": ["sni_task001_a", "sni_task002_b"],
                            "test": ["sni_task003_c"]}
  finally:
    gin.clear_config()
  assert len(seqio.get_mixture_or_task("sni_train").tasks) == 2


def test_throughput_tool_measures_and_counts():
  lengths = tasks.synthetic.FAMILY.sequence_lengths("hyper")
  result = throughput.measure("synthetic_train", lengths, batch_size=8, num_examples=64,
                              shuffle=False)
  assert result["examples"] == 64 and result["examples_per_s"] > 0
  # Lengths too short for the data: the counts say so.
  short = dict(lengths, hyper_inputs=40, inputs=6)
  stats = throughput.truncation_stats("synthetic_heldout_000", short, split="test",
                                      num_examples=32)
  assert stats["stats_examples"] == 32
  assert stats["fewshot_dropped_fraction"] == 1.0 and stats["inputs_truncated_fraction"] > 0
