"""Watch it draw: animations, progressions, window rectangles and the filterbank figure."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from drawnet import DRAW, DrawConfig
from drawnet.visualize import (
    PAD,
    READ_COLOUR,
    WRITE_COLOUR,
    animate_reconstructions,
    animate_samples,
    curve_limits,
    filterbank_figure,
    glimpse_columns,
    grid_array,
    outline_mask,
    save_grid,
    window_line_width,
    window_rectangle,
)

SCALE = 4  # the animations' default upscaling
# Write window (N = 5): gx = 14.5, gy = 10.5, delta = 2, sigma2 = 4  ->  x in [36, 76), y in [20, 60), 2 px lines.
WRITE = dict(gx=14.5, gy=10.5, delta=2.0, sigma2=4.0)
WRITE_RECT, WRITE_WIDTH = (36, 20, 76, 60), 2
# Read window (N = 2): gx = 6.5, gy = 20.5, delta = 3, sigma2 = 1  ->  x in [12, 36), y in [68, 92), 1 px lines.
READ = dict(gx=6.5, gy=20.5, delta=3.0, sigma2=1.0)
READ_RECT, READ_WIDTH = (12, 68, 36, 92), 1


def window_bias(w, N, A=28, B=28):
    """The linear layer's 5 outputs that give this window (inverting eq. 21-24), gamma = 1."""
    delta_tilde = w["delta"] * (N - 1) / (max(A, B) - 1)
    return [w["gx"] * 2 / (A + 1) - 1, w["gy"] * 2 / (B + 1) - 1, math.log(w["sigma2"]), math.log(delta_tilde), 0.0]


def controlled_model(T=2, patch=0.5):
    """A tiny DRAW whose read and write windows are the same at every glimpse and known: dec_out's weight is
    zero, so dec_out(h_dec) is its bias whatever h_dec is."""
    model = DRAW(DrawConfig(T=T, enc_size=16, dec_size=16, z_size=4))
    with torch.no_grad():
        model.dec_out.weight.zero_()
        bias = [patch] * 25 + window_bias(WRITE, 5) + window_bias(READ, 2)
        model.dec_out.bias.copy_(torch.tensor(bias))
    return model


def expected_outline(rect, width, size=28 * SCALE):
    """The outline drawn inside rect, built by hand with slices."""
    x0, y0, x1, y1 = rect
    mask = np.zeros((size, size), dtype=bool)
    mask[y0 : y0 + width, x0:x1] = mask[y1 - width : y1, x0:x1] = True
    mask[y0:y1, x0 : x0 + width] = mask[y0:y1, x1 - width : x1] = True
    return mask


def gif_frames(path):
    im = Image.open(path)
    frames, durations = [], []
    for k in range(im.n_frames):
        im.seek(k)
        frames.append(np.asarray(im.convert("RGB")))
        durations.append(im.info.get("duration"))
    return frames, durations


def colour_mask(frame, colour):
    return (frame == np.array(colour, dtype=np.uint8)).all(-1)


def tile(frame, k, nrow, size=28 * SCALE):
    r, c = divmod(k, nrow)
    top, left = PAD + r * (size + PAD), PAD + c * (size + PAD)
    return frame[top : top + size, left : left + size]


# --- window geometry ---
def test_window_rectangle_hand_computed():
    # The centre of a 28x28 image (pixel centres 14 and 15 straddle 14.5): 14.5 - 0.5 = 14 in 0-based
    # continuous coordinates, +- N*delta/2 = 5 -> [9, 19], times 4 -> [36, 76] of a 112-pixel picture.
    assert window_rectangle(14.5, 14.5, 2, 5, 4) == pytest.approx((36, 36, 76, 76))
    assert window_rectangle(14.5, 14.5, 2, 5, 1) == pytest.approx((9, 9, 19, 19))
    # One filter of width 1 at pixel (1, 1) covers exactly that pixel, [0, 1) x [0, 1).
    assert window_rectangle(1, 1, 1, 1, 1) == pytest.approx((0, 0, 1, 1))
    # Off-centre and non-square steps: x from gx, y from gy.
    assert window_rectangle(3.0, 20.5, 1.5, 2, 2) == pytest.approx((2 * (2.5 - 1.5), 2 * (20 - 1.5), 2 * (2.5 + 1.5), 2 * (20 + 1.5)))


def test_line_width_scales_with_sigma():
    assert [window_line_width(s2, 4) for s2 in (0.01, 1.0, 4.0, 9.0, 100.0)] == [1, 1, 2, 3, 4]
    assert window_line_width(4.0, 2) == 1 and window_line_width(100.0, 2) == 2
    assert window_line_width(float("nan"), 4) == 4


