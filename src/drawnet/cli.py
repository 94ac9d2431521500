"""The drawnet command line: train, eval, sample."""
import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from .errors import DrawnetError


def _load_model(path):
    from .model import DRAW

    return DRAW.from_pretrained(path)


def _add_model_overrides(p):
    from .model import DrawConfig

    for f in dataclasses.fields(DrawConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, type=_parse_bool, default=None, metavar="{true,false}")
        else:
            p.add_argument(flag, type=int if f.type in (int, "int") else str, default=None)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def cmd_train(args):
    from .model import DrawConfig
    from .train import PRESET_DATASETS, TrainConfig, train

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(DrawConfig) if getattr(args, f.name) is not None}
    has_run = args.resume and (Path(args.out or f"runs/{args.preset}") / "checkpoint.safetensors").is_file()
    model_config = None if has_run and not overrides else DrawConfig.preset(args.preset, **overrides)
    tcfg = TrainConfig(
        out_dir=args.out or f"runs/{args.preset}",
        dataset=args.dataset or PRESET_DATASETS.get(args.preset, args.preset),
        data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay, min_lr=args.min_lr,
        clip=args.clip, epochs=args.epochs, max_minutes=args.max_minutes, max_steps=args.max_steps,
        checkpoint_minutes=args.checkpoint_minutes, seed=args.seed, limit=args.limit, threads=args.threads,
        progress=not args.no_progress,
    )
    train(model_config, tcfg, resume=args.resume)


def cmd_eval(args):
    from .data import TEST_SEED, binarize, load_dataset
    from .evaluate import elbo
    from .model import bits_per_dim

    model = _load_model(args.model)
    cfg = model.config
    x = load_dataset(args.dataset, args.data_dir, (cfg.channels, cfg.height, cfg.width)).test[: args.limit]
    if cfg.likelihood == "bernoulli":
        x = binarize(x, TEST_SEED)
    mean, stderr = elbo(model, x, batch_size=args.batch_size, seed=args.seed, progress=True)
    line = f"test NLL bound (ELBO) on {len(x)} images: {mean:.2f} +- {stderr:.2f} nats"
    if cfg.likelihood != "bernoulli":
        line += f" ({bits_per_dim(mean, cfg):.3f} bits/dim)"
    print(line)


def cmd_sample(args):
    from .visualize import save_grid

    model = _load_model(args.model)
    gen = model.generate(args.n, generator=torch.Generator().manual_seed(args.seed))
    path = save_grid(gen.images, args.out, nrow=args.nrow)
    print(f"wrote {args.n} samples to {path}")


def build_parser() -> argparse.ArgumentParser:
    from .model import PRESETS

    parser = argparse.ArgumentParser(prog="drawnet", description="DRAW: a recurrent attentive writer (Gregor et al. 2015)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a preset (resumable)")
    p.add_argument("--preset", default="mnist", choices=list(PRESETS))
    p.add_argument("--out", help="run directory (default runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--dataset", help="data set (default: the preset's)")
    p.add_argument("--data-dir", help="where the data set's files are or are cached")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay", type=float, default=0.98, help="learning-rate factor per epoch")
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=50.0, help="max gradient norm")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this much time")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only the first LIMIT images of each split")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test-set NLL bound in nats")
    p.add_argument("--model", required=True, help="a model directory (config.json + model.safetensors)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, help="score only the first LIMIT test images")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="write a PNG grid of generated images")
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="samples.png")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--nrow", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DrawnetError as e:
        print(f"drawnet: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
