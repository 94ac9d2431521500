"""GPU check and timings, in one run: a training step replayed as a CUDA graph (drawnet.train.CudaGraphStep)
against the same step launched op by op, and the forward passes of an IW evaluation.

    python benchmarks/bench_gpu.py [--model mnist] [--batches 128 512] [--iw-batch 20000]

First it checks that the graph computes what the eager step computes: the same loss and gradients on the same
images and noise, replayed for a second batch too (exit status 1 if not). Then it prints, for each batch size,
the milliseconds per forward-and-backward pass and images per second both ways, and their ratio; and the
trajectories per second of no-grad forward passes at the IW batch size. Needs CUDA.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from drawnet.cli import _load_model  # noqa: E402
from drawnet.train import CudaGraphStep  # noqa: E402


def batch(n, cfg, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, cfg.channels, cfg.height, cfg.width, generator=g).bernoulli(generator=g)
    return x.to(device), torch.randn(cfg.T, n, cfg.z_size, generator=g).to(device)


def eager_step(model, x, noise):
    model.zero_grad(set_to_none=True)
    out = model(x, noise=noise)
    out.loss.backward()
    return out


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(model, n, device) -> float:
    """The largest relative difference between graphed and eager loss terms and gradients, over two batches."""
    x, noise = batch(n, model.config, device, 0)
    graphed = CudaGraphStep(model, x, noise, None, None)
    worst = 0.0
    for seed in (1, 2):  # replays on batches other than the one captured
        x, noise = batch(n, model.config, device, seed)
        out = graphed(x, noise, None)
        g_graph = grads(model)
        terms = [t.clone() for t in (out.L_x, out.L_z, out.log_w)]
        ref = eager_step(model, x, noise)
        errors = [rel_err(a, b) for a, b in zip(terms, (ref.L_x, ref.L_z, ref.log_w))]
        errors += [rel_err(a, b) for a, b in zip(g_graph, grads(model))]
        worst = max(worst, *errors)
    return worst


def seconds_per_step(step, repeats):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist", help="a model directory or shipped model (default mnist)")
    p.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    p.add_argument("--iw-batch", type=int, default=20000, help="trajectories per no-grad forward pass")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: CUDA is not available")
    device = torch.device("cuda")
    model = _load_model(args.model).to(device)
    model.requires_grad_(True)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, model {args.model}, T={model.config.T}")

    worst = check(model, args.batches[0], device)
    ok = worst < 1e-4
    print(f"graph vs eager, loss terms and gradients: largest relative difference {worst:.2e} "
          f"({'ok' if ok else 'MISMATCH'})")
    if not ok:
        sys.exit(1)

    print("| batch | eager ms/step | graph ms/step | eager images/s | graph images/s | graph / eager |")
    print("|---|---|---|---|---|---|")
    for n in args.batches:
        x, noise = batch(n, model.config, device, 3)
        t_eager = seconds_per_step(lambda: eager_step(model, x, noise), max(3, args.repeats // 4))
        graphed = CudaGraphStep(model, x, noise, None, None)
        t_graph = seconds_per_step(lambda: graphed(x, noise, None), args.repeats)
        print(f"| {n} | {1e3 * t_eager:.1f} | {1e3 * t_graph:.1f} | {n / t_eager:,.0f} | {n / t_graph:,.0f} | "
              f"{t_eager / t_graph:.2f}x |", flush=True)
        del graphed

    x, noise = batch(args.iw_batch, model.config, device, 4)
    with torch.no_grad():
        t = seconds_per_step(lambda: model(x), 3)
    print(f"no-grad forward at batch {args.iw_batch}: {args.iw_batch / t:,.0f} trajectories/s")


if __name__ == "__main__":
    main()
