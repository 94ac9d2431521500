"""Pictures: sample grids, "watch it draw" animations and the filterbank figure (Pillow and numpy only).

Conventions for the attention pictures (SPEC.md; the paper's figures 3 and 7):

- Coordinates. Window parameters are in the paper's 1-based pixel coordinates: pixel a covers [a - 1, a) in
  0-based continuous coordinates, so its centre is at a - 0.5. An image upscaled `scale` times maps the
  1-based coordinate u to scale * (u - 0.5) continuous upscaled pixels.
- Rectangles. A window is drawn as the region gx +- N*delta/2, gy +- N*delta/2 (window_rectangle), with its
  corners rounded to the nearest upscaled pixel edge and the line drawn *inside* that region. The line is
  window_line_width(sigma2, scale) = clamp(round(sigma * scale / 4), 1, scale) upscaled pixels wide, a
  quarter of sigma in image pixels (clamp(round(sigma), 1, 4) at scale 4). Rectangles are clipped to the
  image: the window's region is intersected with the image and the outline of the intersection is drawn, so
  an edge that lies outside the image shows up along the image's border (a window that covers the whole
  image frames it); a window entirely outside the image draws nothing.
- Colours. WRITE windows red (255, 0, 0), READ windows green (0, 255, 0); where they overlap, red is on top.
- Frames. An animation has T + 1 frames: frame 0 is the blank canvas before any glimpse (the mean image of
  c_0 = 0, i.e. sigmoid(0) = 0.5 grey, without rectangles); frame t = 1..T is the canvas after glimpse t
  (the mean image of c_t) with the write window of glimpse t (the one that produced c_t from c_{t-1}) and,
  for reconstructions, the read window of glimpse t (which read x and x - sigmoid(c_{t-1})). Every frame
  carries a caption strip ("blank canvas 0/T", "glimpse t/T") below the grid; the last frame is held longer.
"""
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import DrawnetError

WRITE_COLOUR = (255, 0, 0)
READ_COLOUR = (0, 255, 0)
BORDER_GREY = 128
PAD = 2  # grey border between tiles, in pixels


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[n, C, H, W] in [0, 1] -> [n, H, W, C] uint8."""
    return (images.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid_array(images: torch.Tensor, nrow: int, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile [n, C, H, W] images into one RGB array with `nrow` images per row and a grey border."""
    return tile_grid(rgb_tiles(images, scale), nrow, pad)


def save_grid(images: torch.Tensor, path, nrow: int = 8, scale: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_array(images, nrow, scale=scale)).save(path)
    return path


