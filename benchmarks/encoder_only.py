"""Is the inference network the weak part? Trains only it, with the generative model frozen. One run.

    python benchmarks/encoder_only.py                    # from the shipped mnist model, 8 epochs at lr 3e-4
    python benchmarks/encoder_only.py --epochs 1 --train 2000 --valid 1000

The ELBO is log p(x) minus KL(q(z|x) || p(z|x)); with the decoder fixed, training the encoder LSTM, the q head
and the read-window rows of dec_out can only change the KL term. If the encoder were short of training, the
validation bound would fall. Prints, per epoch, the mean training loss of the steps (dynamic binarisation, as in
training) and the validation bound of a weight average (decay 0.999, as in training) with fixed noise.
"""
import argparse
import time

import torch

from drawnet.cli import _load_model
from drawnet.data import VALID_SEED, binarize, load_dataset
from drawnet.evaluate import elbo
from drawnet.model import DRAW
from drawnet.train import WeightAverage


def freeze_generative_model(model: DRAW):
    """Stop the decoder from learning: the decoder LSTM, and the rows of dec_out that emit the write patch and
    the write window. Returns the trainable parameters and the mask for dec_out's rows (1 on the read window's),
    which the caller applies to dec_out's gradients, because one layer emits both."""
    model.decoder.requires_grad_(False)
    read_rows = torch.zeros(model.dec_out.out_features, 1)
    read_rows[model.write_size + model.n_write_params :] = 1
    return [p for p in model.parameters() if p.requires_grad], read_rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist", help="shipped model name or model directory to start from")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--clip", type=float, default=50.0, help="max gradient norm (default 50, as in training)")
    p.add_argument("--train", type=int, default=50000, help="training images to use (default all 50,000)")
    p.add_argument("--valid", type=int, default=10000, help="validation images to score (default all 10,000)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = _load_model(args.model)
    splits = load_dataset("mnist")
    train_x, valid_x = splits.train[: args.train], binarize(splits.valid[: args.valid], VALID_SEED)
    params, read_rows = freeze_generative_model(model)
    opt = torch.optim.Adam(params, lr=args.lr)
    average = WeightAverage(model, 0.999)
    print(f"{args.model}: validation bound {elbo(model, valid_x, seed=VALID_SEED)[0]:.4f} nats before", flush=True)
    steps = len(train_x) // args.batch_size
    for epoch in range(1, args.epochs + 1):
        start, total = time.time(), 0.0
        perm = torch.randperm(len(train_x))
        for i in range(steps):
            x = torch.bernoulli(train_x[perm[i * args.batch_size : (i + 1) * args.batch_size]])
            loss = model(x, matmul_dtype=torch.bfloat16).loss
            opt.zero_grad()
            loss.backward()
            model.dec_out.weight.grad.mul_(read_rows)
            model.dec_out.bias.grad.mul_(read_rows[:, 0])
            torch.nn.utils.clip_grad_norm_(params, args.clip)
            opt.step()
            average.update(model)
            total += loss.item()
        bound = elbo(average.model, valid_x, seed=VALID_SEED)[0]
        print(f"epoch {epoch}: training loss {total / steps:.4f}, validation bound {bound:.4f} nats "
              f"({(time.time() - start) / 60:.1f} min)", flush=True)
    return model


if __name__ == "__main__":
    main()