def test_outline_mask_is_the_inside_outline_and_is_clipped():
    assert (outline_mask((36, 36, 76, 76), 1, 112, 112) == expected_outline((36, 36, 76, 76), 1)).all()
    assert (outline_mask((35.6, 36.4, 76.2, 75.5), 3, 112, 112) == expected_outline((36, 36, 76, 76), 3)).all()
    # A window larger than the image frames it; one entirely outside draws nothing; NaN draws nothing.
    assert (outline_mask((-50, -10, 200, 130), 2, 112, 112) == expected_outline((0, 0, 112, 112), 2)).all()
    assert (outline_mask((-50, 0, 112, 112), 1, 112, 112) == expected_outline((0, 0, 112, 112), 1)).all()
    assert not outline_mask((120, 0, 150, 40), 1, 112, 112).any()
    assert not outline_mask((float("nan"), 0, 10, 10), 1, 112, 112).any()
    assert outline_mask((10, 10, 10.2, 10.2), 1, 112, 112).sum() == 1  # never thinner than one pixel


def test_glimpse_columns():
    assert glimpse_columns(64, 16) == list(range(4, 65, 4))
    assert glimpse_columns(10, 4) == [3, 6, 9, 10]
    assert glimpse_columns(2, 16) == [1, 2]
    assert glimpse_columns(1, 1) == [1]


# --- animations ---
def test_sample_gif_frames_and_write_rectangles(tmp_path):
    model = controlled_model(T=3)
    n = 2
    gif, png = animate_samples(model, n, tmp_path / "s.gif", tmp_path / "p.png", seed=0)
    assert (gif, png) == (tmp_path / "s.gif", tmp_path / "p.png")
    frames, durations = gif_frames(gif)
    assert len(frames) == Image.open(gif).n_frames == model.config.T + 1  # the blank canvas + one per glimpse
    assert durations[-1] > durations[0]  # the last frame is held longer

    expected = expected_outline(WRITE_RECT, WRITE_WIDTH)
    for t, frame in enumerate(frames):
        red = colour_mask(frame, WRITE_COLOUR)
        assert not colour_mask(frame, READ_COLOUR).any()  # samples have no read window
        if t == 0:
            assert not red.any()  # the blank canvas c_0 has no window
            assert (tile(frame, 0, nrow=2) == 128).all()  # sigmoid(0) = 0.5 grey
            continue
        for k in range(n):
            assert (colour_mask(tile(frame, k, nrow=2), WRITE_COLOUR) == expected).all(), (t, k)
        assert red.sum() == n * expected.sum()  # and no red anywhere else


def test_reconstruction_gif_draws_read_and_write_windows(tmp_path):
    model = controlled_model(T=2)
    x = (torch.rand(3, 1, 28, 28) > 0.5).float()
    gif, png = animate_reconstructions(model, x, tmp_path / "r.gif", tmp_path / "r.png", seed=0)
    frames, _ = gif_frames(gif)
    assert len(frames) == model.config.T + 1
    for frame in frames[1:]:
        for k in range(3):
            t = tile(frame, k, nrow=2)  # 3 images -> 2 per row
            assert (colour_mask(t, WRITE_COLOUR) == expected_outline(WRITE_RECT, WRITE_WIDTH)).all()
            assert (colour_mask(t, READ_COLOUR) == expected_outline(READ_RECT, READ_WIDTH)).all()


def test_identical_canvases_still_give_one_frame_per_glimpse(tmp_path):
    """Pillow merges identical consecutive GIF frames; the caption keeps them apart."""
    model = controlled_model(T=5, patch=0.0)  # writes nothing: every canvas is the blank one
    gif, _ = animate_samples(model, 1, tmp_path / "s.gif", tmp_path / "p.png")
    assert Image.open(gif).n_frames == 6


def test_progression_png_size(tmp_path):
    model = controlled_model(T=2)
    n, tile_px = 3, 28 * 2  # the progression's default scale is 2
    _, png = animate_samples(model, n, tmp_path / "s.gif", tmp_path / "p.png", columns=16)
    cols = len(glimpse_columns(2, 16))
    assert Image.open(png).size == (cols * (tile_px + PAD) + PAD, n * (tile_px + PAD) + PAD)
    # reconstructions: one more column, the images themselves
    x = torch.rand(n, 1, 28, 28)
    _, png = animate_reconstructions(model, x, tmp_path / "r.gif", tmp_path / "r.png")
    arr = np.asarray(Image.open(png).convert("RGB"))
    assert arr.shape[:2] == (n * (tile_px + PAD) + PAD, (cols + 1) * (tile_px + PAD) + PAD)
    last = arr[PAD : PAD + tile_px, PAD + cols * (tile_px + PAD) :][:, :tile_px, 0]
    assert (last == grid_array(x[:1], nrow=1, pad=0, scale=2)[..., 0]).all()


