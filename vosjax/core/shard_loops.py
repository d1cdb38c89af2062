"""Loops over a data-parallel batch axis that stay on each device's own rows.

A `lax.map` / `scan` over the leading axis of a batch that is sharded over the `data` mesh makes
XLA's partitioner gather the whole axis on every device (a dynamic slice of a sharded axis), and
then every device computes every row: the step stops being data-parallel. On a v5e-16 the Betrayed
step's backbone, block and losses ran the global batch on each chip (XLA's per-chip FLOPs grew
with the global batch, docs/tpu.md).

Here the rows are first grouped by shard, `[N, ...] -> [chunks, shards * chunk, ...]`, with the
shard axis pinned to `data`: the loop runs over `chunks` and each device takes its own `chunk`
rows per trip. Without a mesh (or when `data` does not divide N) there is one shard and the
grouping is the plain `[chunks, chunk, ...]` split, so single-device programs are unchanged.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_shards(size: int) -> int:
  """The number of `data` shards a leading axis of `size` rows is split into: the size of the
  `data` axis of the mesh set during tracing (`jax.set_mesh`), when it divides `size`, else 1."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names:
    return 1
  shards = mesh.shape[DATA_AXIS]
  return shards if size % shards == 0 else 1


def _leading_size(tree: Any) -> int:
  sizes = {x.shape[0] for x in jax.tree.leaves(tree)}
  if len(sizes) != 1:
    raise ValueError(f"shard_loops: every input needs the same leading size, got {sorted(sizes)}")
  return sizes.pop()


def group_by_shard(tree: Any, chunk: int) -> tuple[Any, Callable[[Any], Any]]:
  """`[N, ...]` leaves -> `[chunks, shards * chunk, ...]` (each row of a trip from every shard),
  and the function that takes such a result back to `[N, ...]`.

  Args:
    tree: arrays with the same leading size N (the batch axis, sharded over `data` or not).
    chunk: rows per shard per trip (>= 1); each shard's N / shards rows are zero-padded up to a
      whole number of chunks, and the padding is dropped by the returned function.
  """
  if chunk < 1:
    raise ValueError(f"shard_loops: chunk must be >= 1, got {chunk}")
  total = _leading_size(tree)
  shards = data_shards(total)
  per_shard = total // shards
  chunk = min(chunk, per_shard)
  chunks = -(-per_shard // chunk)
  pad = chunks * chunk - per_shard

  def group(x):
    x = x.reshape((shards, per_shard) + x.shape[1:])
    if pad:
      x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    x = jnp.swapaxes(x.reshape((shards, chunks, chunk) + x.shape[2:]), 0, 1)
    if shards > 1:  # the shard axis stays on its devices, the loop runs over `chunks`
      x = jax.lax.with_sharding_constraint(x, P(None, DATA_AXIS))
    return x.reshape((chunks, shards * chunk) + x.shape[3:])

  def ungroup(y):
    y = y.reshape((chunks, shards, chunk) + y.shape[2:])
    if shards > 1:
      y = jax.lax.with_sharding_constraint(y, P(None, DATA_AXIS))
    y = jnp.swapaxes(y, 0, 1).reshape((shards, chunks * chunk) + y.shape[3:])
    return y[:, :per_shard].reshape((total,) + y.shape[2:])

  return jax.tree.map(group, tree), lambda out: jax.tree.map(ungroup, out)


def map_rows(function: Callable[[Any], Any], tree: Any, chunk: int) -> Any:
  """`function` over `chunk` rows per shard at a time (a `lax.map`), the result as `[N, ...]`.

  Args:
    function: `[n, ...]` rows -> `[n, ...]` rows, rows independent of each other.
    tree: inputs with leading size N.
    chunk: rows per shard per call of `function`.
  """
  grouped, ungroup = group_by_shard(tree, chunk)
  return ungroup(jax.lax.map(function, grouped))


def map_each(function: Callable[[Any], Any], tree: Any) -> Any:
  """`function` on one row (no leading axis) at a time, each device looping over its own rows:
  `lax.map(function, tree)` that stays data-parallel. One shard calls `function` once per row as
  `lax.map` does; several take one row of each shard per trip (`vmap` over the shards)."""
  if data_shards(_leading_size(tree)) == 1:
    return jax.lax.map(function, tree)
  grouped, ungroup = group_by_shard(tree, 1)
  return ungroup(jax.lax.map(jax.vmap(function), grouped))
