"""benchmarks/torch_peer.py trains the same network as the engine: outputs, targets, loss
and gradients of its PyTorch twin match the Flax model given the same weights.

PyTorch is an optional, benchmark-only dependency: without it these tests skip.
"""
import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed (benchmark-only: "
                                             "pip install torch==2.13.0)")

from ensemble_jax import ModelConfig  # noqa: E402
from ensemble_jax.data.targets import gaussian_targets  # noqa: E402
from ensemble_jax.models.heatmap_net import HeatmapNet  # noqa: E402

spec = importlib.util.spec_from_file_location(
    "torch_peer", Path(__file__).resolve().parents[1] / "benchmarks" / "torch_peer.py")
peer = importlib.util.module_from_spec(spec)
sys.modules["torch_peer"] = peer
spec.loader.exec_module(peer)


def _pair(cfg: ModelConfig, k: int, size: int, seed: int):
    model = HeatmapNet(cfg, k)
    params = model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3), jnp.uint8))
    net = peer.TorchHeatmapNet(cfg.widths, cfg.convs_per_stage, cfg.output_stride,
                               cfg.head_width, k)
    return model, params, peer.load_flax_params(net, params)


@pytest.mark.parametrize("cfg,k,size", [
    (ModelConfig(), 4, 64),
    (ModelConfig(widths=(8, 16), convs_per_stage=2, output_stride=1, head_width=8), 3, 32),
    (ModelConfig(widths=(8, 8, 16, 16), output_stride=2, head_width=16), 2, 48),
])
def test_same_outputs_as_flax(cfg, k, size):
    model, params, net = _pair(cfg, k, size, seed=1)
    # Random weights, not the initial ones: the -4 bias and zero biases hide mistakes.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [0.3 * jax.random.normal(kk, x.shape) for kk, x in zip(keys, leaves)])
    net = peer.load_flax_params(net, params)
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    want = np.asarray(model.apply(params, images))
    got = net(torch.from_numpy(images)).detach().numpy()
    assert got.shape == want.shape == (3, k, size // cfg.output_stride, size // cfg.output_stride)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_same_targets_loss_and_gradients():
    cfg, k, size, stride, sigma = ModelConfig(), 4, 64, 4, 1.0
    model, params, net = _pair(cfg, k, size, seed=3)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    kp = rng.uniform(0, size, (5, k, 2)).astype(np.float32)
    kp[1, 2] = np.nan
    t_jax, w_jax = gaussian_targets(jnp.asarray(kp), (16, 16), stride, sigma)
    t_pt, w_pt = peer.gaussian_targets(torch.from_numpy(kp), 16, 16, stride, sigma)
    np.testing.assert_allclose(t_pt.numpy(), np.asarray(t_jax), atol=1e-6)
    np.testing.assert_array_equal(w_pt.numpy(), np.asarray(w_jax))

    def loss_jax(p):   # the engine's loss (training/step.py)
        logits = model.apply(p, images)
        bce = optax.sigmoid_binary_cross_entropy(logits, t_jax).mean((-1, -2))
        return (bce * w_jax).sum() / jnp.maximum(w_jax.sum(), 1.0)

    want, grads = jax.value_and_grad(loss_jax)(params)
    loss = peer.heatmap_loss(net(torch.from_numpy(images)), t_pt, w_pt)
    loss.backward()
    assert abs(loss.item() - float(want)) < 1e-5 * abs(float(want))
    g = grads["params"]
    np.testing.assert_allclose(net.convs[0].weight.grad.permute(2, 3, 1, 0).numpy(),
                               np.asarray(g["Conv_0"]["kernel"]), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(net.ups[0].weight.grad.permute(2, 3, 0, 1).flip(0, 1).numpy(),
                               np.asarray(g["ConvTranspose_0"]["kernel"]), rtol=1e-3, atol=1e-6)


def test_torch_func_ensemble_matches_the_loop_member_by_member():
    """Summed losses + one Adam over stacked parameters = each member's own Adam step."""
    cfg, k, size = ModelConfig(widths=(8, 16), head_width=8, output_stride=2), 2, 32
    torch.manual_seed(0)
    nets = [peer.TorchHeatmapNet(cfg.widths, 1, 2, 8, k) for _ in range(3)]
    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.integers(0, 256, (10, size, size, 3), dtype=np.uint8))
    kp = torch.from_numpy(rng.uniform(0, size, (10, k, 2)).astype(np.float32))
    # Each member's subset is one frame repeated: both variants see the same batch.
    subsets = [torch.tensor([m]) for m in range(3)]
    args = (subsets, images, kp, 4, 1e-2, 10, 1.0, 2, 0)
    import copy
    loop = peer.TorchLoop([copy.deepcopy(n) for n in nets], *args)
    ens = peer.TorchFuncEnsemble([copy.deepcopy(n) for n in nets], *args)
    for _ in range(3):
        l_loop, l_ens = loop.step(), ens.step()
        np.testing.assert_allclose(l_ens.numpy(), l_loop.numpy(), rtol=1e-5)
    for m, net in enumerate(loop.nets):
        for name, p in net.named_parameters():
            np.testing.assert_allclose(ens.params[name][m].detach().numpy(),
                                       p.detach().numpy(), rtol=1e-4, atol=1e-6)
