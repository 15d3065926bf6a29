"""A PyTorch peer: the same heatmap network and training step, timed beside the JAX engine.

The same N members (default network, the same synthetic frames and subsets, batch, image
size and steps) are trained four ways in one process, in interleaved timing rounds:

  torch loop     one PyTorch model + Adam per member, stepped one after the other, as
                 DeepLabCut users train shuffles (one model per process, here one loop).
  torch.func     one ensemble: `torch.func.stack_module_state` + `vmap(functional_call)`,
                 the members' losses summed into one backward and one Adam over the
                 stacked parameters (Adam is elementwise, so each member's update is its
                 own).
  jax sequential the engine's reference loop of single-member jitted steps.
  jax unrolled/gG, jax vmap, jax vmap_matmul
                 the engine's member-parallel programs (see train_throughput.py).

Every variant does the same work per member step: draw a batch from the member's own
subset on device, build Gaussian targets, forward, sigmoid cross-entropy, backward, Adam
with a cosine schedule. The engine's AUM tracking is switched off here (it is extra work
the peer does not do; its cost is measured in benchmarks/kernels.py).

`TorchHeatmapNet` is the same function as `ensemble_jax.models.HeatmapNet`:
`load_flax_params` copies a member's Flax weights into it and tests/test_torch_peer.py
checks the outputs agree. PyTorch is an optional, benchmark-only dependency
(`pip install torch==2.13.0`); nothing in `ensemble_jax` imports it.

    python benchmarks/torch_peer.py                          # N = 4, 16 on this device
    python benchmarks/torch_peer.py --members 64 --steps 10  # on a GPU
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class TorchHeatmapNet(nn.Module):
    """`HeatmapNet` in PyTorch (NCHW inside). uint8 `[B, H, W, C]` -> logits `[B, K, h, w]`.

    Modules are created in the order Flax names them (Conv_0, Conv_1, ... and
    ConvTranspose_0, ...), so `load_flax_params` can map them by position.
    """

    def __init__(self, widths=(16, 32, 64), convs_per_stage=1, output_stride=4, head_width=32,
                 n_keypoints=4, in_channels=3):
        super().__init__()
        self.widths, self.convs_per_stage = tuple(widths), convs_per_stage
        self.output_stride = output_stride
        convs, ups = [], []
        c = widths[0]
        convs.append(nn.Conv2d(in_channels, c, 3, padding=1))
        for w in widths:
            convs.append(nn.Conv2d(c, w, 3, stride=2))   # padded by hand: XLA's SAME is (0, 1)
            convs += [nn.Conv2d(w, w, 3, padding=1) for _ in range(convs_per_stage)]
            c = w
        stride, skip_c = 2 ** len(widths), {1: widths[0]}
        for i, w in enumerate(widths):
            skip_c[2 ** (i + 1)] = w
        while stride > output_stride:
            ups.append(nn.ConvTranspose2d(c, head_width, 4, stride=2, padding=1))
            stride //= 2
            convs.append(nn.Conv2d(skip_c[stride], head_width, 1))
            c = head_width
        convs.append(nn.Conv2d(c, head_width, 3, padding=1))
        final = nn.Conv2d(head_width, n_keypoints, 1)
        nn.init.constant_(final.bias, -4.0)
        convs.append(final)
        self.convs, self.ups = nn.ModuleList(convs), nn.ModuleList(ups)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        if images.dtype == torch.uint8:
            x = x / 255.0
        x = (x - 0.5).permute(0, 3, 1, 2)
        convs = iter(self.convs)
        x = F.relu(next(convs)(x))
        skips, stride = {1: x}, 1
        for _ in self.widths:
            x = F.relu(next(convs)(F.pad(x, (0, 1, 0, 1))))
            for _ in range(self.convs_per_stage):
                x = F.relu(next(convs)(x))
            stride *= 2
            skips[stride] = x
        for up in self.ups:
            stride //= 2
            x = F.relu(up(x) + next(convs)(skips[stride]))
        x = F.relu(next(convs)(x))
        return next(convs)(x)


def load_flax_params(net: TorchHeatmapNet, params) -> TorchHeatmapNet:
    """Copy one member's Flax `HeatmapNet` parameters into `net` (in place)."""
    p = params["params"] if "params" in params else params
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))
    convs = [p[f"Conv_{i}"] for i in range(len(net.convs))]
    with torch.no_grad():
        for mod, w in zip(net.convs, convs):
            mod.weight.copy_(t(w["kernel"]).permute(3, 2, 0, 1))      # HWIO -> OIHW
            mod.bias.copy_(t(w["bias"]))
        for i, mod in enumerate(net.ups):
            w = p[f"ConvTranspose_{i}"]
            # lax.conv_transpose (no kernel transpose) sends x[i] W[k] to y[2i + 2 - k];
            # torch's ConvTranspose2d (padding 1) sends x[i] w[k] to y[2i + k - 1]: k -> 3 - k.
            mod.weight.copy_(t(w["kernel"]).flip(0, 1).permute(2, 3, 0, 1))  # -> [C_in, F, 4, 4]
            mod.bias.copy_(t(w["bias"]))
    return net