def test_progression_subsamples_long_runs(tmp_path):
    model = controlled_model(T=20)
    _, png = animate_samples(model, 1, tmp_path / "s.gif", tmp_path / "p.png", columns=4, progression_scale=1)
    assert glimpse_columns(20, 4) == [5, 10, 15, 20]
    assert Image.open(png).size == (4 * (28 + PAD) + PAD, 28 + 2 * PAD)


def test_animations_reject_bad_input(tmp_path):
    from drawnet.errors import DrawnetError

    model = controlled_model()
    with pytest.raises(DrawnetError):
        animate_samples(model, 0, tmp_path / "s.gif", tmp_path / "p.png")
    with pytest.raises(DrawnetError):
        animate_reconstructions(model, torch.rand(2, 1, 20, 20), tmp_path / "r.gif", tmp_path / "r.png")


def test_models_without_attention_animate(tmp_path):
    model = DRAW(DrawConfig(T=2, enc_size=16, dec_size=16, z_size=4, read_attention=False, write_attention=False))
    gif, _ = animate_reconstructions(model, torch.rand(2, 1, 28, 28), tmp_path / "r.gif", tmp_path / "r.png")
    frames, _ = gif_frames(gif)
    assert len(frames) == 3 and not any(colour_mask(f, WRITE_COLOUR).any() for f in frames)


def test_save_grid_still_works(tmp_path):
    path = save_grid(torch.rand(5, 1, 28, 28), tmp_path / "g.png", nrow=4)
    assert Image.open(path).size == (4 * (56 + 2) + 2, 2 * (56 + 2) + 2)


def test_curve_limits_show_the_late_epochs_of_every_run():
    def history(*bounds):
        return [{"epoch": i + 1, "valid_bound": b, "wall_time_s": 60.0 * (i + 1)} for i, b in enumerate(bounds)]

    runs = {"attention": history(188.8, 95.0, 84.2, 83.9), "no attention": history(116.0, 90.0, 87.6)}
    assert curve_limits(runs) == pytest.approx((82.9, 97.6))


# --- the filterbank figure ---
def test_filterbank_figure(tmp_path):
    from drawnet.errors import DrawnetError

    image = torch.zeros(1, 28, 28)
    image[0, 6:22, 12:16] = 1.0
    path = filterbank_figure(image, tmp_path / "fb.png")
    arr = np.asarray(Image.open(path).convert("RGB"))
    assert arr.shape[0] >= 28 * 10 and arr.shape[1] > arr.shape[0]  # the image and the patches beside it
    for colour in [(0, 200, 0), (0, 120, 255), (255, 140, 0), (255, 0, 0)]:  # 3 windows + the dot grid
        assert colour_mask(arr, colour).any(), colour
    with pytest.raises(DrawnetError):
        filterbank_figure(torch.zeros(28, 28), tmp_path / "bad.png")
    with pytest.raises(DrawnetError):
        filterbank_figure(image, tmp_path / "bad.png", settings=[(14.5, 14.5, 1.0)])


# --- the command line ---
@pytest.fixture
def tiny_model_dir(tmp_path):
    path = tmp_path / "model"
    DRAW(DrawConfig(T=3, enc_size=16, dec_size=16, z_size=4)).save_pretrained(path)
    return path


def test_cli_animate(run_cli, tiny_model_dir, tmp_path):
    out = tmp_path / "anim"
    code, stdout, err = run_cli("animate", "--model", tiny_model_dir, "--out-dir", out, "-n", 4)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["progression.png", "samples.gif"]
    assert str(out / "samples.gif") in stdout and str(out / "progression.png") in stdout
    assert Image.open(out / "samples.gif").n_frames == 4


def test_cli_animate_reconstruct(run_cli, tiny_model_dir, tmp_path, mnist):
    out = tmp_path / "anim"
    code, stdout, err = run_cli("animate", "--model", tiny_model_dir, "--out-dir", out, "-n", 3, "--reconstruct")
    assert code == 0, err
    names = ["progression.png", "reconstruction.gif", "reconstruction_progression.png", "samples.gif"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert all(str(out / name) in stdout for name in names)
    assert Image.open(out / "reconstruction.gif").n_frames == 4
    # rows: 3 test images; columns: glimpses 1..3, then the (binarised) image itself
    assert Image.open(out / "reconstruction_progression.png").size == (4 * 58 + 2, 3 * 58 + 2)


def test_cli_filterbank(run_cli, tmp_path, mnist, one_line_error):
    out = tmp_path / "fig" / "fb.png"
    code, stdout, err = run_cli("filterbank", "--out", out)
    assert code == 0, err
    assert str(out) in stdout and Image.open(out).size[0] > 280
    one_line_error(*run_cli("filterbank", "--out", out, "--index", 10**6)[::2])


def test_cli_animate_errors(run_cli, tmp_path, one_line_error):
    one_line_error(*run_cli("animate", "--model", tmp_path / "missing", "--out-dir", tmp_path)[::2])
