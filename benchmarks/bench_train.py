"""Training speed of drawnet against a plain per-step DRAW, in one run on one machine.

    python benchmarks/bench_train.py                     # mnist preset (28x28, T=64, 256 units, z=100, 2x2/5x5)
    python benchmarks/bench_train.py --preset mnist-noattn
    python benchmarks/bench_train.py --quick             # a few iterations: a smoke test, not a measurement

Prints training images/s (forward + backward + Adam step on random binary images) for the reference
(benchmarks/reference_draw.py: nn.LSTMCell, separate heads, per-step filterbank) at batch 64 and for
drawnet at several batch sizes, their ratio at batch 64, the time drawnet takes to sample 64 images, and
drawnet's arithmetic rate as a fraction of this machine's float32 matmul rate, measured in the same run.
It also trains drawnet with its matrix products in bfloat16 (forward(..., matmul_dtype=torch.bfloat16), the
`drawnet train --matmul-dtype bfloat16`), which pays on CPUs with bfloat16 instructions (AVX512-BF16, AMX).

With --procs 2 (the default) it then trains drawnet as `torchrun --nproc_per_node 2 ... --threads 1` does:
two processes of one thread each, each with half of every batch and gradients averaged over both
(drawnet.distributed). On a 2-core machine that is drawnet's fastest way to train, because the per-operation
overhead then runs on both cores. Its rate is compared with the larger of the two matmul rates measured: one
process with all threads, and the processes' rates summed while they all multiply at once.

Timings are medians over iterations; the reference and drawnet iterations at batch 64 alternate, so a
change in the machine's load during the run affects both alike. Other processes on the machine slow
everything down: quiet the machine for numbers worth quoting.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_draw import ReferenceDRAW  # noqa: E402

from drawnet.distributed import joined_world  # noqa: E402
from drawnet.model import DRAW, DrawConfig  # noqa: E402
from drawnet.train import keep_freed_memory  # noqa: E402


def forward_macs_per_step(cfg: DrawConfig) -> int:
    """Multiply-adds of every matrix product in one glimpse, for one image (eq. 1-8, 27, 29)."""
    C, H, W, N_r, N_w = cfg.channels, cfg.height, cfg.width, cfg.read_n, cfg.write_n
    E, D, Z = cfg.enc_size, cfg.dec_size, cfg.z_size
    read_size = 2 * C * (N_r * N_r if cfg.read_attention else H * W)
    write_size = C * (N_w * N_w if cfg.write_attention else H * W)
    n_out = write_size + 5 * cfg.write_attention + 5 * cfg.read_attention
    macs = (read_size + D + E) * 4 * E  # encoder LSTM
    macs += E * 2 * Z  # mu and log sigma
    macs += (Z + D) * 4 * D  # decoder LSTM
    macs += D * n_out  # write patch and both windows
    if cfg.read_attention:  # Fy [x, x_hat] (N x H x 2CW), then times Fx^T (2C N x W x N)
        macs += N_r * H * 2 * C * W + 2 * C * N_r * W * N_r
    if cfg.write_attention:  # w Fx (C N x N x W), then Fy^T times that (H x N x CW)
        macs += C * N_w * N_w * W + H * N_w * C * W
    return macs


def train_flops_per_image(cfg: DrawConfig) -> float:
    """FLOPs of one training image: forward MACs x T, backward about twice the forward, 2 FLOPs per MAC."""
    return 2.0 * 3 * forward_macs_per_step(cfg) * cfg.T


def matmul_gflops(quick: bool, dtype=torch.float32) -> dict:
    """Best GFLOP/s of a few large products and of the products DRAW's training runs, in dtype."""
    shapes = [(2048, 2048, 2048), (1024, 1024, 1024), (4096, 256, 2083), (4096, 520, 1024), (256, 4096, 1024)]
    if quick:
        shapes = [(512, 512, 512)]
    rates = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b
        reps = max(2, int((1e8 if quick else 3e9) / (2 * m * k * n)))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            times.append((time.perf_counter() - start) / reps)
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n / min(times) / 1e9
    return rates


