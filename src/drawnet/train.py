"""Training: Adam with gradient-norm clipping, exponential learning-rate decay per epoch, dynamic
binarisation, a validation bound every epoch, and resumable checkpoints every few minutes.

Every random draw of step s (batch order, binarisation, the posterior noise eps) comes from generators
seeded by (seed, epoch) and (seed, step), so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have. Under torchrun (distributed.py) every process draws them for the whole global
batch and trains on its shard, so several processes compute what one would.
"""
import copy
import csv
import ctypes
import dataclasses
import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from .checkpoint import CHECKPOINT_NAME, load_checkpoint, load_state, save_checkpoint, tensors_under
from .data import VALID_SEED, binarize, load_images_and_labels
from .distributed import World, joined_world
from .errors import DrawnetError
from .evaluate import elbo
from .model import DRAW, DrawConfig, iw_loss

PRESET_DATASETS = {"mnist": "mnist", "mnist-noattn": "mnist", "mnist-label": "mnist", "mnist-captions": "mnist-captions",
                   "two-digit-mnist": "two-digit-mnist"}
MAX_BAD_STEPS = 5  # consecutive non-finite steps before training gives up
STEP_FIELDS = ["step", "epoch", "loss", "L_x", "L_z", "grad_norm", "lr"]
EPOCH_FIELDS = ["epoch", "step", "train_loss", "train_L_z", "valid_bound", "lr", "wall_time_s"]


MATMUL_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products have fast kernels here: on a GPU, or on a CPU for which oneDNN has them
    (AVX-512 or Arm's BF16). Elsewhere (an AVX2-only CPU) PyTorch multiplies bfloat16 in a generic loop, which
    made a training step more than 16 times slower than float32 (README, Training choices)."""
    return device.type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


@dataclass
class TrainConfig:
    out_dir: str = "runs/mnist"
    dataset: str = "mnist"
    data_dir: Optional[str] = None
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 0.98  # multiplies the learning rate after every epoch ...
    min_lr: float = 1e-4  # ... down to this floor
    clip: float = 50.0  # max global gradient norm
    epochs: int = 100
    max_minutes: Optional[float] = None  # stop (with a checkpoint) after this much wall time
    max_steps: Optional[int] = None
    checkpoint_minutes: float = 5.0
    seed: int = 0
    limit: Optional[int] = None  # use only the first `limit` images of each split (smoke tests)
    binarize: Optional[bool] = None  # None: binarise exactly when the likelihood is Bernoulli
    threads: Optional[int] = None
    progress: bool = True
    init_from: Optional[str] = None  # a model directory whose weights a new run starts from (warm_start)
    # precision of the training steps' matrix products: "bfloat16" trains about 1.5-1.8x faster on CPUs with
    # bfloat16 instructions (benchmarks/bench_train.py); the weights, states and validation stay float32
    matmul_dtype: str = "float32"
    # decay per step of the exponential moving average of the weights that is validated and saved as the model
    # (Polyak averaging; 0: the raw weights). It smooths out the last updates' noise.
    ema: float = 0.999
    device: Optional[str] = None  # "cpu", "cuda", ...; None: the GPU when CUDA is available
    # on a GPU, replay each step's forward and backward as one captured CUDA graph (CudaGraphStep)
    cuda_graph: bool = True
    # K > 1: minimise the importance-weighted bound with K trajectories per image instead of the ELBO (K = 1)
    iw_samples: int = 1

    def __post_init__(self):
        for name in ("batch_size", "epochs", "max_steps", "limit", "threads", "iw_samples"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "epochs" else 1):
                raise DrawnetError(f"{name.replace('_', '-')} must be {'>= 0' if name == 'epochs' else '>= 1'}, got {value}")
        for name in ("lr", "lr_decay", "clip", "min_lr", "checkpoint_minutes", "max_minutes"):
            value = getattr(self, name)
            strict = name in ("lr", "lr_decay", "clip")
            if value is not None and not (value > 0 if strict else value >= 0):
                raise DrawnetError(f"{name.replace('_', '-')} must be {'> 0' if strict else '>= 0'}, got {value}")

        if not 0 <= self.ema < 1:
            raise DrawnetError(f"ema must be >= 0 and < 1, got {self.ema}")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise DrawnetError(f"matmul-dtype must be one of {', '.join(MATMUL_DTYPES)}, got {self.matmul_dtype!r}")

    def lr_at(self, epoch: int) -> float:
        return max(self.lr * self.lr_decay**epoch, self.min_lr)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    epoch_step: int = 0  # steps done in the current epoch
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    epoch_good: int = 0  # finite steps so far in this epoch, and the sums of their losses
    epoch_loss: float = 0.0
    epoch_L_z: float = 0.0
    wall_time_s: float = 0.0
    history: list = field(default_factory=list)  # one dict per finished epoch
    averaged_steps: int = 0  # updates in the weight average so far (its warm-up)


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict) -> None:
    state = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging), kept in a second model.

    After update t of the average, average <- average + (1 - d_t) (weights - average) with
    d_t = min(decay, (1 + t) / (10 + t)): the warm-up lets an average started late, or a short run, follow the
    weights at first instead of staying near where it began."""

    def __init__(self, model: DRAW, decay: float, steps: int = 0):
        self.model, self.decay, self.steps = copy.deepcopy(model), decay, steps
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: DRAW) -> None:
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - d)
        self.steps += 1


