"""The drawnet command line: train, eval, sample."""
import argparse
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path

import torch

from .errors import DrawnetError


PRETRAINED = Path(__file__).parent / "pretrained"  # the models shipped with the package
SHIPPED = sorted(p.name for p in PRETRAINED.iterdir() if (p / "config.json").is_file())
DEVICE_HELP = "cpu or cuda (default: cuda when a GPU is available, else cpu)"
MODEL_HELP = f"a model directory (config.json + model.safetensors) or a shipped model: {', '.join(SHIPPED)}"


def _model_dir(name_or_path) -> Path:
    """A model directory, or the directory of a shipped model (SHIPPED)."""
    path = Path(name_or_path)
    if not path.exists() and (PRETRAINED / name_or_path).is_dir():
        path = PRETRAINED / name_or_path
    return path


def _load_model(name_or_path):
    from .model import DRAW

    return DRAW.from_pretrained(_model_dir(name_or_path))


def _condition(model, n: int, label=None, captions=None):
    """y for n images of a model: the labels (default: the digits 0, 1, ..., 9, 0, ... in turn) or the word
    ids of the captions, taken in turn; None for an unconditional model."""
    if model.condition is None:
        if label is not None or captions:
            raise DrawnetError("this model is unconditional: it takes no --label or --caption")
        return None
    if model.condition == "label":
        if captions:
            raise DrawnetError("this model draws a chosen digit: give --label, not --caption")
        if label is not None and not 0 <= label < model.config.num_classes:
            raise DrawnetError(f"--label must be in 0..{model.config.num_classes - 1}, got {label}")
        return torch.full((n,), label) if label is not None else torch.arange(n) % model.config.num_classes
    from .captions import EXAMPLES, encode_captions, parse_caption

    if not captions:
        raise DrawnetError(f"this model draws from a caption: give --caption, {EXAMPLES}")
    for caption in captions:
        parse_caption(caption)
    return encode_captions([captions[i % len(captions)] for i in range(n)])


def _add_condition_flags(p):
    p.add_argument("--label", type=int, help="label models: the digit to draw (default: 0..9 in turn)")
    p.add_argument("--caption", action="append",
                   help="caption models: what to draw, e.g. 'the digit 7 is at the top of the digit 5' "
                        "(repeat for several captions)")


def _add_model_overrides(p):
    from .model import DrawConfig

    for f in dataclasses.fields(DrawConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, type=_parse_bool, default=None, metavar="{true,false}")
        else:
            p.add_argument(flag, type=int if f.type in (int, "int") else str, default=None)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _resumed_settings(saved: dict) -> dict:
    """A resumed run's saved settings less max_minutes: that budget counts from the start of one invocation, so
    a run it stopped would otherwise stop again after as long on every resume, short of its --epochs."""
    return {k: v for k, v in saved.items() if k != "max_minutes"}


TRAIN_FLAGS = ["batch_size", "lr", "lr_decay", "min_lr", "clip", "epochs", "max_minutes", "max_steps",
               "checkpoint_minutes", "seed", "limit", "threads", "dataset", "data_dir", "init_from", "matmul_dtype",
               "ema", "device", "cuda_graph", "iw_samples"]


