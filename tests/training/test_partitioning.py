"""Sharded loss and gradients equal the single-device ones on 8 simulated CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from hypert5.models import configs, t5
from hypert5.training import losses, partitioning

CFG = configs.get_config("tiny")


def _batch():
  rng = np.random.default_rng(0)
  enc = rng.integers(2, CFG.vocab_size, (8, 12)).astype(np.int32)
  enc[:, 9:] = 0
  targets = rng.integers(2, CFG.vocab_size, (8, 6)).astype(np.int32)
  targets[::2, 4:] = 0
  dec = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  return {"enc": enc, "dec": dec, "targets": targets}


def _loss(params, batch):
  logits = t5.T5(CFG).apply({"params": params}, batch["enc"], batch["dec"])
  total, count = losses.cross_entropy(logits, batch["targets"])
  return total / count


@pytest.fixture(scope="module")
def reference():
  params = t5.init_params(CFG, jax.random.key(0))
  batch = _batch()
  loss, grads = jax.jit(jax.value_and_grad(_loss))(params, batch)
  return params, batch, loss, grads


def test_mesh_config_validates():
  assert partitioning.MeshConfig(data=-1, fsdp=2, model=2).shape(8) == (2, 2, 2)
  assert partitioning.MeshConfig(data=1, fsdp=1, model=1).shape(8) == (1, 1, 1)
  with pytest.raises(ValueError, match="needs 16 devices but 8"):
    partitioning.MeshConfig(data=4, fsdp=2, model=2).shape(8)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8)])
def test_sharded_loss_and_grads_match_single_device(reference, shape):
  params, batch, ref_loss, ref_grads = reference
  assert len(jax.devices()) == 8, "tests/conftest.py should force 8 CPU devices"
  mesh = partitioning.make_mesh(partitioning.MeshConfig(*shape))
  shardings = partitioning.param_shardings(t5.abstract_params(CFG), mesh)
  batch_sh = partitioning.batch_sharding(mesh)
  with jax.set_mesh(mesh), partitioning.axis_rules():
    step = jax.jit(jax.value_and_grad(_loss), in_shardings=(shardings, batch_sh),
                   out_shardings=(partitioning.replicated(mesh), shardings))
    loss, grads = step(jax.device_put(params, shardings), jax.device_put(batch, batch_sh))
  np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, ref_grads)

  # The parameters really are sharded as the rules say.
  _, fsdp, model = shape
  layer = grads["encoder"]["layers_0"]
  assert grads["token_embedder"]["embedding"].sharding.spec == P("model", "fsdp")
  assert layer["attention"]["query"]["kernel"].sharding.spec == P("fsdp", "model")
  assert layer["attention"]["out"]["kernel"].sharding.spec == P("model", "fsdp")
  shard = layer["mlp"]["wi_0"]["kernel"].addressable_shards[0]
  assert shard.data.shape == (CFG.d_model // fsdp, CFG.d_ff // model)
