"""Does training with bfloat16 matrix products keep the bound? One run on one machine.

    python benchmarks/bf16_bound.py                      # from the shipped mnist model, 300 steps per run
    python benchmarks/bf16_bound.py --steps 100 --valid 2000

From the same starting weights, trains three runs of the same number of steps: float32 products, bfloat16
products with the same batches and posterior noise (same seed), and float32 again with another seed, whose
distance from the first is how far two equally good runs drift apart anyway. Prints each run's validation
bound (float32 evaluation, fixed noise), the differences, and the training speed of each. Separately, it
evaluates the starting model both ways with the same noise: the bound's change from the products alone.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from drawnet.cli import _model_dir
from drawnet.data import VALID_SEED, binarize, load_dataset
from drawnet.evaluate import elbo
from drawnet.model import DRAW
from drawnet.train import TrainConfig, train


@torch.no_grad()
def bound_with_noise(model, x, noise, matmul_dtype, batch_size=500):
    """Mean L_x + L_z over x with the posterior noise given, [T, len(x), z_size]."""
    total = 0.0
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size], noise=noise[:, i : i + batch_size], matmul_dtype=matmul_dtype)
        total += (out.L_x + out.L_z).sum().item()
    return total / len(x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist", help="shipped model name or model directory to start from")
    p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate of the runs (default 2e-4)")
    p.add_argument("--valid", type=int, default=10000, help="validation images to score (default all 10,000)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    source = _model_dir(args.model)
    start = DRAW.from_pretrained(source)
    valid_x = binarize(load_dataset("mnist").valid[: args.valid], VALID_SEED)

    cfg = start.config
    noise = torch.randn(cfg.T, len(valid_x), cfg.z_size, generator=torch.Generator().manual_seed(VALID_SEED))
    bounds = [bound_with_noise(start, valid_x, noise, dtype) for dtype in (None, torch.bfloat16)]
    print(f"{args.model}, {len(valid_x)} validation images, same noise: bound {bounds[0]:.3f} nats with float32 "
          f"products, {bounds[1]:.3f} with bfloat16 ({bounds[1] - bounds[0]:+.3f})")

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, seed, dtype in (("float32", 0, "float32"), ("bfloat16", 0, "bfloat16"), ("float32 seed 1", 1, "float32")):
            tcfg = TrainConfig(out_dir=str(Path(tmp) / name.replace(" ", "-")), dataset="mnist", lr=args.lr,
                               max_steps=args.steps, seed=seed, init_from=str(source), matmul_dtype=dtype,
                               checkpoint_minutes=1e9, progress=False)
            began = time.perf_counter()
            model = train(cfg, tcfg, log=lambda *_: None)
            seconds = time.perf_counter() - began
            runs[name] = elbo(model, valid_x, seed=VALID_SEED)[0]
            print(f"{name:15s}: {args.steps} steps in {seconds:6.1f} s, validation bound {runs[name]:.3f} nats")
    print(f"bfloat16 - float32 (same seed): {runs['bfloat16'] - runs['float32']:+.3f} nats; "
          f"float32 seed 1 - float32 seed 0: {runs['float32 seed 1'] - runs['float32']:+.3f} nats")


if __name__ == "__main__":
    main()
