"""The ResNet encoder option: a torchvision ResNet state dict converted on load gives the
same encoder outputs as PyTorch (a small ResNet built here in plain torch with
torchvision's module names), every member starts from the loaded encoder, and bad files
are refused with a clear message."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
from ensemble_jax.models.pretrained import WeightsError, merge_encoder
from ensemble_jax.models.resnet import ResNetEncoder


def torch_resnet(width: int, blocks=(2, 2, 2, 2)):
    """torchvision.models.resnet18's layout (BasicBlock, downsample.0/1), in plain torch."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + idt)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = width
            for i, n in enumerate(blocks):
                cout = width * 2 ** i
                layer = [BasicBlock(cin if b == 0 else cout, cout, (1 if i == 0 else 2)
                                    if b == 0 else 1) for b in range(n)]
                setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
                cin = cout
            self.fc = nn.Linear(cin, 10)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            outs = []
            for i in range(len(blocks)):
                x = getattr(self, f"layer{i + 1}")(x)
                outs.append(x)
            return outs

    torch.manual_seed(0)
    net = ResNet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():   # non-trivial BatchNorm statistics and affine parameters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return torch, net.eval()


@pytest.mark.parametrize("impl", ["xla", "matmul"])
def test_torchvision_state_dict_gives_pytorch_outputs(tmp_path, impl):
    torch, net = torch_resnet(width=8)
    path = tmp_path / "resnet18_small.pth"
    torch.save(net.state_dict(), path)
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 96, 3)).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        ref = net(torch.from_numpy(((x - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)))
    mc = ModelConfig(encoder="resnet", resnet_width=8, init_weights=str(path), conv_impl=impl)
    model = HeatmapNet(mc, 2)
    params = merge_encoder(model.init(jax.random.key(0), jnp.asarray(x)), mc)
    enc = ResNetEncoder(18, 8, impl)
    feats = enc.apply({"params": params["params"]["encoder"]}, jnp.asarray(x))
    for stride, r in zip((4, 8, 16, 32), ref):
        got = np.asarray(feats[stride]).transpose(0, 3, 1, 2)
        assert got.shape == tuple(r.shape)
        np.testing.assert_allclose(got, r.numpy(), rtol=1e-4, atol=1e-4)


def test_members_share_the_loaded_encoder_and_keep_their_own_heads(tmp_path):
    from ensemble_jax import EnsembleTrainer, ExecConfig, TrainConfig, synthetic_dataset
    torch, net = torch_resnet(width=4)
    path = tmp_path / "enc.pt"
    torch.save({"state_dict": net.state_dict()}, path)
    mc = ModelConfig(encoder="resnet", resnet_width=4, head_width=8, init_weights=str(path))
    data = synthetic_dataset(12, image_size=32, seed=0)
    trainer = EnsembleTrainer(mc, TrainConfig(steps=1, batch_size=2, learning_rate=1e-9,
                                              schedule="constant"),
                              ExecConfig(chunk_size=1, strategy="sequential"))
    masks = np.ones((2, data.n_frames), bool)
    s = trainer.setup(data, masks.astype(np.int32), np.arange(2), np.ones(2, np.float32))
    p = s.states.params["params"]
    conv1 = np.asarray(net.state_dict()["conv1.weight"]).transpose(2, 3, 1, 0)
    for m in range(2):
        np.testing.assert_array_equal(np.asarray(p["encoder"]["conv1"]["kernel"][m]), conv1)
    head = np.asarray(p["Conv_0"]["kernel"])
    assert not np.array_equal(head[0], head[1])     # heads: each member's own init


def test_bad_weights_files_are_refused(tmp_path):
    mc = ModelConfig(encoder="resnet", resnet_width=8, init_weights=str(tmp_path / "no.pt"))
    params = HeatmapNet(mc, 2).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(WeightsError, match="no such file"):
        merge_encoder(params, mc)
    wrong = tmp_path / "w.txt"
    wrong.write_text("x")
    with pytest.raises(WeightsError, match="unknown file type"):
        merge_encoder(params, ModelConfig(encoder="resnet", resnet_width=8,
                                          init_weights=str(wrong)))
    torch, net = torch_resnet(width=4)      # another width: shapes do not match
    other = tmp_path / "w4.pth"
    torch.save(net.state_dict(), other)
    with pytest.raises(WeightsError, match="shape"):
        merge_encoder(params, ModelConfig(encoder="resnet", resnet_width=8,
                                          init_weights=str(other)))


def test_matmul_form_is_the_same_function():
    """'vmap_matmul' trains the ResNet with its convolutions as matrix products: same
    parameters, same outputs (up to float rounding), input size divisible by 32."""
    x = jnp.asarray(np.random.default_rng(1).integers(0, 255, (2, 64, 32, 1)), jnp.uint8)
    mc = ModelConfig(encoder="resnet", resnet_width=4, head_width=8)
    assert mc.input_multiple == 32
    params = HeatmapNet(mc, 3).init(jax.random.key(0), x)
    a = HeatmapNet(mc, 3).apply(params, x)
    b = HeatmapNet(ModelConfig(encoder="resnet", resnet_width=4, head_width=8,
                               conv_impl="matmul"), 3).apply(params, x)
    assert a.shape == (2, 3, 16, 8)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="resnet_depth"):
        ModelConfig(encoder="resnet", resnet_depth=50)