def cmd_train(args):
    """Start a run, or resume one: a resumed run keeps its saved settings (but --max-minutes) except the flags
    given now."""
    from .model import DrawConfig
    from .train import PRESET_DATASETS, TrainConfig, saved_train_config, train

    out_dir = args.out or f"runs/{args.preset}"
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(DrawConfig) if getattr(args, f.name) is not None}
    saved = saved_train_config(out_dir) if args.resume else None
    model_config = None if saved is not None and not overrides else DrawConfig.preset(args.preset, **overrides)
    new_run = {"dataset": PRESET_DATASETS.get(args.preset, args.preset)}
    settings = _resumed_settings(saved) if saved is not None else new_run
    settings.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    settings.update(out_dir=out_dir, progress=not args.no_progress)
    if args.init_from:
        settings["init_from"] = str(_model_dir(args.init_from))
    train(model_config, TrainConfig(**settings), resume=args.resume)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """Inside, SIGTERM (a job's time running out, or kill) raises KeyboardInterrupt, as Ctrl-C does."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_eval(args):
    from .data import SPLIT_SEEDS, binarize, load_images_and_labels
    from .evaluate import BoundsFile, elbo, iw_bound, mean_and_stderr, model_fingerprint
    from .model import bits_per_dim

    if args.bounds_file and not args.iw:
        raise DrawnetError("--bounds-file keeps IW bounds: give --iw K as well")
    from .distributed import pick_device

    device = pick_device(args.device)
    model = _load_model(args.model).to(device)
    bounds_file = None
    if args.bounds_file:
        settings = {"K": args.iw, "seed": args.seed, "dataset": args.dataset, "model": model_fingerprint(model)}
        if args.split != "test":  # files of test bounds, written before --split, keep their header
            settings["split"] = args.split
        bounds_file = BoundsFile(args.bounds_file, settings)
        bounds_file.read()  # refuse a file of other settings now, not after the ELBO
    cfg = model.config
    images, labels = load_images_and_labels(args.dataset, args.data_dir, (cfg.channels, cfg.height, cfg.width))
    x = getattr(images, args.split)[: args.limit]
    y = getattr(labels, args.split)[: args.limit].to(device) if model.condition else None
    if cfg.likelihood == "bernoulli":
        x = binarize(x, SPLIT_SEEDS[args.split])
    x = x.to(device)

    def report(name, mean, stderr, images=f"{len(x)} images"):
        line = f"{args.split} NLL bound ({name}) on {images}: {mean:.2f} +- {stderr:.2f} nats"
        if cfg.likelihood != "bernoulli":
            line += f" ({bits_per_dim(mean, cfg):.3f} bits/dim)"
        print(line, flush=True)

    report("ELBO", *elbo(model, x, batch_size=args.batch_size, seed=args.seed, progress=True, y=y))
    if args.iw:
        try:
            with _sigterm_as_ctrl_c() if bounds_file else contextlib.nullcontext():
                bound = iw_bound(model, x, args.iw, batch_size=args.batch_size, seed=args.seed, progress=True, y=y,
                                 bounds_file=bounds_file)
        except KeyboardInterrupt:
            if bounds_file is None:
                raise
            done = bounds_file.read()
            if done:
                report(f"IW, K={args.iw}", *mean_and_stderr(torch.tensor(done)),
                       images=f"the first {len(done)} of {len(x)} images")
            print(f"drawnet: stopped; the bounds so far are in {bounds_file.path}, and the same command continues "
                  "from there", file=sys.stderr)
            return 130
        report(f"IW, K={args.iw}", *bound)


def cmd_sample(args):
    """A grid of samples; with several captions, one row of N samples per caption, the caption below it."""
    from .visualize import save_grid, save_titled_rows

    model = _load_model(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    if args.caption and len(args.caption) > 1:
        rows = [c for c in args.caption for _ in range(args.n)]
        gen = model.generate(len(rows), generator=generator, y=_condition(model, len(rows), args.label, rows))
        path = save_titled_rows(gen.images.split(args.n), args.caption, args.out)
        print(f"wrote {args.n} samples for each of {len(args.caption)} captions to {path}")
        return
    gen = model.generate(args.n, generator=generator, y=_condition(model, args.n, args.label, args.caption))
    nrow = args.nrow or (model.config.num_classes if model.condition == "label" and args.label is None else 8)
    path = save_grid(gen.images, args.out, nrow=nrow)
    print(f"wrote {args.n} samples to {path}")


def cmd_animate(args):
    """Watch it draw: samples.gif + progression.png (and the same for test-set reconstructions)."""
    from .visualize import animate_reconstructions, animate_samples

    model = _load_model(args.model)
    out = Path(args.out_dir)
    opts = dict(seed=args.seed, columns=args.columns, frame_ms=args.frame_ms, scale=args.scale)
    y = _condition(model, args.n, args.label, args.caption)
    gif, png = animate_samples(model, args.n, out / "samples.gif", out / "progression.png", y=y, **opts)
    print(f"wrote {gif} ({model.config.T + 1} frames: the blank canvas, then glimpses 1..{model.config.T})")
    print(f"wrote {png} (rows: {args.n} samples; columns: glimpses)")
    if args.reconstruct:
        from .data import TEST_SEED, binarize, load_images_and_labels

        cfg = model.config
        images, labels = load_images_and_labels(args.dataset, args.data_dir, (cfg.channels, cfg.height, cfg.width))
        x = images.test
        if cfg.likelihood == "bernoulli":
            x = binarize(x, TEST_SEED)  # the whole test set, so the images are the ones `eval` scores
        y = labels.test[: args.n] if model.condition else None
        gif, png = animate_reconstructions(model, x[: args.n], out / "reconstruction.gif",
                                           out / "reconstruction_progression.png", y=y, **opts)
        print(f"wrote {gif} (red: write window, green: read window)")
        print(f"wrote {png} (rows: the first {min(args.n, len(x))} test images; columns: glimpses, then the image)")


def cmd_demo(args):
    """The main job: draw with a shipped (or given) model and write the pictures, no data or training needed."""
    from .visualize import animate_samples, glimpse_columns, save_grid

    model = _load_model(args.model)
    out = Path(args.out_dir)
    gen = model.generate(64, generator=torch.Generator().manual_seed(args.seed))
    print(f"wrote {save_grid(gen.images, out / 'samples.png', nrow=8)} (64 samples)")
    gif, png = animate_samples(model, 16, out / "samples.gif", out / "progression.png", seed=args.seed)
    steps = glimpse_columns(model.config.T)
    print(f"wrote {png} (rows: 16 samples; columns: the canvas after glimpses {', '.join(map(str, steps[:3]))}, ..., "
          f"{steps[-1]})")
    print(f"wrote {gif} (one frame per glimpse, write window in red)")


def cmd_serve(args):
    """A local web page that draws with the models glimpse by glimpse (serve.py)."""
    from .serve import serve

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.model or SHIPPED
    models = {}
    for name in names:
        key = Path(name).resolve().name  # a shipped model's name, or a directory's last component
        if key in models:
            raise DrawnetError(f"two models named {key!r}: give directories with different names")
        models[key] = _load_model(name)
    serve(models, args.host, args.port)


def cmd_agreement(args):
    """Conditional models: how often a digit classifier agrees with the label or caption an image was drawn from."""
    from .captions import digit_classifier, held_out_captions, training_captions
    from .evaluate import captions_agreement, label_agreement

    model = _load_model(args.model)
    if model.condition is None:
        raise DrawnetError("agreement needs a label or caption model (an unconditional model was given)")
    classifier = digit_classifier()
    if model.condition == "label":
        per_label = label_agreement(model, classifier, args.per, args.seed)
        print(f"label agreement over {args.per} images per digit: {per_label.mean().item():.1%} "
              f"({', '.join(f'{d}: {a:.0%}' for d, a in enumerate(per_label.tolist()))})")
        return
    for name, captions in (("held-out", held_out_captions()), ("training", training_captions())):
        a = captions_agreement(model, captions, classifier, args.per, args.seed, progress=True)
        print(f"{name} captions ({len(captions)} x {args.per} images): digits {a['digits']:.1%}, "
              f"positions {a['positions']:.1%}, both {a['both']:.1%}")


def cmd_filterbank(args):
    """The paper's figure 3 on one test image."""
    from .data import load_dataset
    from .visualize import filterbank_figure

    test = load_dataset(args.dataset, args.data_dir).test
    if not 0 <= args.index < len(test):
        raise DrawnetError(f"--index must be in 0..{len(test) - 1}, got {args.index}")
    print(f"wrote {filterbank_figure(test[args.index], args.out, N=args.N)}")


