"""The heatmap network's 2x upsampling (`ConvTranspose2x`) is nn.ConvTranspose in another
form, and the convolution-as-matrix-product network (`conv_impl="matmul"`) is the default
one in another form: same parameters, same outputs and gradients, on random inputs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
from ensemble_jax.models.upsample import ConvTranspose2x

leaves = jax.tree_util.tree_leaves


@pytest.mark.parametrize("shape", [(3, 8, 8, 16), (2, 5, 7, 4), (1, 1, 1, 3), (2, 16, 4, 8)])
def test_conv_transpose_2x_equals_flax_conv_transpose(shape):
    features = 6
    ref = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")
    new = ConvTranspose2x(features)
    x = jax.random.normal(jax.random.key(1), shape)
    params = ref.init(jax.random.key(0), x)
    # Same parameter tree and the same initial values from the same key.
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        new.init(jax.random.key(0), x))
    for a, b in zip(leaves(params), leaves(new.init(jax.random.key(0), x))):
        np.testing.assert_array_equal(a, b)
    # Random (not initial) weights, including the bias.
    params = jax.tree_util.tree_map(
        lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
    y_ref, y_new = ref.apply(params, x), new.apply(params, x)
    assert y_new.shape == (shape[0], 2 * shape[1], 2 * shape[2], features)
    np.testing.assert_allclose(y_new, y_ref, rtol=1e-5, atol=1e-5)

    def grads(model):
        return jax.grad(lambda p, x: jnp.sum(jnp.sin(model.apply(p, x))), argnums=(0, 1))(
            params, x)
    for a, b in zip(leaves(grads(new)), leaves(grads(ref))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("output_stride", [4, 2, 1])
def test_network_keeps_flax_conv_transpose_parameter_names(output_stride):
    """Checkpoints and params.msgpack written before the change still load."""
    cfg = ModelConfig(widths=(8, 16, 32), head_width=8, output_stride=output_stride)
    x = jnp.zeros((1, 32, 32, 3), jnp.uint8)
    params = HeatmapNet(cfg, 3).init(jax.random.key(0), x)["params"]
    ups = sorted(k for k in params if k.startswith("ConvTranspose"))
    assert ups == [f"ConvTranspose_{i}" for i in range(int(np.log2(8 // output_stride)))]
    for k in ups:
        assert params[k]["kernel"].shape[:2] == (4, 4) and set(params[k]) == {"kernel", "bias"}


@pytest.mark.parametrize("shape,k,stride", [
    ((2, 8, 8, 3), 3, 1), ((2, 8, 8, 3), 3, 2), ((1, 7, 5, 4), 3, 2), ((3, 6, 6, 2), 1, 1),
    ((1, 9, 4, 2), 3, 1), ((2, 4, 4, 5), 1, 2)])
def test_conv_as_matmul_equals_lax_conv(shape, k, stride):
    from jax import lax
    from ensemble_jax.models.matmul_conv import conv_as_matmul
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (k, k, shape[-1], 6))
    want = lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = conv_as_matmul(x, w, stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output_stride", [4, 1])
def test_matmul_network_is_the_same_function_with_the_same_parameters(output_stride):
    """conv_impl='matmul' (the vmap_matmul strategy's model) = the default network: same
    parameter tree, same initial values from the same key, same outputs and gradients."""
    x = jax.random.randint(jax.random.key(3), (2, 32, 32, 3), 0, 256).astype(jnp.uint8)
    nets = {impl: HeatmapNet(ModelConfig(widths=(8, 16, 32), head_width=8,
                                         output_stride=output_stride, conv_impl=impl), 3)
            for impl in ("xla", "matmul")}
    p_xla, p_mm = (nets[i].init(jax.random.key(0), x) for i in ("xla", "matmul"))
    assert jax.tree_util.tree_structure(p_xla) == jax.tree_util.tree_structure(p_mm)
    for a, b in zip(leaves(p_xla), leaves(p_mm)):
        np.testing.assert_array_equal(a, b)
    # Initial kernels (activations of order 1), random biases (the initial ones are 0).
    params = jax.tree_util.tree_map(
        lambda p: p if p.ndim > 1 else 0.1 * jax.random.normal(jax.random.key(p.size), p.shape),
        p_xla)
    outs = {i: nets[i].apply(params, x) for i in nets}
    np.testing.assert_allclose(outs["matmul"], outs["xla"], rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(outs["xla"]).max()))
    grads = {i: jax.grad(lambda p: jnp.sum(jnp.tanh(nets[i].apply(p, x))))(params) for i in nets}
    # Float32 sums in another order: compare each gradient as a whole (relative L2 norm).
    for a, b in zip(leaves(grads["matmul"]), leaves(grads["xla"])):
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-4