def save_training(out_dir: Path, model: DRAW, opt, state: TrainState, tcfg: TrainConfig,
                  average: Optional[WeightAverage] = None) -> None:
    """The checkpoint (weights, optimizer, weight average, state) and the model directory, which holds the
    averaged weights when there is an average."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optimizer_tensors(opt))
    if average is not None:
        tensors.update({f"average.{k}": v for k, v in average.model.state_dict().items()})
        state.averaged_steps = average.steps
    meta = {"model_config": model.config.to_dict(), "train_config": asdict(tcfg), "state": asdict(state)}
    save_checkpoint(out_dir / CHECKPOINT_NAME, tensors, meta)
    (model if average is None else average.model).save_pretrained(out_dir)


def saved_train_config(out_dir: Path) -> Optional[dict]:
    """The TrainConfig fields of the run in out_dir, or None if there is no checkpoint."""
    if not (Path(out_dir) / CHECKPOINT_NAME).is_file():
        return None
    return load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)[1].get("train_config")


def load_training(out_dir: Path):
    """Return (model, tensors, metadata) of the checkpoint in out_dir."""
    tensors, meta = load_checkpoint(out_dir / CHECKPOINT_NAME)
    try:
        model = DRAW(DrawConfig.from_dict(meta["model_config"]))
        state = TrainState(**meta["state"])
    except (KeyError, TypeError) as e:
        raise DrawnetError(f"{out_dir / CHECKPOINT_NAME} has an invalid header ({e})") from None
    load_state(model, tensors_under(tensors, "model."), out_dir / CHECKPOINT_NAME)
    return model, tensors, state


CONDITION_FIELDS = ("num_classes", "vocab_size", "caption_size", "align_size")


def warm_start(model: DRAW, source: DRAW) -> None:
    """Copy a trained model's weights into a new one that differs from it only in what it is conditioned on
    (e.g. mnist -> mnist-label) and, if both read and write through attention, in the image size (e.g. mnist ->
    two-digit-mnist: no weight depends on the size then, and windows are placed relative to the image, so the
    new model starts by drawing the source's digits stretched over its canvas). The decoder's columns for y_t
    start at zero, so a conditioned model begins by drawing exactly as the source does and learns from there
    to use its label or caption."""
    attention = all(c.read_attention and c.write_attention for c in (model.config, source.config))
    default = DrawConfig()
    ignore = {name: getattr(default, name) for name in CONDITION_FIELDS + (("height", "width") if attention else ())}
    if dataclasses.replace(model.config, **ignore) != dataclasses.replace(source.config, **ignore):
        raise DrawnetError("--init-from needs a model with the same architecture apart from its label or caption "
                           "conditioning (and, with attention, the image size)")
    Z, D = model.config.z_size, model.config.dec_size
    theirs = source.state_dict()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name == "decoder.weight":
                p.zero_()
                p[:, :Z], p[:, -D:] = theirs[name][:, :Z], theirs[name][:, -D:]
            elif name in theirs and theirs[name].shape == p.shape:
                p.copy_(theirs[name])


def _truncate_csv(path: Path, key: str, last: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:  # a row cut short by a kill has empty fields: drop it too
        rows = [r for r in csv.DictReader(f) if all(r.values()) and None not in r and int(r[key]) <= last]
    _write_csv(path, rows, write_header=True, mode="w")


def _write_csv(path: Path, rows, write_header: bool, mode: str = "a") -> None:
    fields = STEP_FIELDS if path.name == "steps.csv" else EPOCH_FIELDS
    with open(path, mode, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if write_header:
            writer.writeheader()
        writer.writerows(rows)


def train(model_config: Optional[DrawConfig], tcfg: TrainConfig, resume: bool = False, log=print) -> DRAW:
    """Train (or resume) a DRAW model; returns it (its weight average when tcfg.ema > 0). Writes checkpoint,
    config.json, model.safetensors, steps.csv (per step) and log.csv / log.json (per epoch) to tcfg.out_dir.
    Started by torchrun, each process trains on its shard of every batch of tcfg.batch_size images, and rank 0
    alone writes and logs."""
    with joined_world(tcfg.device) as world:
        return _train(model_config, tcfg, resume, log if world.is_main else lambda message: None, world)


def keep_freed_memory() -> bool:
    """Have the C library's malloc keep freed memory for reuse rather than hand it back to the kernel.

    A training step on the CPU allocates and frees hundreds of tensors of a few MB. glibc by default returns
    the larger ones to the kernel when they are freed, so the next step writes to fresh pages, each a page
    fault (about 2 us per 4 KiB page on this project's machine). Keeping them made a step at batch 512 about
    4 % faster (measured). Returns False where the C library is not glibc; it changes nothing then."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    # 32 MiB is the largest mmap threshold glibc accepts; below it, blocks come from the heap and are reused.
    settings = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)


class GraphMismatch(RuntimeError):
    """A captured CUDA graph did not reproduce the eager training step."""


class CudaGraphStep:
    """A training step's forward and backward pass, captured once as a CUDA graph and replayed every step.

    On a GPU a DRAW step is thousands of small kernels (T glimpses, forward and backward), and launched one by
    one from Python the GPU mostly waits for the CPU. A replayed graph launches them all at once. Each call
    copies the batch and its noise into the graph's input tensors and replays it: the loss terms returned and
    the gradients are the graph's own tensors, overwritten by every replay, and each call sets the parameters'
    .grad to them. The optimizer step, clipping and weight average run outside the graph, so a learning rate
    changed between epochs takes effect. The first replay, on the batch of the capture, must give the loss and
    gradients that the last eager warm-up pass gave, or the constructor raises GraphMismatch."""

    WARMUP = 3  # eager passes on a side stream before the capture, as torch.cuda.graphs asks

    def __init__(self, model: DRAW, x: torch.Tensor, noise: torch.Tensor, y: Optional[torch.Tensor],
                 matmul_dtype: Optional[torch.dtype]):
        self.x, self.noise, self.y = x.clone(), noise.clone(), None if y is None else y.clone()
        # the fused path directly: forward()'s input checks read values back to the CPU, which a capture forbids
        run = lambda: model._forward_fused(self.x, False, self.noise, self.y, matmul_dtype)  # noqa: E731
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                model.zero_grad(set_to_none=True)
                eager = run()
                eager.loss.backward()
        torch.cuda.current_stream(x.device).wait_stream(side)
        expected = [eager.L_x.detach(), eager.L_z.detach()] + [p.grad for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)  # the capture's backward allocates the .grad tensors it writes
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run()
            self.out.loss.backward()
        self.grads = [(p, p.grad) for p in model.parameters() if p.grad is not None]
        self.graph.replay()
        replayed = [self.out.L_x, self.out.L_z] + [grad for _, grad in self.grads]
        if len(replayed) != len(expected) or not all(torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                                                     for a, b in zip(replayed, expected)):
            raise GraphMismatch("the replayed graph's loss or gradients differ from the eager pass's")

    def __call__(self, x: torch.Tensor, noise: torch.Tensor, y: Optional[torch.Tensor]):
        self.x.copy_(x)
        self.noise.copy_(noise)
        if y is not None:
            self.y.copy_(y)
        self.graph.replay()
        for p, grad in self.grads:
            p.grad = grad
        return self.out


def _train(model_config: Optional[DrawConfig], tcfg: TrainConfig, resume: bool, log, world: World) -> DRAW:
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    if world.device.type == "cpu":
        keep_freed_memory()
    if tcfg.batch_size % world.size:
        raise DrawnetError(f"batch size {tcfg.batch_size} is the global batch and must divide by the number of "
                           f"processes ({world.size})")
    out_dir = Path(tcfg.out_dir)
    if resume and (out_dir / CHECKPOINT_NAME).is_file():
        model, tensors, state = load_training(out_dir)
        saved_batch = (saved_train_config(out_dir) or {}).get("batch_size", tcfg.batch_size)
        if state.epoch_step and saved_batch != tcfg.batch_size:
            raise DrawnetError(f"{out_dir} stopped mid-epoch with batch size {saved_batch}; "
                               "resume with the same batch size (it may change at an epoch boundary)")
        if model_config is not None and model_config != model.config:
            raise DrawnetError(f"{out_dir} holds a run of a different model; resume it without overrides")
        log(f"resuming {out_dir} at epoch {state.epoch}, step {state.step}")
    else:
        if resume:
            log(f"no checkpoint in {out_dir}; starting a new run")
        if (out_dir / CHECKPOINT_NAME).is_file():
            raise DrawnetError(f"{out_dir} already holds a run: pass --resume to continue it or choose another --out")
        torch.manual_seed(tcfg.seed)  # the initial weights belong to the seed too
        model, tensors, state = DRAW(model_config), None, TrainState()
        if tcfg.init_from:
            warm_start(model, DRAW.from_pretrained(tcfg.init_from))
            log(f"starting from the weights of {tcfg.init_from}")
    cfg = model.config
    if world.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / ".write-test").touch()
            (out_dir / ".write-test").unlink()
        except OSError as e:
            raise DrawnetError(f"output directory {out_dir} is not writable: {e.strerror}") from None

    with world.main_first():
        splits, ys = load_images_and_labels(tcfg.dataset, tcfg.data_dir, (cfg.channels, cfg.height, cfg.width))
    train_x, valid_x = splits.train[: tcfg.limit], splits.valid[: tcfg.limit]
    # a conditional model's labels or caption word ids, one per image
    train_y, valid_y = (ys.train[: tcfg.limit], ys.valid[: tcfg.limit]) if model.condition else (None, None)
    for split, y in ((train_x, train_y), (valid_x, valid_y)):  # before binarisation (it fails outside [0, 1])
        try:
            model.check_images(split)
            model.check_condition(y, len(split))
        except DrawnetError as e:
            raise DrawnetError(f"data set {tcfg.dataset}: {e}") from None
    binary = cfg.likelihood == "bernoulli" if tcfg.binarize is None else tcfg.binarize
    if binary:
        valid_x = binarize(valid_x, VALID_SEED)
    valid_x = valid_x.to(world.device)
    valid_y = None if valid_y is None else valid_y.to(world.device)
    steps_per_epoch = len(train_x) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise DrawnetError(f"batch size {tcfg.batch_size} is larger than the training set ({len(train_x)})")

    model.to(world.device)
    average = None
    if tcfg.ema:
        saved_average = tensors_under(tensors or {}, "average.")
        average = WeightAverage(model, tcfg.ema, state.averaged_steps if saved_average else 0)
        if saved_average:
            load_state(average.model, saved_average, out_dir / CHECKPOINT_NAME)
        elif state.step:
            log(f"averaging the weights from step {state.step} on")
    ddp_model = world.wrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr_at(state.epoch))
    if tensors is not None:
        load_optimizer(opt, tensors)
        for group in opt.param_groups:
            group["lr"] = tcfg.lr_at(state.epoch)
    validated = model if average is None else average.model
    # captions pack their words with lengths read back to the CPU, which a graph cannot capture
    K = tcfg.iw_samples
    # the graph captures the ELBO's loss; the importance-weighted one trains op by op
    use_graph = (world.device.type == "cuda" and world.size == 1 and tcfg.cuda_graph and model.condition != "caption"
                 and K == 1)
    graphed = None
    valid_batch = 500 if world.device.type == "cpu" else 5000  # a GPU runs the whole set in few passes
    steps_csv, log_csv = out_dir / "steps.csv", out_dir / "log.csv"
    if world.is_main:
        _truncate_csv(steps_csv, "step", state.step)
        _truncate_csv(log_csv, "epoch", state.epoch)
        if not steps_csv.is_file():
            _write_csv(steps_csv, [], write_header=True)
            _write_csv(log_csv, [], write_header=True)
    matmul_dtype = MATMUL_DTYPES[tcfg.matmul_dtype]
    if matmul_dtype is not None and not fast_bfloat16(world.device):
        # a speed setting that would slow the run down: keep the run going at float32's pace instead
        log("bfloat16 products have no fast kernels on this CPU (no AVX-512 or Arm BF16): training with float32 "
            "products")
        matmul_dtype = None
    log(f"{cfg} | {model.num_parameters():,} parameters | {len(train_x)} training images, "
        f"batch {tcfg.batch_size}{f' over {world.size} processes' if world.size > 1 else ''}, "
        f"{steps_per_epoch} steps/epoch{f', {K} trajectories per image' if K > 1 else ''}, on {world.device}"
        f"{' (CUDA graphs)' if use_graph else ''}")

    stop = {"signal": None}
    def _on_signal(signum, _frame):  # finish the step, checkpoint, exit
        stop["signal"] = signum
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    start, start_wall = time.time(), state.wall_time_s
    last_ckpt = time.time()
    wall = lambda: start_wall + time.time() - start  # noqa: E731

    def checkpoint():
        state.wall_time_s = wall()
        save_training(out_dir, model, opt, state, tcfg, average)

    def train_step(x, noise, y) -> dict:
        """One Adam update on this rank's shard; a non-finite loss or gradient skips the update and is counted.
        The loss and gradients are those of the global batch (averaged over ranks), so all ranks agree."""
        nonlocal graphed, use_graph
        if use_graph and graphed is None:
            try:
                graphed = CudaGraphStep(model, x, noise, y, matmul_dtype)
            except RuntimeError as e:  # a capture that fails or computes something else: train op by op
                log(f"CUDA graph not used ({str(e).splitlines()[0]}); training op by op")
                use_graph = False
        if use_graph:
            out = graphed(x, noise, y)
            objective = out.loss
        else:
            if K > 1:  # each image's K trajectories lie next to each other
                x, y = x.repeat_interleave(K, 0), None if y is None else y.repeat_interleave(K, 0)
            out = ddp_model(x, noise=noise, y=y, matmul_dtype=matmul_dtype)
            objective = out.loss if K == 1 else iw_loss(out.log_w, K)
            opt.zero_grad(set_to_none=True)
            objective.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip)
        loss, L_x, L_z = world.mean(objective, out.L_x.mean(), out.L_z.mean())
        finite = bool(math.isfinite(loss) and torch.isfinite(grad_norm))
        if finite:
            opt.step()
            if average is not None:
                average.update(model)
        return {"step": state.step + 1, "epoch": state.epoch, "loss": f"{loss:.4f}", "L_x": f"{L_x:.4f}",
                "L_z": f"{L_z:.4f}", "grad_norm": f"{grad_norm.item():.3f}", "lr": opt.param_groups[0]["lr"],
                "finite": finite, "values": (loss, L_z)}

    def end_of_epoch():
        """Validate and log on rank 0 (the other ranks wait for it at the next step); every rank moves on."""
        if world.is_main:
            valid_bound = elbo(validated, valid_x, batch_size=valid_batch, seed=VALID_SEED, y=valid_y)[0]
            n = max(state.epoch_good, 1)
            record = {"epoch": state.epoch + 1, "step": state.step, "train_loss": round(state.epoch_loss / n, 4),
                      "train_L_z": round(state.epoch_L_z / n, 4), "valid_bound": round(valid_bound, 4),
                      "lr": opt.param_groups[0]["lr"], "wall_time_s": round(wall(), 1)}
            state.history.append(record)
            _write_csv(log_csv, [record], write_header=False)
            (out_dir / "log.json").write_text(json.dumps(state.history, indent=1) + "\n")
            log(f"epoch {state.epoch + 1}: train {record['train_loss']:.2f} (KL {record['train_L_z']:.2f}) "
                f"valid bound {valid_bound:.2f} nats, lr {record['lr']:.2e}, {record['wall_time_s'] / 60:.1f} min")
        state.epoch, state.epoch_step, state.epoch_good, state.epoch_loss, state.epoch_L_z = state.epoch + 1, 0, 0, 0.0, 0.0
        for group in opt.param_groups:
            group["lr"] = tcfg.lr_at(state.epoch)

    def reached_max_steps() -> bool:
        return tcfg.max_steps is not None and state.step >= tcfg.max_steps

    def finished() -> bool:
        return state.epoch >= tcfg.epochs or reached_max_steps()

    if finished() and world.is_main:
        # git keeps a run's checkpoint but not the model directory it exports: a resume with nothing left to do
        # writes that, so a cloned run can be evaluated without training on
        validated.save_pretrained(out_dir)
    bad_in_a_row = 0
    try:
        while not finished():
            perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(tcfg.seed * 100003 + state.epoch))
            bar = tqdm(range(state.epoch_step, steps_per_epoch), desc=f"epoch {state.epoch + 1}",
                       initial=state.epoch_step, total=steps_per_epoch, dynamic_ncols=True, leave=False,
                       disable=not (tcfg.progress and world.is_main))
            rows = []
            model.train()
            for i in bar:
                torch.manual_seed(tcfg.seed * 1000003 + state.step)
                batch = perm[i * tcfg.batch_size : (i + 1) * tcfg.batch_size]
                x = train_x[batch]
                if binary:
                    x = torch.bernoulli(x)
                # eps of the whole global batch, K trajectories per image, drawn as DRAW.forward would draw it:
                # each rank trains its images with the noise that one process would have used for them
                noise = torch.stack([torch.randn(len(x) * K, cfg.z_size) for _ in range(cfg.T)])
                mine = world.shard(len(x))
                my_noise = noise[:, mine.start * K : mine.stop * K]
                y = None if train_y is None else train_y[batch][mine].to(world.device)
                row = train_step(x[mine].to(world.device), my_noise.to(world.device), y)
                loss, L_z = row.pop("values")
                state.step += 1
                state.epoch_step += 1
                if row.pop("finite"):
                    bad_in_a_row = 0
                    state.epoch_good += 1
                    state.epoch_loss += loss
                    state.epoch_L_z += L_z
                else:
                    state.skipped += 1
                    bad_in_a_row += 1
                    log(f"step {state.step}: non-finite loss or gradient, update skipped")
                    if bad_in_a_row >= MAX_BAD_STEPS:
                        raise DrawnetError(f"training stopped: {bad_in_a_row} non-finite steps in a row at step "
                                           f"{state.step}; the last good checkpoint is in {out_dir} "
                                           "(try a lower --lr or --clip)")
                rows.append(row)
                bar.set_postfix(loss=f"{loss:.2f}", KL=f"{L_z:.2f}")
                done = reached_max_steps()
                timed_out, signalled = world.anywhere(
                    tcfg.max_minutes is not None and wall() - start_wall >= 60 * tcfg.max_minutes,
                    stop["signal"] is not None)
                due = time.time() - last_ckpt >= 60 * tcfg.checkpoint_minutes
                if world.is_main and (due or done or timed_out or signalled):
                    _write_csv(steps_csv, rows, write_header=False)
                    rows = []
                    checkpoint()
                    last_ckpt = time.time()
                if done or timed_out or signalled:
                    bar.close()
                    reason = "max steps" if done else "time limit" if timed_out else "signal"
                    log(f"stopped ({reason}) at epoch {state.epoch}, step {state.step}; checkpoint in {out_dir}")
                    return validated
            bar.close()
            if world.is_main:
                _write_csv(steps_csv, rows, write_header=False)
            end_of_epoch()
            if world.is_main:
                checkpoint()
            last_ckpt = time.time()
        return validated
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