class Trainer:
    """One model with its Adam optimizer and a fixed batch of random binary images."""

    def __init__(self, name, model, batch, cfg, seed=0, matmul_dtype=None, optimized=None):
        """optimized: the parameters' owner when model wraps them (DistributedDataParallel)."""
        self.name, self.model, self.batch = name, model, batch
        self.kwargs = {"matmul_dtype": matmul_dtype} if matmul_dtype else {}
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.bernoulli(torch.rand(batch, cfg.channels, cfg.height, cfg.width, generator=gen))
        self.opt = torch.optim.Adam((optimized or model).parameters(), lr=1e-4)
        self.times = []

    def step(self, record=True):
        start = time.perf_counter()
        out = self.model(self.x, **self.kwargs)
        loss = out if torch.is_tensor(out) else out.loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if record:
            self.times.append(time.perf_counter() - start)

    def images_per_s(self) -> float:
        return self.batch / statistics.median(self.times)


def _data_parallel_worker(rank, procs, rendezvous, cfg, batches, iters, quick, results):
    """One of `procs` single-thread training processes, set up as torchrun sets up `drawnet train`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(procs))
    torch.set_num_threads(1)
    keep_freed_memory()  # as drawnet train does
    with joined_world("cpu", init_method=f"file://{rendezvous}") as world:  # a CPU benchmark, also where CUDA is available
        dist.barrier()
        peak = torch.tensor(max(matmul_gflops(quick).values()))
        dist.all_reduce(peak)  # every process multiplied at the same time: the machine's rate is the sum
        rows = {"matmul": peak.item()}
        for batch in batches:
            for dtype in (None, torch.bfloat16):
                torch.manual_seed(0)
                model = DRAW(cfg)
                trainer = Trainer("", world.wrap(model), batch // procs, cfg, seed=rank, matmul_dtype=dtype,
                                  optimized=model)
                trainer.step(record=False)
                for _ in range(iters):
                    trainer.step()
                rows[batch, dtype] = trainer.batch * procs / statistics.median(trainer.times)
        if world.is_main:
            results.put(rows)


def data_parallel_rates(procs, cfg, batches, iters, quick) -> dict:
    """Training images/s of `procs` processes with one thread each at each global batch, with float32
    (None) and bfloat16 products, and their summed float32 matmul rate ("matmul")."""
    results = mp.get_context("spawn").SimpleQueue()
    # The processes meet through a file: a free port looked up beforehand could be taken before they bind it.
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_data_parallel_worker,
                           args=(procs, f"{tmp}/rendezvous", cfg, batches, iters, quick, results),
                           nprocs=procs, start_method="spawn")
        return results.get()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mnist", choices=["mnist", "mnist-noattn"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="a few iterations only (smoke test)")
    p.add_argument("--batches", default="64,128,256,512", help="drawnet batch sizes to try")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per model (default 8, quick 2)")
    p.add_argument("--procs", type=int, default=2,
                   help="also train with this many single-thread processes, as torchrun does (0: skip)")
    p.add_argument("--T", type=int, default=None, help="override the number of glimpses")
    p.add_argument("--units", type=int, default=None, help="override enc_size and dec_size")
    p.add_argument("--z-size", type=int, default=None, help="override z_size")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as drawnet train does, for both models
    overrides = {k: v for k, v in (("T", args.T), ("enc_size", args.units), ("dec_size", args.units),
                                   ("z_size", args.z_size)) if v is not None}
    cfg = DrawConfig.preset(args.preset, **overrides)
    iters = args.iters or (2 if args.quick else 8)
    batches = [int(b) for b in args.batches.split(",")]
    if args.quick:
        batches = batches[:2]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, malloc keeps freed memory: {kept}")
    rates = matmul_gflops(args.quick)
    peak = max(rates.values())
    print("float32 matmul GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) + f"; best {peak:.1f}")
    peak_bf16 = max(matmul_gflops(args.quick, torch.bfloat16).values())
    print(f"bfloat16 matmul GFLOP/s: best {peak_bf16:.1f}")
    flops = train_flops_per_image(cfg)
    print(f"model: {args.preset} {overrides or ''} T={cfg.T} units={cfg.enc_size} z={cfg.z_size} "
          f"read {cfg.read_n if cfg.read_attention else '-'} write {cfg.write_n if cfg.write_attention else '-'}; "
          f"{flops / 1e6:.1f} MFLOP per training image (forward MACs per step x T x 3 x 2)")

    # Reference and drawnet (float32 and bfloat16 products) at batch 64, alternating iterations.
    torch.manual_seed(0)
    drawnet64 = Trainer("drawnet", DRAW(cfg), 64, cfg)
    reference = Trainer("reference", ReferenceDRAW.from_drawnet(drawnet64.model), 64, cfg)
    bf16_64 = Trainer("drawnet bf16", DRAW(cfg), 64, cfg, matmul_dtype=torch.bfloat16)
    for t in (reference, drawnet64, bf16_64):
        t.step(record=False)
    for _ in range(iters):
        for t in (reference, drawnet64, bf16_64):
            t.step()
    ref_rate = reference.images_per_s()
    print(f"reference       batch {64:4d}: {ref_rate:7.1f} images/s")
    results, bf16_results = {64: drawnet64.images_per_s()}, {64: bf16_64.images_per_s()}
    print(f"drawnet         batch {64:4d}: {results[64]:7.1f} images/s")
    print(f"drawnet bf16    batch {64:4d}: {bf16_results[64]:7.1f} images/s")
    for batch in batches:
        if batch == 64:
            continue
        for name, dtype, rates in (("drawnet", None, results), ("drawnet bf16", torch.bfloat16, bf16_results)):
            trainer = Trainer(name, DRAW(cfg), batch, cfg, matmul_dtype=dtype)
            trainer.step(record=False)
            for _ in range(iters):
                trainer.step()
            rates[batch] = trainer.images_per_s()
            print(f"{name:15s} batch {batch:4d}: {rates[batch]:7.1f} images/s")
    print(f"ratio drawnet / reference at batch 64: {results[64] / ref_rate:.2f}x float32, "
          f"{bf16_results[64] / ref_rate:.2f}x bfloat16 products")
    best = max(results, key=results.get)
    gflops = results[best] * flops / 1e9
    print(f"best drawnet batch {best}: {results[best]:.1f} images/s = {gflops:.1f} GFLOP/s "
          f"= {100 * gflops / peak:.0f}% of the measured float32 matmul rate ({peak:.1f} GFLOP/s)")
    best_bf16 = max(bf16_results, key=bf16_results.get)
    gflops_bf16 = bf16_results[best_bf16] * flops / 1e9
    print(f"best drawnet bf16 batch {best_bf16}: {bf16_results[best_bf16]:.1f} images/s "
          f"({bf16_results[best_bf16] / results[best]:.2f}x float32 at its best batch) = {gflops_bf16:.1f} GFLOP/s "
          f"= {100 * gflops_bf16 / peak_bf16:.0f}% of the measured bfloat16 matmul rate ({peak_bf16:.1f} GFLOP/s)")

    if args.procs > 1:
        dp_batches = [b for b in batches if b % args.procs == 0 and b > 64]
        dp = data_parallel_rates(args.procs, cfg, dp_batches, iters, args.quick)
        print(f"{args.procs} processes x 1 thread, float32 matmul GFLOP/s summed: {dp['matmul']:.1f}")
        for batch in dp_batches:
            print(f"drawnet x{args.procs} procs batch {batch:4d}: {dp[batch, None]:7.1f} images/s, "
                  f"bf16 {dp[batch, torch.bfloat16]:7.1f} images/s")
        best_dp = max(dp_batches, key=lambda b: dp[b, None])
        gflops_dp, peak_dp = dp[best_dp, None] * flops / 1e9, max(peak, dp["matmul"])
        print(f"best drawnet x{args.procs} procs batch {best_dp}: {dp[best_dp, None]:.1f} images/s = "
              f"{gflops_dp:.1f} GFLOP/s = {100 * gflops_dp / peak_dp:.0f}% of the larger measured float32 matmul "
              f"rate ({peak_dp:.1f} GFLOP/s)")

    model = drawnet64.model
    model.generate(64)
    sample_times = []
    for _ in range(2 if args.quick else 5):
        start = time.perf_counter()
        model.generate(64)
        sample_times.append(time.perf_counter() - start)
    print(f"sampling 64 images, T={cfg.T}: {statistics.median(sample_times):.3f} s")


if __name__ == "__main__":
    main()