def cmd_curves(args):
    """Validation bound against epochs and wall time for one or more runs."""
    import json

    from .visualize import plot_training_curves

    runs = {}
    for run in args.runs:
        log = Path(run) / "log.json"
        try:
            runs[Path(run).name] = json.loads(log.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DrawnetError(f"cannot read {log}: {e}") from None
    print(f"wrote {plot_training_curves(runs, args.out)}")


CLASSIFY_TRAIN_FLAGS = ["batch_size", "lr", "lr_decay", "clip", "epochs", "max_minutes", "seed", "limit", "threads"]


def cmd_classify_train(args):
    """Train the cluttered MNIST classifier, or resume a run: a resumed run keeps its saved settings (but
    --max-minutes) except the flags given now."""
    from .classify import ClassifierConfig, ClassifyTrainConfig, saved_settings, train_classifier

    shape = {k: v for k, v in (("T", args.glimpses), ("height", args.size), ("width", args.size)) if v is not None}
    config = ClassifierConfig(**shape) if shape else None
    saved = saved_settings(args.out) if args.resume else None
    settings = _resumed_settings(saved) if saved is not None else {}
    settings.update({k: getattr(args, k) for k in CLASSIFY_TRAIN_FLAGS if getattr(args, k) is not None})
    settings.update(out_dir=args.out, progress=not args.no_progress)
    train_classifier(config, ClassifyTrainConfig(**settings), resume=args.resume)


def cmd_classify_test(args):
    from .classify import TEST_SIZE, AttentionClassifier, error_rate

    model = AttentionClassifier.from_pretrained(args.model)
    n = min(args.limit or TEST_SIZE, TEST_SIZE)
    error = error_rate(model, "test", n, batch_size=args.batch_size, progress=True)
    print(f"test error on {n} cluttered MNIST canvases, {model.config.T} glimpses: {100 * error:.2f} %")


def cmd_classify_figure(args):
    from .classify import AttentionClassifier, fixed_set, glimpse_figure

    model = AttentionClassifier.from_pretrained(args.model)
    x, y = next(fixed_set("test", args.n, model.config.height))
    path = glimpse_figure(model, x, y, args.out)
    print(f"wrote {path} (the first {len(x)} test canvases; columns: glimpses 1..{model.config.T}; for each "
          "canvas, the read window in green above the glimpse it read)")


def _add_classify_parser(sub) -> None:
    """drawnet classify train | test | figure: the cluttered MNIST attention classifier (classify.py)."""
    classify = sub.add_parser("classify", help="cluttered MNIST classification with attention (train, test, figure)")
    commands = classify.add_subparsers(dest="classify_command", metavar="{train,test,figure}", required=True)

    p = commands.add_parser("train", help="train on cluttered 100x100 MNIST (resumable); per-epoch validation error")
    p.add_argument("--out", default="runs/classify", help="run directory (default runs/classify)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--glimpses", type=_positive_int, help="glimpses T (default 8)")
    p.add_argument("--size", type=_positive_int, help="canvas side in pixels (default 100)")
    p.add_argument("--batch-size", type=int, help="canvases per step (default 64)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3; the window layer's is a tenth)")
    p.add_argument("--lr-decay", type=float, help="learning-rate factor per epoch (default 0.95)")
    p.add_argument("--clip", type=float, help="max gradient norm (default 10)")
    p.add_argument("--epochs", type=int, help="train until this many epochs of 50,000 canvases (default 50)")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this much time")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--limit", type=int, help="use only the first LIMIT training digits and validation canvases")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_classify_train)

    p = commands.add_parser("test", help="test error in %% on the fixed cluttered test set")
    p.add_argument("--model", required=True, help="a model directory (config.json + model.safetensors)")
    p.add_argument("--limit", type=_positive_int, help="score only the first LIMIT of the 10,000 test canvases")
    p.add_argument("--batch-size", type=_positive_int, default=500)
    p.set_defaults(func=cmd_classify_test)

    p = commands.add_parser("figure", help="PNG of the glimpses on test canvases")
    p.add_argument("--model", required=True, help="a model directory (config.json + model.safetensors)")
    p.add_argument("--out", default="glimpses.png")
    p.add_argument("-n", type=_positive_int, default=4, help="test canvases to show (default 4)")
    p.set_defaults(func=cmd_classify_figure)


