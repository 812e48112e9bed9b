"""Training throughput of the DVC loop against the limit of its own network, in one run.

For each image size: a short DVC fit (the loop's img/s per phase, from its history, first epoch of
each phase left out as warm-up), then a bare step of the same network on the same batches (forward,
the same loss, backward, Adam step; no data loader, no targets, no bookkeeping), the analytic
FLOPs per image of that step (torch's FlopCounterMode), and the fraction of the device's peak
those imply. The peak is measured here as a large fp32 matmul (CPU) or bf16 matmul (CUDA), or
given with --peak-tflops.

    python bench/throughput.py --sizes 28 64 --n 4096 --epochs 3          # CPU
    python bench/throughput.py --data mnist --sizes 28 --epochs 3          # MNIST-70k
    python bench/throughput.py --sizes 28 64 128 --n 50000 --batch-size 1024   # a GPU

Synthetic images are smooth random blobs (uint8): only the speed is meaningful on them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import harness
from harness import DATASETS
from results_md import write_block


def synthetic(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, channels, 8, 8), dtype=np.uint8)
    t = torch.from_numpy(low).float()
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear").to(torch.uint8).numpy()


def peak_tflops(device: torch.device) -> float:
    """What this device attains on a large matmul (fp32 on CPU, bf16 on CUDA), TFLOP/s."""
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    reps = 3 if device.type == "cpu" else 50
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step(model, images: np.ndarray, cfg, steps: int,
              compiled: bool = False) -> tuple[float, float, dict | None]:
    """img/s of forward + loss + backward + Adam on the fitted network, batches already on the
    device, with the loop's augmentation and views (two views: both augmented, concatenated);
    the FLOPs per image of one such step; and with `compiled`, the img/s of the same step with
    the forward and loss under torch.compile and the seconds its compilation took. Images are
    counted as the loop counts them: one per source image, whatever the views."""
    from torch.utils.flop_counter import FlopCounterMode

    from dvclust.data.augment import make_policy
    from dvclust.data.dataset import to_float
    from dvclust.runtime import autocast
    from dvclust.training.objectives import batch_loss, elbo_scale
    from dvclust.training.phases import loop_config

    device = next(model.parameters()).device
    cfg, policy, _ = loop_config(cfg, images)  # lr and views as the loop has them
    batch_size = cfg.batch_size
    net = model.vae
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    # the loop's memory format (phases.Context.channels_last), read off the second conv's weights
    # (a first conv on 1 channel looks contiguous in both formats)
    channels_last = net.encoder.features[3].weight.is_contiguous(memory_format=torch.channels_last)
    batches = []
    for s in range(0, min(len(images), batch_size * steps), batch_size):
        x = to_float(torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device))
        batches.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    scale = elbo_scale(cfg, images.shape[1:])
    aug = make_policy(policy, images.shape[2:]) if policy else None

    def forward_loss(x):
        with autocast(device, cfg.precision):
            out, mu, logvar = net(x)[:3]
        return batch_loss(cfg, "pretrain", scale, x, out, mu, logvar, None, None).loss

    def step(x, loss_of=forward_loss):
        if aug:
            x = aug(x) if cfg.views == 1 else torch.cat([aug(x), aug(x)])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        loss = loss_of(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def img_s(loss_of) -> float:
        for x in batches[:2]:  # warm-up
            step(x, loss_of)
        _sync(device)
        t, seen = time.perf_counter(), 0
        for i in range(steps):
            step(x := batches[i % len(batches)], loss_of)
            seen += len(x)
        _sync(device)
        return seen / (time.perf_counter() - t)

    with FlopCounterMode(display=False) as fc:
        step(batches[0])
    flops = fc.get_total_flops() / len(batches[0])  # per source image (both views in it)
    eager = img_s(forward_loss)
    if not compiled:
        return eager, flops, None
    loss_of = torch.compile(forward_loss)
    t = time.perf_counter()
    step(batches[0], loss_of)  # compiles
    _sync(device)
    compile_s = time.perf_counter() - t
    return eager, flops, {"compiled_img_s": img_s(loss_of), "compile_s": compile_s}


def one_size(images: np.ndarray, a, peak: float) -> dict:
    from dvclust import DVC

    model = DVC(10, **{"pretrain_epochs": a.epochs, "cluster_epochs": a.epochs, "tol": 0.0,
                       "patience": a.epochs + 1, "batch_size": a.batch_size,
                       "precision": a.precision, "num_threads": a.threads, **dict(a.set)}).fit(images)
    h = model.history_
    pre = [r["images_per_s"] for r in h if r["phase"] == "pretrain"][1:]
    clu = [r["images_per_s"] for r in h if r["phase"] == "cluster"][1:]
    tgt = [r["seconds"] for r in h if r["phase"] == "target"]
    bare, flops, compiled = bare_step(model.model_, images, model.config_, a.bare_steps, a.compile)
    loop = statistics.median(pre)
    return {"shape": list(images.shape[1:]), "n": len(images), "batch_size": a.batch_size,
            "pretrain_img_s": loop, "cluster_img_s": statistics.median(clu) if clu else None,
            "target_update_img_s": len(images) / statistics.median(tgt) if tgt else None,
            "bare_step_img_s": bare, "loop_over_bare": loop / bare,
            "gflops_per_image": flops / 1e9, "achieved_tflops": bare * flops / 1e12,
            "peak_tflops": peak, "fraction_of_peak": bare * flops / 1e12 / peak, **(compiled or {}),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "stamp": harness.stamp(model.config_.to_dict(), threads=a.threads or None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="synthetic", choices=["mnist", "synthetic"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[28, 64])
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--bare-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    type=harness.parse_setting,
                    help="config changes, e.g. base_channels=32")
    ap.add_argument("--compile", action="store_true",
                    help="also time the bare step with its forward and loss under torch.compile")
    ap.add_argument("--tag", default="", help="suffix of the RESULTS.md block")
    a = ap.parse_args()
    from dvclust import load_dataset

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = a.peak_tflops or peak_tflops(device)
    rows = []
    for size in a.sizes:
        images = (load_dataset(DATASETS["mnist"][0]).images if a.data == "mnist"
                  else synthetic(a.n, size, a.channels))
        row = {"data": a.data, **one_size(images, a, peak)}
        harness.append_row(harness.RESULTS / "throughput.jsonl", row)
        print(json.dumps({k: v for k, v in row.items() if k != "stamp"}), flush=True)
        rows.append(row)
    extra = " compiled bare step img/s (compile s) |" if a.compile else ""
    lines = ["| image | loop img/s (pretrain / cluster) | bare step img/s | loop / bare | "
             "GFLOP per image (fwd+bwd) | achieved TFLOP/s | fraction of peak |" + extra,
             "|---|---|---|---|---|---|---|" + "---|" * bool(extra)]
    for r in rows:
        c, h, w = r["shape"]
        lines.append(f"| {c}x{h}x{w} | {r['pretrain_img_s']:.0f} / {r['cluster_img_s']:.0f} | "
                     f"{r['bare_step_img_s']:.0f} | {r['loop_over_bare']:.2f} | "
                     f"{r['gflops_per_image']:.3f} | {r['achieved_tflops']:.3f} | "
                     f"{r['fraction_of_peak']:.1%} |"
                     + (f" {r['compiled_img_s']:.0f} ({r['compile_s']:.0f}) |" if extra else ""))
    write_block(f"throughput:{device.type}" + (f":{a.tag}" if a.tag else ""),
                f"## throughput: the loop against a bare step of its network ({device.type}"
                + "".join(f", {k}={v}" for k, v in a.set) + ")\n\n"
                f"Command: `{harness.command(__file__)}`  \n"
                f"{harness.stamp_line(a.threads or None)}; peak = {peak:.3f} TFLOP/s "
                f"({'given' if a.peak_tflops else 'measured: a large matmul'}).\n\n"
                + "\n".join(lines))


if __name__ == "__main__":
    main()
