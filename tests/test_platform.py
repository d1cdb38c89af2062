"""`vosjax.core.platform`: kernels chosen by the platform of the mesh a program is traced under.

The TPU case needs no libtpu: an abstract mesh whose devices say `platform="tpu"` is what a CPU
host sees while it traces a program for a TPU topology (`jax.set_mesh` over the topology's
devices; `tests/` of the TPU compile harness compile the real thing when libtpu is installed).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.mesh import AbstractDevice
from jax.sharding import AbstractMesh, AxisType

from vosjax.core import platform, sharding
from vosjax.models import convolution, transformer_layers, vit


def _tpu_mesh() -> AbstractMesh:
  return AbstractMesh(
    (4,),
    ("data",),
    axis_types=(AxisType.Auto,),
    abstract_device=AbstractDevice("TPU v5 lite", 1, "tpu"),
  )


def _vit_gradient_hlo(tokens_side: int) -> str:
  """StableHLO (with op names) of a 1-block ViT-S/16's gradient and a conv2d's gradient."""
  module = vit.VisionTransformer(vit.VIT_ARCHITECTURES["dino_vits16"].replace(depth=1))
  images = jax.ShapeDtypeStruct((2, 16 * tokens_side, 16 * tokens_side, 3), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.key(0), images)

  def loss(p, x):
    conv = convolution.conv2d(x, jnp.ones((3, 3, 3, 4)), ((1, 1), (1, 1)))
    return jnp.sum(module.apply(p, x).tokens) + jnp.sum(conv)

  return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, images).as_text(debug_info=True)


def test_target_platform_reads_the_mesh_being_traced_under():
  seen = {}

  def record(x):
    seen["platform"] = platform.target_platform()
    return x

  jax.jit(record).lower(jnp.zeros(2))
  assert seen["platform"] == jax.default_backend() == "cpu"
  with jax.sharding.use_abstract_mesh(_tpu_mesh()):
    jax.jit(record).lower(jnp.zeros(2))
  assert seen["platform"] == "tpu"
  with jax.set_mesh(sharding.make_mesh()):  # a concrete mesh of this host's CPU devices
    jax.jit(record).lower(jnp.zeros(3))
  assert seen["platform"] == "cpu"


def test_cpu_program_takes_the_cpu_kernels_and_tpu_program_does_not():
  # 2 x 3 x 3 + 1 = 19 tokens per image: the per-image kernel; 40 x 40 + 1: the query chunks.
  for side, kernel in ((3, "attention_per_image"), (40, "attention_in_query_chunks")):
    cpu = _vit_gradient_hlo(side)
    assert f"cpu_only/{kernel}" in cpu and "cpu_only/conv_kernel_gradient_im2col" in cpu
    with jax.sharding.use_abstract_mesh(_tpu_mesh()):
      tpu = _vit_gradient_hlo(side)
    assert "cpu_only" not in tpu


def test_accelerator_attention_equals_the_cpu_kernels():
  """The TPU path (dot_product_attention, and the einsum alternative) and the CPU kernels agree,
  values and gradients, traced on this host for each platform."""
  rng = np.random.default_rng(0)
  for length in (19, 2 * transformer_layers.QUERY_CHUNK + 7):
    qkv = jnp.asarray(rng.normal(size=(2, length, 3, 4, 8)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(2, length, 32)), jnp.float32)

    def loss(x):
      return jnp.sum(transformer_layers.multi_head_attention(x, 8**-0.5) * weights)

    cpu_value, cpu_grad = jax.value_and_grad(loss)(qkv)
    for kind in ("xla", "einsum"):
      transformer_layers.ACCELERATOR_ATTENTION = kind
      try:
        with jax.sharding.use_abstract_mesh(_tpu_mesh()):
          traced = jax.jit(jax.value_and_grad(loss)).trace(qkv)
        assert "cpu_only" not in str(traced.jaxpr)
        value, grad = jax.core.eval_jaxpr(traced.jaxpr.jaxpr, traced.jaxpr.consts, qkv)
      finally:
        transformer_layers.ACCELERATOR_ATTENTION = "xla"
      np.testing.assert_allclose(value, cpu_value, rtol=1e-5)
      np.testing.assert_allclose(grad, cpu_grad, rtol=1e-4, atol=1e-5)


def test_under_mesh_can_be_traced_inside_another_trace():
  """`jax.set_mesh` is refused inside a trace: a step wrapped by `under_mesh` is still traceable
  by `jax.make_jaxpr` (the FLOP count of `vosjax.bench train`) and callable as usual."""
  double = sharding.under_mesh(jax.jit(lambda x: 2.0 * x), sharding.make_mesh())
  assert "mul" in str(jax.make_jaxpr(double)(1.0))
  assert float(double(jnp.float32(1.5))) == 3.0
