"""Every config's training step compiles for a multi-host TPU topology on this CPU host
(`vosjax.benchmarks.tpu`, libtpu from the test extra): the batch is split over the chips, the state
replicated, and the program takes no CPU-only code path; XLA's memory check can refuse a step.

The steps are those of tests/test_configs.py (helpers.tiny_configs.CONFIG_OVERRIDES' tiny sizes) on
v4:2x2x2: 8 chips (megacore) over 2 hosts, 2 examples per chip; no chip gathers the batch.
"""

import dataclasses
import importlib.util
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.tiny_configs import CONFIG_OVERRIDES, load_config, set_overrides
from vosjax.benchmarks import tpu
from vosjax.core import topology
from vosjax.models import pretrained
from vosjax.models import vit

TOPOLOGY = "v4:2x2x2"
PER_CHIP = 2
CONFIG_FILES = sorted(CONFIG_OVERRIDES)


@pytest.fixture(scope="module")
def devices():
  return topology.devices(TOPOLOGY)


def tiny_config(name: str, batch_size: int):
  """configs/<name> at test_configs' tiny sizes (data folders unused: nothing is read)."""
  overrides = {
    k: ("/nonexistent" if isinstance(v, str) and v.startswith("{") else v)
    for k, v in CONFIG_OVERRIDES[name].items()
  }
  overrides["batch_size"] = batch_size
  return set_overrides(load_config(name), overrides)


def test_topology_hosts_and_chips(devices):
  assert len(devices) == 8 and topology.hosts(devices) == 2
  assert topology.chip(devices[0]).generation == "v4"


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_train_step_compiles_for_tpu(name, devices):
  config = tiny_config(name, PER_CHIP * len(devices))
  (result,) = tpu.run(config, TOPOLOGY, ("train",))
  compiled = result.pop("compiled")
  assert result["fits"] and result["per_chip_batch"] == PER_CHIP
  assert result["chips"] == 8 and result["hosts"] == 2
  state_shardings, batch_shardings, _, _ = compiled.input_shardings[0]
  assert all(s.is_fully_replicated for s in jax.tree.leaves(state_shardings))
  for s in jax.tree.leaves(batch_shardings):
    assert s.shard_shape((PER_CHIP * len(devices), 3))[0] == PER_CHIP
    assert not s.is_fully_replicated
  assert all(s.is_fully_replicated for s in jax.tree.leaves(compiled.output_shardings[0]))
  assert result["flops"] > 0 and result["step_s"] > 0 and result["examples_per_s"] > 0
  # Kernels are chosen by the platform compiled for (`vosjax.core.platform`), not by this host's.
  hlo = compiled.as_text()
  assert "cpu_only/" not in hlo, name
  assert result["hlo_cpu_only"] is False
  # Data-parallel: no chip gathers the batch (a loop over the sharded batch axis would, and every
  # chip would then compute every example: `vosjax.core.shard_loops`).
  assert not re.findall(r"= [^ ]+ all-gather(?:-start)?\(", hlo), name


def test_cpu_programs_show_the_cpu_only_marker():
  """The marker the TPU check looks for does appear where the CPU path is taken (ViT attention)."""
  arch = pretrained.resolve_architecture("dino_vits8")
  arch = dataclasses.replace(arch, embed_dim=32, depth=1, num_heads=2)
  params = pretrained.random_params(arch, seed=0)
  module = vit.VisionTransformer(arch)
  frames = jnp.zeros((1, 16, 16, 3))
  hlo = jax.jit(lambda p, x: module.apply({"params": p}, x)).lower(params, frames).compile()
  assert jax.default_backend() == "cpu" and "cpu_only/attention_per_image" in hlo.as_text()


def test_a_step_too_large_for_the_chip_is_reported_as_not_fitting(devices):
  """The demo's tiny step at 2^17 examples per chip (32x32 flows) exceeds a v4 chip's 32 GiB."""
  config = tiny_config("demo.py", (1 << 17) * len(devices))
  (result,) = tpu.run(config, TOPOLOGY, ("train",))
  assert result["fits"] is False and result["per_chip_batch"] == 1 << 17
  assert "memory" not in result or result["memory"]["total"] > result["hbm_bytes"]
  assert "does NOT fit" in tpu.describe(result)


def test_refusals(capsys, monkeypatch):
  assert tpu.main(["--config", "configs/demo.py", "--topology", "v9z:3x3"]) == 2
  assert "unknown TPU topology 'v9z:3x3'" in capsys.readouterr().err
  assert (
    tpu.main(["--config", "configs/demo.py", "--topology", "v4:2x2x2", "--set", "batch_size=12"])
    == 2
  )
  err = capsys.readouterr().err.strip()
  assert err.endswith(
    "batch_size=12 is not divisible by the 8 chips of the topology; use a multiple of 8."
  )
  assert len(err.splitlines()) == 1
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    "find_spec",
    lambda name, *a: None if name == "libtpu" else real_find_spec(name, *a),
  )
  assert tpu.main(["--config", "configs/demo.py", "--topology", "v4:2x2x2"]) == 2
  assert "libtpu is not installed" in capsys.readouterr().err
  np.testing.assert_equal(topology.topology_name("v5e-16"), "v5e:4x4")
