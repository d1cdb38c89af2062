"""Matmul FLOPs of a JAX function with its loops multiplied out, counted on its jaxpr.

XLA's `cost_analysis()["flops"]` counts the body of a `while` loop once, whatever its trip count:
a model that runs its decoder in a `lax.scan` of 8 chunks reports an eighth of the decoder's FLOPs.
`matmul_flops` walks the jaxpr instead and multiplies each `scan` body by its length:

  dot_general:          2 * prod(output shape) * prod(the lhs contracting dimensions)
  conv_general_dilated: 2 * batch * output features * input features per group * the pairs
                        (output position, kernel tap) that read a real input element (padding and
                        a transposed convolution's inserted zeros are not counted, as in XLA)

(a multiply and an add per term). Only these two are counted: they are what the matrix units run
and what model-FLOPs utilisation (MFU) is defined over; elementwise work, reductions and
transcendentals are left out (XLA counts them, so its figure is higher where loops are not the
cause). A gradient's backward pass is in the jaxpr of `jax.value_and_grad`, so a training step's
count includes it, and rematerialised forward work where the model asks for it (`jax.checkpoint`).
A `while_loop` whose trip count is not static is counted once and reported in `unbounded_loops`;
a `cond` counts its most expensive branch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
from jax.extend import core as extend_core


@dataclasses.dataclass
class FlopCount:
  flops: float  # dot_general + convolution FLOPs, loops multiplied out
  unbounded_loops: int  # while loops of unknown trip count, counted once


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _valid_taps(size, lhs_dilation, window, rhs_dilation, stride, padding, out_size) -> int:
  """Pairs (output position, kernel tap) of one spatial dimension that read a real input element:
  not padding and not a hole of the input dilation (a transposed convolution's zeros)."""
  low, _ = padding
  last = (size - 1) * lhs_dilation
  count = 0
  for o in range(out_size):
    for j in range(window):
      q = o * stride + j * rhs_dilation - low
      count += 0 <= q <= last and q % lhs_dilation == 0
  return count


def _conv_flops(eqn) -> float:
  params = eqn.params
  dims = params["dimension_numbers"]
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  spatial = len(dims.lhs_spec) - 2
  lhs_dilation = params["lhs_dilation"] or (1,) * spatial
  rhs_dilation = params["rhs_dilation"] or (1,) * spatial
  taps = 1
  for i in range(spatial):
    taps *= _valid_taps(
      lhs[dims.lhs_spec[2 + i]],
      lhs_dilation[i],
      rhs[dims.rhs_spec[2 + i]],
      rhs_dilation[i],
      params["window_strides"][i],
      params["padding"][i],
      out[dims.out_spec[2 + i]],
    )
  out_spatial = math.prod(out[d] for d in dims.out_spec[2:])
  # (batch x output features) x valid (position, tap) pairs x input features of a group
  return 2.0 * math.prod(out) / out_spatial * taps * rhs[dims.rhs_spec[1]]


def _sub_jaxprs(value) -> list:
  if isinstance(value, extend_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, extend_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _count(jaxpr, count: FlopCount, multiplier: float) -> None:
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      count.flops += multiplier * _dot_flops(eqn)
    elif name == "conv_general_dilated":
      count.flops += multiplier * _conv_flops(eqn)
    elif name == "scan":
      _count(eqn.params["jaxpr"].jaxpr, count, multiplier * eqn.params["length"])
    elif name == "while":
      count.unbounded_loops += 1
      _count(eqn.params["body_jaxpr"].jaxpr, count, multiplier)
      _count(eqn.params["cond_jaxpr"].jaxpr, count, multiplier)
    elif name == "cond":
      branches = []
      for branch in eqn.params["branches"]:
        sub = FlopCount(0.0, 0)
        _count(branch.jaxpr, sub, multiplier)
        branches.append(sub)
      worst = max(branches, key=lambda c: c.flops)
      count.flops += worst.flops
      count.unbounded_loops += worst.unbounded_loops
    else:  # pjit, custom_jvp/vjp, remat, shard_map, ...: their inner jaxprs run once
      for value in eqn.params.values():
        for sub in _sub_jaxprs(value):
          _count(sub, count, multiplier)


def matmul_flops(function: Callable, *args: Any, **kwargs: Any) -> FlopCount:
  """Counts `function(*args, **kwargs)` (arrays or `jax.ShapeDtypeStruct`s; traced, not run)."""
  closed = jax.make_jaxpr(function)(*args, **kwargs)
  count = FlopCount(0.0, 0)
  _count(closed.jaxpr, count, 1.0)
  return count