class _Parser(argparse.ArgumentParser):
    """Bad flags get the same one-line error as bad input (`drawnet --help` shows the usage)."""

    def error(self, message):
        self.exit(2, f"drawnet: error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS, SPLIT_SEEDS
    from .model import PRESETS

    data_sets = ", ".join(DATASETS)
    data_dir_help = ("where the data set's files are or are cached (cifar10: the cifar-10-batches-py folder or "
                     "its parent; svhn: the folder with train_32x32.mat and test_32x32.mat)")
    parser = _Parser(prog="drawnet", description="DRAW: a recurrent attentive writer (Gregor et al. 2015)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="samples, progression PNG and GIF from the shipped mnist model")
    p.add_argument("--model", default="mnist", help=MODEL_HELP)
    p.add_argument("--out-dir", default="drawnet-demo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model from a preset (resumable)")
    p.add_argument("--preset", default="mnist", choices=list(PRESETS))
    p.add_argument("--out", help="run directory (default runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--dataset", help=f"data set: {data_sets} (default: the preset's)")
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--batch-size", type=int,
                   help="images per step (default 128); under torchrun the global batch, split over the processes")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lr-decay", type=float, help="learning-rate factor per epoch (default 0.98)")
    p.add_argument("--min-lr", type=float, help="learning-rate floor (default 1e-4)")
    p.add_argument("--clip", type=float, help="max gradient norm (default 50)")
    p.add_argument("--epochs", type=int, help="train until this many epochs (default 100)")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this much time")
    p.add_argument("--max-steps", type=int, help="stop with a checkpoint after this many steps in all")
    p.add_argument("--checkpoint-minutes", type=float, help="minutes between checkpoints (default 5)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--limit", type=int, help="use only the first LIMIT images of each split")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--matmul-dtype", choices=["float32", "bfloat16"],
                   help="precision of the matrix products in training steps (default float32); bfloat16 is "
                        "faster on CPUs with bfloat16 instructions and keeps the bound within 0.1 nats; CPUs without "
                        "them train with float32 products")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="decay per step of the moving average of the weights that is validated and saved as the "
                        "model (default 0.999; 0: the raw weights)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--cuda-graph", type=_parse_bool, metavar="{true,false}",
                   help="on a GPU, replay each step as one captured CUDA graph (default true)")
    p.add_argument("--iw-samples", type=int, metavar="K",
                   help="train on the importance-weighted bound with K trajectories per image (default 1: the "
                        "ELBO); each step runs batch size x K trajectories")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start a new run from this model's weights (same architecture; the label or caption "
                        "conditioning may differ, e.g. mnist for the mnist-label preset)")
    _add_model_overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test-set (or --split) NLL bound in nats")
    p.add_argument("--model", default="mnist", help=MODEL_HELP)
    p.add_argument("--dataset", default="mnist", help=f"data set: {data_sets} (default mnist)")
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="test",
                   help="the images to score (default test); binary data sets binarise each split once, "
                   "with its own seed")
    p.add_argument("--limit", type=int, help="score only the first LIMIT images of the split")
    p.add_argument("--iw", type=_positive_int, metavar="K", help="also the importance-weighted bound with K samples")
    p.add_argument("--bounds-file", metavar="CSV", help="with --iw: write each image's IW bound to CSV as it goes; "
                   "the same command run again continues from where a stopped one got to")
    p.add_argument("--batch-size", type=int, default=500, help="trajectories per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="write a PNG grid of generated images")
    p.add_argument("--model", default="mnist", help=MODEL_HELP)
    p.add_argument("--out", default="samples.png")
    p.add_argument("-n", type=_positive_int, default=64)
    p.add_argument("--nrow", type=_positive_int,
                   help="images per row (default 8; 10 for a label model drawing the digits in turn)")
    p.add_argument("--seed", type=int, default=0)
    _add_condition_flags(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("animate", help="GIF + PNG of the canvas glimpse by glimpse, attention windows drawn")
    p.add_argument("--model", default="mnist", help=MODEL_HELP)
    p.add_argument("--out-dir", default=".", help="where samples.gif and progression.png go (default .)")
    p.add_argument("-n", type=_positive_int, default=16, help="images to draw (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reconstruct", action="store_true",
                   help="also reconstruction.gif + reconstruction_progression.png of the first N test images")
    p.add_argument("--dataset", default="mnist", help="test images for --reconstruct (default mnist)")
    p.add_argument("--data-dir")
    p.add_argument("--columns", type=_positive_int, default=16, help="about this many glimpses in the PNGs")
    p.add_argument("--frame-ms", type=_positive_int, default=100, help="milliseconds per GIF frame")
    p.add_argument("--scale", type=_positive_int, default=4, help="GIF pixels per image pixel (default 4)")
    _add_condition_flags(p)
    p.set_defaults(func=cmd_animate)

    p = sub.add_parser("serve", help="a local web page: pick a model and watch it draw, glimpse by glimpse")
    p.add_argument("--model", action="append", help="a shipped model or a model directory; repeat for more "
                   "(default: every shipped model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("agreement", help="label/caption models: does a digit classifier agree with what was asked?")
    p.add_argument("--model", required=True, help="a label or caption model directory (or a shipped one)")
    p.add_argument("--per", type=_positive_int, default=10, help="images per label or caption (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_agreement)

    p = sub.add_parser("filterbank", help="the paper's figure 3: filterbank windows and the patches they read")
    p.add_argument("--out", default="filterbank.png")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--index", type=int, default=0, help="which test image (default 0, the first)")
    p.add_argument("-N", type=_positive_int, default=12, help="patch size N (default 12)")
    p.set_defaults(func=cmd_filterbank)
    p = sub.add_parser("curves", help="plot the validation bound of runs against epochs and wall time")
    p.add_argument("runs", nargs="+", help="run directories (each with a log.json)")
    p.add_argument("--out", default="curves.png")
    p.set_defaults(func=cmd_curves)
    _add_classify_parser(sub)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or bad flags (already reported in one line)
        return e.code
    try:
        return args.func(args) or 0
    except DrawnetError as e:
        print(f"drawnet: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