def save_titled_rows(rows, titles, path, scale: int = 2) -> Path:
    """One row of images ([n, C, H, W] each) per title, the title in a strip below its row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    strips = [add_caption(grid_array(images, len(images), scale=scale), title) for images, title in zip(rows, titles)]
    Image.fromarray(np.concatenate(strips, axis=0)).save(path)
    return path


def rgb_tiles(images: torch.Tensor, scale: int = 1) -> np.ndarray:
    """[n, C, H, W] in [0, 1] -> [n, H*scale, W*scale, 3] uint8 (grey images repeated over RGB)."""
    arr = to_uint8(images)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.ascontiguousarray(arr)


def tile_grid(arr: np.ndarray, nrow: int, pad: int = PAD) -> np.ndarray:
    """[n, h, w, 3] -> one array with `nrow` tiles per row and a grey border `pad` pixels wide."""
    n, h, w, _ = arr.shape
    rows = (n + nrow - 1) // nrow
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), BORDER_GREY, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = arr[k]
    return out


# --- attention windows as rectangles ---
def window_rectangle(gx: float, gy: float, delta: float, N: int, scale: float = 1):
    """The region gx +- N*delta/2, gy +- N*delta/2 as (x0, y0, x1, y1) in upscaled continuous pixel coordinates.

    gx, gy are 1-based (the paper's); the result is 0-based and continuous: x0 is the left edge, x1 the
    right edge, so the window covers upscaled pixel columns [x0, x1). Example: the centre of a 28x28 image
    (gx = gy = 14.5) with delta = 2, N = 5 at scale 4 is (36, 36, 76, 76), in a 112x112 picture.
    """
    half = N * float(delta) / 2
    gx, gy = float(gx) - 0.5, float(gy) - 0.5  # 1-based pixel centre -> 0-based continuous coordinate
    return (scale * (gx - half), scale * (gy - half), scale * (gx + half), scale * (gy + half))


def window_line_width(sigma2: float, scale: int = 4) -> int:
    """Outline width in upscaled pixels: clamp(round(sigma * scale / 4), 1, scale) (sigma / 4 image pixels)."""
    sigma = math.sqrt(max(float(sigma2), 0.0)) if math.isfinite(float(sigma2)) else float(scale)
    return int(min(max(math.floor(sigma * scale / 4 + 0.5), 1), max(scale, 1)))


def outline_mask(rect, width: int, height_px: int, width_px: int) -> np.ndarray:
    """Boolean [height_px, width_px] mask of a rectangle's outline, `width` pixels wide, drawn inside rect.

    The corners are rounded to the nearest pixel edge (at least one pixel apart), the region is clipped to
    the picture (intersected with it) and the outline of what is left is drawn; nothing if nothing is left.
    """
    mask = np.zeros((height_px, width_px), dtype=bool)
    if not all(math.isfinite(float(v)) for v in rect):
        return mask
    x0, y0, x1, y1 = (int(math.floor(min(max(float(v), -1e6), 1e6) + 0.5)) for v in rect)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    x0, x1 = max(x0, 0), min(x1, width_px)  # clip the region to the picture, then outline what is left
    y0, y1 = max(y0, 0), min(y1, height_px)
    xs, ys = np.arange(width_px)[None, :], np.arange(height_px)[:, None]
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    interior = (xs >= x0 + width) & (xs < x1 - width) & (ys >= y0 + width) & (ys < y1 - width)
    return inside & ~interior


def draw_window(tile: np.ndarray, gx, gy, sigma2, delta, N: int, scale: int, colour) -> np.ndarray:
    """Draw one window's rectangle on an upscaled RGB tile [h, w, 3] in place (and return it)."""
    rect = window_rectangle(gx, gy, delta, N, scale)
    tile[outline_mask(rect, window_line_width(sigma2, scale), tile.shape[0], tile.shape[1])] = colour
    return tile


def window_arrays(window):
    """A Window of [T, b] tensors -> dict of float64 numpy arrays [T, b] (None stays None)."""
    if window is None:
        return None
    return {k: getattr(window, k).detach().double().cpu().numpy() for k in ("gx", "gy", "sigma2", "delta")}


def _draw_step(tiles: np.ndarray, t: int, windows, scale: int):
    """Draw glimpse t's windows (index t into [T, b] arrays) on each tile [b, h, w, 3]; later ones on top."""
    for w, N, colour in windows:
        if w is None:
            continue
        for k in range(tiles.shape[0]):
            draw_window(tiles[k], w["gx"][t, k], w["gy"][t, k], w["sigma2"][t, k], w["delta"][t, k], N, scale, colour)
    return tiles


def _windows_to_draw(model, write_windows, read_windows=None):
    """[(arrays, N, colour), ...] in drawing order: read (green) first, write (red) on top."""
    cfg = model.config
    return [(window_arrays(read_windows), cfg.read_n, READ_COLOUR),
            (window_arrays(write_windows), cfg.write_n, WRITE_COLOUR)]


# --- animations ---
def glimpse_columns(T: int, columns: int = 16) -> list:
    """Which glimpses (1-based) a progression shows: every k-th, k = ceil(T / columns), and always the last.

    T = 64, columns = 16 gives 4, 8, ..., 64; columns >= T gives every glimpse 1..T.
    """
    if columns < 1:
        raise DrawnetError(f"columns must be >= 1, got {columns}")
    k = max(1, math.ceil(T / columns))
    steps = list(range(k, T + 1, k))
    if not steps or steps[-1] != T:
        steps.append(T)
    return steps


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def add_caption(frame: np.ndarray, text: str, height: int = 16) -> np.ndarray:
    """Append a strip with `text` below a frame (it also keeps every frame of a GIF distinct)."""
    strip = Image.new("RGB", (frame.shape[1], height), (BORDER_GREY,) * 3)
    ImageDraw.Draw(strip).text((PAD + 2, 1), text, fill=(255, 255, 255), font=_font(height - 4))
    return np.concatenate([frame, np.asarray(strip)], axis=0)


def render_frames(canvases: torch.Tensor, windows, blank: torch.Tensor, scale: int = 4,
                  nrow: Optional[int] = None) -> list:
    """RGB frames [h, w, 3] uint8 of an animation: T + 1 of them (frame 0 the blank canvas; module docstring).

    canvases: [T, n, C, H, W] mean images after each glimpse; windows: [(arrays, N, colour), ...] as from
    _windows_to_draw; blank: [C, H, W] the mean image of c_0.
    """
    T, n = canvases.shape[:2]
    nrow = nrow or math.ceil(math.sqrt(n))
    frames = [add_caption(tile_grid(rgb_tiles(blank.expand(n, *blank.shape), scale), nrow), f"blank canvas 0/{T}")]
    for t in range(T):
        tiles = _draw_step(rgb_tiles(canvases[t], scale), t, windows, scale)
        frames.append(add_caption(tile_grid(tiles, nrow), f"glimpse {t + 1}/{T}"))
    return frames


def progression_array(canvases: torch.Tensor, windows, steps: Sequence[int], scale: int = 2,
                      targets: Optional[torch.Tensor] = None) -> np.ndarray:
    """Rows = images, columns = the canvases after the given glimpses (1-based), each with its windows;
    with `targets` [n, C, H, W], one more column at the right shows them (the images being reconstructed)."""
    T, n = canvases.shape[:2]
    columns = []
    for s in steps:
        if not 1 <= s <= T:
            raise DrawnetError(f"glimpse {s} out of range 1..{T}")
        columns.append(_draw_step(rgb_tiles(canvases[s - 1], scale), s - 1, windows, scale))
    if targets is not None:
        columns.append(rgb_tiles(targets, scale))
    tiles = np.stack(columns, axis=1)  # [n, columns, h, w, 3], row-major: image k's glimpses on row k
    return tile_grid(tiles.reshape(-1, *tiles.shape[2:]), nrow=len(columns))


def _palette_image(frame: np.ndarray) -> Image.Image:
    """An exact palette image for grey frames with red/green rectangles (254 greys + red + green);
    frames with other colours (colour models) get an adaptive 256-colour palette without dithering."""
    r, g, b = (frame[..., i].astype(np.int16) for i in range(3))
    grey = (r == g) & (g == b)
    red = (r == 255) & (g == 0) & (b == 0)
    green = (r == 0) & (g == 255) & (b == 0)
    if not (grey | red | green).all():
        return Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    index = np.round(r * 253 / 255).astype(np.uint8)
    index[red], index[green] = 254, 255
    palette = [round(k * 255 / 253) for k in range(254) for _ in range(3)] + [*WRITE_COLOUR, *READ_COLOUR]
    img = Image.frombytes("P", (index.shape[1], index.shape[0]), np.ascontiguousarray(index).tobytes())
    img.putpalette(palette)
    return img


def save_gif(frames: Sequence[np.ndarray], path, frame_ms: int = 100, last_ms: int = 2000) -> Path:
    """Write RGB frames as a looping GIF, each shown frame_ms, the last held last_ms."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [_palette_image(f) for f in frames]
    durations = [frame_ms] * (len(images) - 1) + [last_ms]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False)
    return path


def _save_png(array: np.ndarray, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _blank(model) -> torch.Tensor:
    cfg = model.config
    return model.likelihood.mean(torch.zeros(1, cfg.channels, cfg.height, cfg.width))[0].detach().cpu()


def animate_samples(model, n: int, path_gif, path_png, seed: int = 0, scale: int = 4, columns: int = 16,
                    progression_scale: int = 2, frame_ms: int = 100, last_ms: int = 2000, nrow: Optional[int] = None,
                    y: Optional[torch.Tensor] = None):
    """Generate n images (z_t ~ N(0, I), seeded; y: a conditional model's labels or captions) and write how
    they were drawn.

    path_gif: T + 1 frames (frame 0 the blank canvas), a grid of the n canvases upscaled `scale` times with
    each glimpse's write window in red. path_png: the progression, one row per sample and one column per
    glimpse in glimpse_columns(T, columns), each with its write window. Returns (gif path, png path).
    """
    if not isinstance(n, int) or n < 1:
        raise DrawnetError(f"n must be a positive integer, got {n!r}")
    device = next(model.parameters()).device
    gen = model.generate(n, generator=torch.Generator(device=device).manual_seed(seed),
                         y=None if y is None else y.to(device))
    canvases = gen.canvases.detach().cpu()
    windows = _windows_to_draw(model, gen.write_windows)
    gif = save_gif(render_frames(canvases, windows, _blank(model), scale, nrow), path_gif, frame_ms, last_ms)
    steps = glimpse_columns(model.config.T, columns)
    png = _save_png(progression_array(canvases, windows, steps, progression_scale), path_png)
    return gif, png


def animate_reconstructions(model, x: torch.Tensor, path_gif, path_png, seed: int = 0, scale: int = 4,
                            columns: int = 16, progression_scale: int = 2, frame_ms: int = 100,
                            last_ms: int = 2000, nrow: Optional[int] = None, y: Optional[torch.Tensor] = None):
    """Run the full model on images x [n, C, H, W] (one seeded trajectory) and write how it redrew them.

    As animate_samples, with each glimpse's read window in green as well as its write window in red; the
    progression PNG has one more column at the right: the images x themselves. Returns (gif, png).
    """
    model.check_images(x)
    device = next(model.parameters()).device
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=fork):
        torch.manual_seed(seed)
        out = model(x.to(device), return_steps=True, y=None if y is None else y.to(device))
    canvases = out.canvases.detach().cpu()
    windows = _windows_to_draw(model, out.write_windows, out.read_windows)
    gif = save_gif(render_frames(canvases, windows, _blank(model), scale, nrow), path_gif, frame_ms, last_ms)
    steps = glimpse_columns(model.config.T, columns)
    png = _save_png(progression_array(canvases, windows, steps, progression_scale, targets=x.cpu()), path_png)
    return gif, png


# --- the filterbank figure (the paper's figure 3) ---
SETTING_COLOURS = [(0, 200, 0), (0, 120, 255), (255, 140, 0), (200, 0, 200), (0, 200, 200)]
GRID_DOT_COLOUR = (255, 0, 0)


def default_filterbank_settings(height: int, width: int, N: int = 12) -> list:
    """Three (gx, gy, delta, sigma2) windows at the image centre, as in the paper's figure 3:
    a zoomed-in blurry patch (small delta, high variance), the whole image at low resolution (large delta,
    low variance), and most of the image with large delta and high variance (very blurry)."""
    gx, gy = (width + 1) / 2, (height + 1) / 2
    whole = (max(height, width) - 1) / max(N - 1, 1)  # delta~ = 1: the filter centres span the image
    zoom = max(height, width) / (2.5 * N)  # the patch covers the central 40 % of the image
    return [(gx, gy, zoom, 4.0), (gx, gy, whole, 0.5), (gx, gy, 0.8 * whole, 9.0)]


def _read_patch(image: torch.Tensor, gx, gy, delta, sigma2, N: int) -> torch.Tensor:
    from .attention import filterbank, read_attention

    C, H, W = image.shape
    vec = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    Fx, Fy = filterbank(vec(gx), vec(gy), vec(sigma2), vec(delta), N, W, H)
    return read_attention(image[None].double(), Fx, Fy, vec(1.0))[0].float()  # gamma = 1


def filterbank_figure(image: torch.Tensor, path, settings=None, N: int = 12, grid=None, grid_n: int = 3,
                      scale: Optional[int] = None) -> Path:
    """The paper's figure 3: the image, upscaled, with a grid_n x grid_n grid of filter centres marked as red
    dots (mu_x_i, mu_y_j) and each setting's window as a coloured rectangle; beside it, the N x N patch that
    each setting (gx, gy, delta, sigma2) reads (drawnet.attention filterbank + read_attention, gamma = 1),
    upscaled, framed in its rectangle's colour and captioned with its parameters.

    settings: default default_filterbank_settings(H, W, N). grid: (gx, gy, delta) of the dot grid, default the
    image centre with delta = max(H, W) / 4. scale: default about 280 pixels for the image. Returns the path.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise DrawnetError(f"filterbank_figure: image must be a [C, H, W] tensor, got "
                           f"{list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if not (isinstance(N, int) and N >= 1 and isinstance(grid_n, int) and grid_n >= 1):
        raise DrawnetError(f"filterbank_figure: N and grid_n must be positive integers, got {N!r}, {grid_n!r}")
    image = image.detach().cpu().float()
    C, H, W = image.shape
    settings = list(default_filterbank_settings(H, W, N) if settings is None else settings)
    if not settings or any(len(s) != 4 for s in settings):
        raise DrawnetError("filterbank_figure: settings must be a non-empty list of (gx, gy, delta, sigma2)")
    if any(not float(s[3]) > 0 or not math.isfinite(float(s[3])) for s in settings):
        raise DrawnetError("filterbank_figure: sigma2 must be positive and finite")
    scale = scale or max(1, round(280 / max(H, W)))
    grid = grid or ((W + 1) / 2, (H + 1) / 2, max(H, W) / 4)

    # Left panel: the image on a white margin (so that windows a little larger than the image show their
    # true extent), with the rectangles and the dot grid.
    Hs, Ws = H * scale, W * scale
    rects = [window_rectangle(gx, gy, delta, N, scale) for gx, gy, delta, _ in settings]
    overhang = max([0.0] + [max(-r[0], -r[1], r[2] - Ws, r[3] - Hs) for r in rects if all(map(math.isfinite, r))])
    m = int(min(math.ceil(overhang), max(Hs, Ws) // 4))
    left = np.full((Hs + 2 * m, Ws + 2 * m, 3), 255, dtype=np.uint8)
    left[m : m + Hs, m : m + Ws] = rgb_tiles(image[None], scale)[0]
    for k, (rect, (_, _, _, sigma2)) in enumerate(zip(rects, settings)):
        shifted = tuple(v + m for v in rect)
        mask = outline_mask(shifted, window_line_width(sigma2, scale), left.shape[0], left.shape[1])
        left[mask] = SETTING_COLOURS[k % len(SETTING_COLOURS)]
    left_img = Image.fromarray(left)
    draw = ImageDraw.Draw(left_img)
    gx, gy, delta = grid
    offsets = (np.arange(1, grid_n + 1) - grid_n / 2 - 0.5) * delta  # mu_i = g + (i - N/2 - 0.5) delta
    radius = max(2, scale // 3)
    for mu_y in gy + offsets:
        for mu_x in gx + offsets:
            cx, cy = m + scale * (mu_x - 0.5), m + scale * (mu_y - 0.5)  # 1-based -> upscaled coordinates
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=GRID_DOT_COLOUR,
                         outline=(0, 0, 0))

    # Right panel: the patches, stacked, as tall in all as the image.
    k, gap, border = len(settings), 8, 3
    ps = max(1, (left.shape[0] - (k - 1) * gap - k * 2 * border) // (k * N))
    side = N * ps + 2 * border
    font = _font(14)
    label_w = 120
    fig_h = max(left.shape[0], k * side + (k - 1) * gap)
    fig = Image.new("RGB", (left.shape[1] + 2 * gap + side + label_w, fig_h), (255, 255, 255))
    fig.paste(left_img, (0, (fig_h - left.shape[0]) // 2))
    fdraw = ImageDraw.Draw(fig)
    x_patch = left.shape[1] + 2 * gap
    for j, (gx_, gy_, delta_, sigma2_) in enumerate(settings):
        patch = rgb_tiles(_read_patch(image, gx_, gy_, delta_, sigma2_, N)[None], ps)[0]
        framed = np.empty((side, side, 3), dtype=np.uint8)
        framed[:] = SETTING_COLOURS[j % len(SETTING_COLOURS)]
        framed[border:-border, border:-border] = patch
        y = j * (side + gap)
        fig.paste(Image.fromarray(framed), (x_patch, y))
        text = f"delta = {float(delta_):.2f}\nsigma2 = {float(sigma2_):.2f}\ng = ({float(gx_):.1f}, {float(gy_):.1f})"
        fdraw.multiline_text((x_patch + side + 6, y + 2), text, fill=(0, 0, 0), font=font, spacing=3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.save(path)
    return path


def curve_limits(runs: dict) -> tuple:
    """The bound axis of the training curves: from 1 nat under the best bound to 10 nats over the worst final
    one, so that the late epochs, where runs differ by tenths of a nat, are not squeezed flat by the first
    epochs' bounds (which can be 100 nats higher)."""
    bounds = [r["valid_bound"] for history in runs.values() for r in history]
    finals = [history[-1]["valid_bound"] for history in runs.values()]
    return min(bounds) - 1, max(finals) + 10


def plot_training_curves(runs: dict, path) -> Path:
    """Validation bound against epochs and against wall time, one line per run.

    runs maps a label to the run's epoch history (the list in its log.json)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for label, history in runs.items():
        if not history:
            raise DrawnetError(f"run {label!r} has no finished epoch to plot")
        epochs = [r["epoch"] for r in history]
        bound = [r["valid_bound"] for r in history]
        hours = [r["wall_time_s"] / 3600 for r in history]
        by_epoch.plot(epochs, bound, marker="o", ms=3, label=f"{label} ({bound[-1]:.2f})")
        by_time.plot(hours, bound, marker="o", ms=3, label=label)
    by_epoch.set(xlabel="epoch", ylabel="validation bound (nats, lower is better)")
    by_time.set(xlabel="wall time (hours, this machine's CPU)")
    by_epoch.set_ylim(*curve_limits(runs))
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_epoch.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
