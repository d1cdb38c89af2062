"""TPU topologies for ahead-of-time compilation on any host, and their chips' published figures.

With libtpu installed (`pip install 'jax[tpu]'` of our jax version), JAX compiles for a TPU slice
it is not running on: `jax.experimental.topologies.get_topology_desc` describes the slice's devices
(with their hosts as process indices), a `Mesh` over them takes our shardings, and
`jax.jit(f).lower(...).compile()` returns the TPU executable (memory and cost analyses; it cannot
run). `devices("v5e:4x4")` or `devices("v5e-16")` gives those devices.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os


class TopologyError(ValueError):
  """A topology that cannot be compiled for here (libtpu missing, unknown name)."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (one JAX device per chip; v4 and v5p as megacore)."""

  generation: str
  hbm_bytes: int  # HBM capacity per chip
  hbm_bytes_per_s: float  # HBM bandwidth per chip
  bf16_flops_per_s: float  # peak dense bfloat16 matmul FLOP/s per chip
  source: str

  @property
  def fp32_flops_per_s(self) -> float:
    """Peak true-float32 matmul FLOP/s: not published by Google; derived as the bf16 peak / 6 (a
    float32 matmul at `Precision.HIGHEST` runs as 6 bfloat16 passes on the MXU). At XLA's default
    precision a float32 matmul on TPU runs one bfloat16 pass, so the bf16 peak applies."""
    return self.bf16_flops_per_s / 6


GB, GiB = 1e9, 2**30
# cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} ("System architecture" tables), read 2026-12.
CHIPS = {
  "TPU v4": Chip("v4", 32 * GiB, 1200 * GB, 275e12, "cloud.google.com/tpu/docs/v4"),
  "TPU v5 lite": Chip("v5e", 16 * GiB, 819 * GB, 197e12, "cloud.google.com/tpu/docs/v5e"),
  "TPU v5": Chip("v5p", 95 * GiB, 2765 * GB, 459e12, "cloud.google.com/tpu/docs/v5p"),
  "TPU v6 lite": Chip("v6e", 32 * GiB, 1640 * GB, 918e12, "cloud.google.com/tpu/docs/v6e"),
}
# Cloud accelerator types -> JAX topology names. v4 and v5p types count TensorCores (2 per chip).
ACCELERATOR_TYPES = {
  "v4-8": "v4:2x2x1",
  "v4-16": "v4:2x2x2",
  "v4-32": "v4:2x2x4",
  "v4-64": "v4:2x4x4",
  "v4-128": "v4:4x4x4",
  "v5p-8": "v5p:2x2x1",
  "v5p-16": "v5p:2x2x2",
  "v5p-32": "v5p:2x2x4",
  "v5p-64": "v5p:2x4x4",
  "v5p-128": "v5p:4x4x4",
  **{
    f"{g}-{n}": f"{g}:{shape}"
    for g in ("v5e", "v6e")
    for n, shape in (
      (1, "1x1"),
      (4, "2x2"),
      (8, "2x4"),
      (16, "4x4"),
      (32, "4x8"),
      (64, "8x8"),
      (128, "8x16"),
      (256, "16x16"),
    )
  },
}
_MEGACORE = ("v4", "v5p", "v5")  # two TensorCores per chip, one JAX device


def topology_name(name: str) -> str:
  """`name` as a JAX topology name (`v5e:4x4`); a Cloud accelerator type (`v5e-16`) is mapped."""
  return ACCELERATOR_TYPES.get(name, name)


def libtpu_version() -> str | None:
  if importlib.util.find_spec("libtpu") is None:
    return None
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def devices(name: str) -> list:
  """The compile-only devices of TPU topology `name` (one per chip), in device-id order.

  Raises TopologyError (one line) when libtpu is missing or the name is unknown."""
  if libtpu_version() is None:
    import jax  # pylint: disable=g-import-not-at-top

    raise TopologyError(
      f"libtpu is not installed, so nothing can be compiled for TPU: pip install "
      f"'jax[tpu]=={jax.__version__}' (the test extra of pyproject.toml installs it)."
    )
  # Compile-only use: libtpu must not take the TPU lock of this host (another process compiling for
  # TPU holds it) nor ask a metadata server for the TPU it runs on (there is none).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  resolved = topology_name(name)
  generation = resolved.split(":")[0]
  kwargs = {"chip_config_name": "megacore"} if generation in _MEGACORE else {}
  try:
    description = topologies.get_topology_desc(platform="tpu", topology_name=resolved, **kwargs)
  except Exception as error:  # pylint: disable=broad-except  # XLA's message, on one line
    message = " ".join(str(error).split())
    raise TopologyError(
      f"unknown TPU topology {name!r} ({message[:200]}); use a JAX topology name such as "
      f"v5e:4x4, v4:2x2x4, v5p:2x2x2, v6e:4x4, or a Cloud type such as "
      f"{', '.join(sorted(ACCELERATOR_TYPES)[:4])}, ..."
    ) from None
  return sorted(description.devices, key=lambda d: d.id)


def chip(device) -> Chip:
  """The published figures of `device`'s chip."""
  if device.device_kind not in CHIPS:
    raise TopologyError(f"no published figures for {device.device_kind!r} (known: {list(CHIPS)})")
  return CHIPS[device.device_kind]


def hosts(devices_: list) -> int:
  return len({d.process_index for d in devices_})


def check_divisible(global_batch: int, devices_: list, what: str) -> None:
  """Raises ValueError (one line) unless `global_batch` splits evenly over the chips."""
  if global_batch % len(devices_):
    raise ValueError(
      f"{what}={global_batch} is not divisible by the {len(devices_)} chips of the topology; "
      f"use a multiple of {len(devices_)}."
    )
