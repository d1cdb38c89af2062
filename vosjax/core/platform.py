"""The platform a program is compiled for, read while it is traced.

Kernel choices (the CPU-tuned attention and convolution gradients against the accelerator paths)
depend on the devices that will run the program, not on the host that traces it: a CPU host that
ahead-of-time compiles for a TPU topology has `jax.default_backend() == "cpu"`. The training step
and the prediction are therefore traced under their mesh (`jax.set_mesh(mesh)`, see
`vosjax.train` and `vosjax.core.sharding`), and `target_platform()` reads the platform of that
mesh's devices; without a mesh it falls back to `jax.default_backend()`.

CPU-only code paths are traced inside `cpu_only(name)` (`jax.named_scope("cpu_only/<name>")`), so
a compiled program's HLO text shows whether it took one.
"""

from __future__ import annotations

import jax

CPU_ONLY_SCOPE = "cpu_only"


def target_platform() -> str:
  """ "cpu", "tpu", "gpu" (or "cuda"/"rocm" normalised to "gpu"): the platform of the devices of
  the mesh set with `jax.set_mesh` (or `jax.sharding.use_mesh`) when called during tracing, else
  `jax.default_backend()`."""
  platform = None
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    platform = mesh.abstract_device.platform
  if platform is None:
    platform = jax.default_backend()
  platform = platform.lower()
  return "gpu" if platform in ("cuda", "rocm") else platform


def on_cpu() -> bool:
  """True when the program being traced is for CPU devices (`target_platform() == "cpu"`)."""
  return target_platform() == "cpu"


def cpu_only(name: str):
  """`jax.named_scope("cpu_only/<name>")`: the marker of a CPU-tuned code path in the HLO."""
  return jax.named_scope(f"{CPU_ONLY_SCOPE}/{name}")