def gaussian_targets(kp: torch.Tensor, h: int, w: int, stride: int, sigma: float):
    """As ensemble_jax.data.targets.gaussian_targets: kp `[..., K, 2]` input pixels, NaN =
    unlabeled -> targets `[..., K, h, w]`, weights `[..., K]`."""
    labeled = ~torch.isnan(kp).any(-1)
    uv = (torch.where(labeled[..., None], kp, torch.zeros_like(kp)) - (stride - 1) / 2) / stride
    ys = torch.arange(h, dtype=torch.float32, device=kp.device)
    xs = torch.arange(w, dtype=torch.float32, device=kp.device)
    gy = torch.exp(-0.5 * ((ys - uv[..., 1:2]) / sigma) ** 2)
    gx = torch.exp(-0.5 * ((xs - uv[..., 0:1]) / sigma) ** 2)
    targets = gy[..., :, None] * gx[..., None, :]
    return targets * labeled[..., None, None], labeled.to(torch.float32)


def heatmap_loss(logits, targets, weights):
    """Sigmoid cross-entropy, mean over pixels, weighted mean over labeled (frame, keypoint);
    leading member axes are kept: logits `[..., B, K, h, w]` -> `[...]`."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((-1, -2))
    return (bce * weights).sum((-1, -2)) / weights.sum((-1, -2)).clamp(min=1.0)


def cosine_lambda(steps: int, alpha: float = 0.05):
    """optax.cosine_decay_schedule(lr, steps, alpha) as a LambdaLR factor."""
    return lambda t: (1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)) + alpha


class TorchLoop:
    """One model and optimizer per member, stepped one after the other."""

    def __init__(self, nets, subsets, images, keypoints, batch, lr, steps, sigma, stride, seed):
        self.nets, self.subsets = nets, subsets
        self.images, self.keypoints = images, keypoints
        self.batch, self.sigma, self.stride = batch, sigma, stride
        self.opts = [torch.optim.Adam(n.parameters(), lr=lr) for n in nets]
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(o, cosine_lambda(steps)) for o in self.opts]
        self.gens = [torch.Generator(device=images.device).manual_seed(seed + m)
                     for m in range(len(nets))]

    def step(self):
        losses = []
        for net, opt, sched, sub, gen in zip(self.nets, self.opts, self.scheds, self.subsets, self.gens):
            idx = sub[torch.randint(0, len(sub), (self.batch,), generator=gen, device=sub.device)]
            logits = net(self.images[idx])
            t, wts = gaussian_targets(self.keypoints[idx], logits.shape[-2], logits.shape[-1],
                                      self.stride, self.sigma)
            loss = heatmap_loss(logits, t, wts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        return torch.stack(losses)


class TorchFuncEnsemble:
    """All members as one `torch.func` ensemble: stacked parameters, vmapped forward."""

    def __init__(self, nets, subsets, images, keypoints, batch, lr, steps, sigma, stride, seed):
        from torch.func import functional_call, stack_module_state
        self.params, self.buffers = stack_module_state(nets)
        base = copy.deepcopy(nets[0]).to("meta")
        self.forward = torch.func.vmap(
            lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, 0))
        self.opt = torch.optim.Adam(self.params.values(), lr=lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine_lambda(steps))
        # Subsets padded to one [M, Nmax] table; each member draws below its own size.
        m, nmax = len(subsets), max(len(s) for s in subsets)
        self.table = torch.zeros((m, nmax), dtype=torch.long, device=images.device)
        for i, s in enumerate(subsets):
            self.table[i, :len(s)] = s
        self.sizes = torch.tensor([len(s) for s in subsets], device=images.device)
        self.gen = torch.Generator(device=images.device).manual_seed(seed)
        self.images, self.keypoints = images, keypoints
        self.batch, self.sigma, self.stride = batch, sigma, stride

    def step(self):
        m = len(self.sizes)
        u = torch.rand((m, self.batch), generator=self.gen, device=self.images.device)
        pos = (u * self.sizes[:, None]).long().clamp(max=self.table.shape[1] - 1)
        idx = torch.gather(self.table, 1, pos)                        # [M, B]
        logits = self.forward(self.params, self.buffers, self.images[idx])   # [M, B, K, h, w]
        t, wts = gaussian_targets(self.keypoints[idx], logits.shape[-2], logits.shape[-1],
                                  self.stride, self.sigma)
        losses = heatmap_loss(logits, t, wts)                        # [M]
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()   # members share no parameter: d(sum)/d(member m) = its own
        self.opt.step()
        self.sched.step()
        return losses.detach()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="4,16")
    p.add_argument("--jax-strategies", default="sequential,unrolled,vmap,vmap_matmul")
    p.add_argument("--groups", default=None,
                   help="members per JAX 'unrolled' program, comma list (default: ExecConfig's)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best counts)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--out", default="benchmarks/out/torch_peer.json")
    args = p.parse_args()
    os.environ["ENSEMBLE_JAX_CACHE"] = tempfile.mkdtemp(prefix="ensemble_jax_bench_")

    import jax
    from ensemble_jax import ExecConfig, ModelConfig, TrainConfig, io as eio, synthetic_dataset
    from ensemble_jax.subsets import random_subsets
    from ensemble_jax.training import strategies
    from ensemble_jax.training import trainer as trainer_mod

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mc = ModelConfig()
    tc = TrainConfig(batch_size=args.batch_size, steps=1000, track_aum=False)
    ec = ExecConfig()
    groups = [int(g) for g in args.groups.split(",")] if args.groups else [ec.members_per_program]
    data = synthetic_dataset(256, image_size=args.image_size, seed=0)
    stride = mc.output_stride
    images = torch.from_numpy(np.asarray(data.images)).to(device)
    keypoints = torch.from_numpy(np.asarray(data.keypoints, np.float32)).to(device)
    from ensemble_jax.training.backend import path_backend
    spp = strategies.default_steps_per_program(path_backend(), ec.chunk_size)
    rows = []
    for n in [int(x) for x in args.members.split(",")]:
        masks = random_subsets(data.n_frames, n, 0.5, seed=0, allow_duplicates=True)
        trainer = trainer_mod.EnsembleTrainer(mc, tc)
        setup = trainer.setup(data, masks.astype(np.int32), np.arange(n), np.ones(n))
        subsets = [torch.from_numpy(np.flatnonzero(masks[m])).to(device) for m in range(n)]
        runners = {}
        for name in args.jax_strategies.split(","):
            for g in (groups if name == "unrolled" else [None]):
                if (n == 1 and name != "sequential") or (g is not None and g > n):
                    continue
                col = f"jax {name}" if g is None else f"jax unrolled/g{g}"
                runners[col] = trainer.runner(setup, name, g or ec.members_per_program)
        # Each member of both torch variants starts from its JAX member's initial weights.
        inits = [load_flax_params(TorchHeatmapNet(mc.widths, mc.convs_per_stage, stride,
                                                  mc.head_width, data.n_keypoints),
                                  jax.tree_util.tree_map(lambda x: x[m], setup.states.params)).to(device)
                 for m in range(n)]
        common = (subsets, images, keypoints, args.batch_size, tc.learning_rate, tc.steps,
                  tc.sigma, stride, tc.seed)
        torch_runs = {"torch loop": TorchLoop([copy.deepcopy(x) for x in inits], *common),
                      "torch.func": TorchFuncEnsemble([copy.deepcopy(x) for x in inits], *common)}
        row = {"members": n}
        for col, r in runners.items():       # compile + one untimed call of the timed length
            t0 = time.perf_counter()
            jax.block_until_ready(r(setup.states, setup.inputs, setup.images, setup.keypoints, 0,
                                    args.steps)[0])
            row[col] = {"warmup_s": time.perf_counter() - t0, "step_s_rounds": []}
        for col, r in torch_runs.items():
            t0 = time.perf_counter()
            r.step()
            sync(device)
            row[col] = {"warmup_s": time.perf_counter() - t0, "step_s_rounds": []}
        for col in row:
            if col != "members":
                print(f"  N={n:3d} {col:>20}: warm-up {row[col]['warmup_s']:.1f} s", flush=True)
        for _ in range(args.rounds):
            for col, r in runners.items():
                t0 = time.perf_counter()
                jax.block_until_ready(r(setup.states, setup.inputs, setup.images, setup.keypoints,
                                        spp, args.steps)[0])
                row[col]["step_s_rounds"].append((time.perf_counter() - t0) / args.steps)
            for col, r in torch_runs.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    losses = r.step()
                sync(device)
                assert torch.isfinite(losses).all(), f"{col}: loss not finite"
                row[col]["step_s_rounds"].append((time.perf_counter() - t0) / args.steps)
        cols = [c for c in row if c != "members"]
        for col in cols:
            row[col]["images_per_s"] = n * args.batch_size / min(row[col]["step_s_rounds"])
            print(f"  N={n:3d} {col:>20}: {row[col]['images_per_s']:8.1f} img/s", flush=True)
        jax_best = max((c for c in cols if c.startswith("jax")), key=lambda c: row[c]["images_per_s"])
        ips = lambda c: row[c]["images_per_s"]
        row["ratios"] = {"jax_best": jax_best,
                         "jax_best_vs_torch_loop": ips(jax_best) / ips("torch loop"),
                         "jax_best_vs_torch_func": ips(jax_best) / ips("torch.func"),
                         "jax_best_vs_jax_sequential": ips(jax_best) / ips("jax sequential"),
                         "torch_func_vs_torch_loop": ips("torch.func") / ips("torch loop")}
        rows.append(row)

    print()
    print(f"devices: jax {jax.devices()[0].device_kind} ({jax.default_backend()}), torch {device}"
          f" ({torch.get_num_threads()} threads); jax {jax.__version__}, torch {torch.__version__};"
          f" image {args.image_size}, batch {args.batch_size}, best of {args.rounds} interleaved"
          f" rounds of {args.steps} steps; AUM tracking off")
    cols = list(dict.fromkeys(c for r in rows for c in r if c not in ("members", "ratios")))
    print(f"{'N':>4} " + " ".join(f"{c:>18}" for c in cols) +
          f" {'jax best':>16} {'best/t.loop':>11} {'best/t.func':>11} {'t.func/t.loop':>13}")
    for r in rows:
        q = r["ratios"]
        print(f"{r['members']:4d} " + " ".join(
            f"{r[c]['images_per_s']:18.1f}" if c in r else f"{'-':>18}" for c in cols) +
            f" {q['jax_best']:>16} {q['jax_best_vs_torch_loop']:11.2f}"
            f" {q['jax_best_vs_torch_func']:11.2f} {q['torch_func_vs_torch_loop']:13.2f}")
    eio.write_json(args.out, {
        "benchmark": "torch_peer", "date": time.strftime("%Y-%m-%d"),
        "jax_device": jax.devices()[0].device_kind, "jax_backend": jax.default_backend(),
        "torch_device": str(device), "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
        "rounds": args.rounds, "track_aum": False, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
