"""Loops over a sharded batch axis stay on each device's rows (`vosjax.core.shard_loops`).

Each device must loop over its own rows: the compiled program holds no all-gather (a `lax.map`
over the sharded axis gathers the whole batch onto every device, shown failing here), its loop
runs the per-device trip count, and the values equal the plain function's.
"""

import re
import subprocess
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from helpers.environment import PYTHON, subprocess_env
from vosjax.core import shard_loops
from vosjax.core import topology


def _rows_function(x):  # row-wise, with a matmul so that the loop body is not trivial
  return jnp.tanh(x @ jnp.ones((x.shape[-1], 3)) + x.sum(-1, keepdims=True))


def _compiled_for_tpu(function, shape):
  devices = topology.devices("v4:2x2x2")  # 8 chips over 2 hosts
  mesh = jax.make_mesh((8,), ("data",), (jax.sharding.AxisType.Auto,), devices=devices)
  rows = NamedSharding(mesh, P("data"))
  argument = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rows)
  with jax.set_mesh(mesh):
    return jax.jit(function, out_shardings=rows).lower(argument).compile().as_text()


def _gathers(hlo: str) -> list[str]:
  return re.findall(r"= [^ ]+ all-gather(?:-start)?\(", hlo)


def _loop_carries(hlo: str) -> list[str]:
  """The shapes a chip's while loops carry (their first line: the loop's operand tuple)."""
  return [
    shape
    for line in hlo.splitlines()
    if " while(" in line
    for shape in re.findall(r"f32\[[\d,]*\]", line)
  ]


def test_a_plain_map_over_the_sharded_axis_gathers_the_batch():
  """What the module prevents: the rows gathered onto each chip, which then computes all 32."""
  hlo = _compiled_for_tpu(lambda x: jax.lax.map(_rows_function, x), (32, 5))
  assert _gathers(hlo)


@pytest.mark.parametrize("chunk", [1, 3])
def test_map_rows_loops_over_each_chips_own_rows(chunk):
  """32 rows on 8 chips: 4 per chip, `chunk` at a time (3: padded to 6), no gather."""
  hlo = _compiled_for_tpu(lambda x: shard_loops.map_rows(_rows_function, x, chunk), (32, 5))
  assert not _gathers(hlo)
  assert f"f32[{-(-4 // chunk)},{chunk},5]" in _loop_carries(hlo)  # [trips, rows per trip, 5]


def test_map_each_loops_over_each_chips_own_rows():
  hlo = _compiled_for_tpu(
    lambda x: shard_loops.map_each(lambda r: jnp.tanh(r * r.sum()), x), (16, 5)
  )
  assert not _gathers(hlo) and "f32[2,1,5]" in _loop_carries(hlo)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 20])
def test_one_device_values_equal_the_plain_function(chunk):
  x = jax.random.normal(jax.random.key(0), (7, 4))
  tree = {"a": x, "b": x[:, :2] * 2}
  got = shard_loops.map_rows(lambda t: {"y": _rows_function(t["a"]), "z": t["b"] + 1}, tree, chunk)
  np.testing.assert_allclose(got["y"], _rows_function(x), rtol=1e-6)
  np.testing.assert_array_equal(got["z"], tree["b"] + 1)
  np.testing.assert_array_equal(
    shard_loops.map_each(lambda r: r[::-1], x), jax.lax.map(lambda r: r[::-1], x)
  )


def test_inputs_of_different_leading_sizes_are_refused():
  with pytest.raises(ValueError, match=r"same leading size, got \[3, 4\]"):
    shard_loops.map_rows(lambda t: t, (jnp.zeros((3, 1)), jnp.zeros((4, 1))), 1)


def test_values_on_a_four_device_mesh_equal_the_plain_function():
  """Executed on 4 CPU devices (a child python): sharded input, each device its own rows."""
  script = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from vosjax.core import shard_loops
    mesh = jax.make_mesh((4,), ("data",), (jax.sharding.AxisType.Auto,))
    x = jax.device_put(np.random.RandomState(0).randn(12, 5).astype(np.float32),
                       NamedSharding(mesh, P("data")))
    f = lambda r: jnp.tanh(r @ jnp.ones((5, 3)) + r.sum(-1, keepdims=True))
    with jax.set_mesh(mesh):
      rows = jax.jit(lambda x: shard_loops.map_rows(f, x, 2))
      each = jax.jit(lambda x: shard_loops.map_each(lambda r: f(r[None])[0], x))
      assert " all-gather" not in rows.lower(x).compile().as_text()
      got_rows, got_each = rows(x), each(x)
    want = f(np.asarray(x))
    np.testing.assert_allclose(got_rows, want, rtol=1e-6)
    np.testing.assert_allclose(got_each, want, rtol=1e-6)
    print("ok")
    """
  )
  out = subprocess.run(
    [PYTHON, "-c", script], env=subprocess_env(4), capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
