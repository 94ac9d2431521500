"""The Gaussian filterbank (SPEC.md "Read and write"), checked against plain-Python reference values."""
import math

import pytest
import torch

from drawnet.attention import Window, filterbank, read_attention, window_from_params, write_attention


def reference_filters(g: float, delta: float, sigma2: float, N: int, size: int):
    """SPEC.md, 1-based: mu_i = g + (i - N/2 - 0.5) delta, F[i, a] = exp(-(a - mu_i)^2 / (2 sigma2)) / Z."""
    rows = []
    for i in range(1, N + 1):
        mu = g + (i - N / 2 - 0.5) * delta
        row = [math.exp(-((a - mu) ** 2) / (2 * sigma2)) for a in range(1, size + 1)]
        Z = sum(row)
        rows.append([v / Z for v in row])
    return rows


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def windows_inside(N, A, B):
    """(gx, gy, sigma2, delta) per image, chosen so that every filter centre lies on (or within a pixel
    of) the image; several images per batch, so mixing up batch entries would show."""
    span = (min(A, B) - 1) / max(N - 1, 1)
    return [
        (0.5 * (A + 1), 0.5 * (B + 1), 1.0, 0.8 * span),
        (0.4 * (A + 1), 0.6 * (B + 1), 4.0, 0.5 * span),
        (0.55 * (A + 1), 0.45 * (B + 1), 0.5, 0.3 * span),
    ]


@pytest.mark.parametrize("N, A, B", [(3, 7, 5), (4, 6, 9), (2, 8, 8), (1, 5, 4), (5, 12, 7)])
def test_filterbank_matches_hand_computed_values(N, A, B):
    windows = windows_inside(N, A, B)
    gx, gy, sigma2, delta = (t(*col) for col in zip(*windows))
    Fx, Fy = filterbank(gx, gy, sigma2, delta, N, A, B)
    assert Fx.shape == (len(windows), N, A)
    assert Fy.shape == (len(windows), N, B)
    for k, (wx, wy, s2, d) in enumerate(windows):
        # Fx uses gx and the width A; Fy uses gy and the height B (catches mu_x used for Fy, A/B swapped,
        # 0-based indices and sigma2 squared twice).
        assert torch.allclose(Fx[k], torch.tensor(reference_filters(wx, d, s2, N, A), dtype=torch.float64),
                              rtol=1e-6, atol=1e-9)
        assert torch.allclose(Fy[k], torch.tensor(reference_filters(wy, d, s2, N, B), dtype=torch.float64),
                              rtol=1e-6, atol=1e-9)


def test_filterbank_hand_computed_small_case():
    # One fully written-out case: N = 2, A = 3, B = 2, gx = 2, gy = 1.5, delta = 1, sigma2 = 2.
    # mu_x = 1.5, 2.5; mu_y = 1, 2.
    Fx, Fy = filterbank(t(2.0), t(1.5), t(2.0), t(1.0), 2, 3, 2)
    e = lambda d: math.exp(-d * d / 4)  # noqa: E731
    fx1 = [e(0.5), e(0.5), e(1.5)]
    fx2 = [e(1.5), e(0.5), e(0.5)]
    fy1 = [e(0.0), e(1.0)]
    fy2 = [e(1.0), e(0.0)]
    norm = lambda r: [v / sum(r) for v in r]  # noqa: E731
    assert torch.allclose(Fx[0], torch.tensor([norm(fx1), norm(fx2)], dtype=torch.float64), rtol=1e-7)
    assert torch.allclose(Fy[0], torch.tensor([norm(fy1), norm(fy2)], dtype=torch.float64), rtol=1e-7)


def test_filterbank_is_one_based():
    # A very narrow filter centred on pixel a = 1 selects the first column, a = A the last column.
    A, B = 6, 4
    Fx, Fy = filterbank(t(1.0, 6.0), t(4.0, 1.0), t(1e-3, 1e-3), t(1.0, 1.0), 1, A, B)
    assert torch.allclose(Fx[0, 0], torch.nn.functional.one_hot(torch.tensor(0), A).double())
    assert torch.allclose(Fx[1, 0], torch.nn.functional.one_hot(torch.tensor(A - 1), A).double())
    assert torch.allclose(Fy[0, 0], torch.nn.functional.one_hot(torch.tensor(B - 1), B).double())
    assert torch.allclose(Fy[1, 0], torch.nn.functional.one_hot(torch.tensor(0), B).double())


def test_filter_rows_sum_to_one():
    gen = torch.Generator().manual_seed(1)
    n, N, A, B = 16, 5, 30, 20
    delta = torch.rand(n, generator=gen) * 1.5 + 0.5  # the grid reaches at most 2 * 2 = 4 pixels from g
    gx = torch.rand(n, generator=gen) * (A - 9) + 5  # so every filter centre lies inside the image
    gy = torch.rand(n, generator=gen) * (B - 9) + 5
    sigma2 = torch.rand(n, generator=gen) * 3 + 0.2
    Fx, Fy = filterbank(gx, gy, sigma2, delta, N, A, B)
    assert Fx.shape == (n, N, A) and Fy.shape == (n, N, B)
    assert torch.allclose(Fx.sum(-1), torch.ones(n, N), atol=1e-5)
    assert torch.allclose(Fy.sum(-1), torch.ones(n, N), atol=1e-5)
    assert (Fx >= 0).all() and (Fy >= 0).all()


def test_filter_rows_sum_to_one_a_few_pixels_outside():
    # Centre 3 pixels left of the image, sigma2 = 0.5: Z = sum_a exp(-(a - mu)^2) ~ 1.2e-4, no underflow.
    Fx, _ = filterbank(t(-2.0), t(3.0), t(0.5), t(1.0), 1, 10, 6)
    assert Fx.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_filterbank_does_not_produce_nan_far_outside_the_image():
    # Z underflows to 0 for a narrow filter far away; the epsilon guard must keep the result finite.
    Fx, Fy = filterbank(t(-500.0), t(900.0), t(0.01), t(1.0), 3, 10, 10)
    assert torch.isfinite(Fx).all() and torch.isfinite(Fy).all()


def test_filter_centre_of_mass_is_mu_inside_the_image():
    N, A, B = 4, 40, 30
    gx, gy, delta, sigma2 = 20.3, 14.6, 2.5, 1.0
    Fx, Fy = filterbank(t(gx), t(gy), t(sigma2), t(delta), N, A, B)
    a = torch.arange(1, A + 1, dtype=torch.float64)
    b = torch.arange(1, B + 1, dtype=torch.float64)
    for i in range(1, N + 1):
        offset = (i - N / 2 - 0.5) * delta
        assert (Fx[0, i - 1] * a).sum().item() == pytest.approx(gx + offset, abs=1e-6)
        assert (Fy[0, i - 1] * b).sum().item() == pytest.approx(gy + offset, abs=1e-6)
    # The grid is centred on (gx, gy) and its spacing is delta.
    com_x = (Fx[0] * a).sum(-1)
    assert com_x.mean().item() == pytest.approx(gx, abs=1e-6)
    assert torch.allclose(com_x.diff(), torch.full((N - 1,), delta, dtype=torch.float64), atol=1e-6)


def test_window_from_params_zeros_is_the_centred_full_window():
    N, A, B = 3, 7, 5
    w = window_from_params(torch.zeros(2, 5, dtype=torch.float64), N, A, B)
    assert isinstance(w, Window)
    for field in w:
        assert field.shape == (2,)
    assert torch.allclose(w.gx, t((A + 1) / 2, (A + 1) / 2))
    assert torch.allclose(w.gy, t((B + 1) / 2, (B + 1) / 2))
    assert torch.allclose(w.delta, t((max(A, B) - 1) / (N - 1), (max(A, B) - 1) / (N - 1)))
    assert torch.allclose(w.sigma2, t(1.0, 1.0))
    assert torch.allclose(w.gamma, t(1.0, 1.0))


def test_window_from_params_nonzero():
    N, A, B = 4, 9, 12  # max(A, B) is the height here
    params = t(0.5, -0.25, math.log(2.0), math.log(0.5), math.log(3.0))[None]
    w = window_from_params(params, N, A, B)
    assert w.gx.item() == pytest.approx((A + 1) / 2 * 1.5)
    assert w.gy.item() == pytest.approx((B + 1) / 2 * 0.75)
    assert w.sigma2.item() == pytest.approx(2.0)
    assert w.delta.item() == pytest.approx((max(A, B) - 1) / (N - 1) * 0.5)
    assert w.gamma.item() == pytest.approx(3.0)


def test_single_filter_N1():
    w = window_from_params(torch.zeros(1, 5, dtype=torch.float64), 1, 7, 5)
    assert torch.isfinite(w.delta).all()
    Fx, Fy = filterbank(w.gx, w.gy, w.sigma2, w.delta, 1, 7, 5)
    assert Fx.shape == (1, 1, 7) and Fy.shape == (1, 1, 5)
    assert torch.allclose(Fx[0], torch.tensor(reference_filters(4.0, 0.0, 1.0, 1, 7), dtype=torch.float64))
    assert torch.allclose(Fy[0], torch.tensor(reference_filters(3.0, 0.0, 1.0, 1, 5), dtype=torch.float64))
    # With N = 1 delta plays no part.
    Fx2, _ = filterbank(w.gx, w.gy, w.sigma2, w.delta * 7.3, 1, 7, 5)
    assert torch.allclose(Fx, Fx2)


@pytest.mark.parametrize("bad", ["gx", "gy", "sigma2", "delta"])
@pytest.mark.parametrize("shape", [(2, 1), ()])
def test_filterbank_rejects_non_1d_inputs(bad, shape):
    args = {name: torch.ones(2) for name in ("gx", "gy", "sigma2", "delta")}
    args[bad] = torch.ones(shape)
    with pytest.raises(ValueError, match="1-D"):
        filterbank(args["gx"], args["gy"], args["sigma2"], args["delta"], 3, 8, 8)


def _crop_filters(gx, gy, N, A, B, sigma2=1e-4):
    """delta = 1 and a tiny sigma2: filters that pick single pixels."""
    return filterbank(t(gx), t(gy), t(sigma2), t(1.0), N, A, B)


@pytest.mark.parametrize("N, gx, gy, x0, y0", [
    (3, 4.0, 3.0, 2, 1),  # odd N: mu_x = 3, 4, 5 -> 0-based columns 2..4; mu_y = 2, 3, 4 -> rows 1..3
    (4, 4.5, 5.5, 2, 3),  # even N: mu_x = 3, 4, 5, 6 -> columns 2..5; mu_y = 4, 5, 6, 7 -> rows 3..6
])
def test_read_is_an_exact_crop_times_gamma(N, gx, gy, x0, y0):
    A, B = 8, 9  # width 8, height 9: the image array is [batch, C, 9, 8]
    x = torch.rand(1, 1, B, A, dtype=torch.float64)
    Fx, Fy = _crop_filters(gx, gy, N, A, B)
    patch = read_attention(x, Fx, Fy, t(2.5))
    assert patch.shape == (1, 1, N, N)
    expected = 2.5 * x[0, 0, y0 : y0 + N, x0 : x0 + N]
    assert torch.allclose(patch[0, 0], expected, atol=1e-10)


def test_read_crop_non_square_explicit_indices():
    # Width A = 10, height B = 6, N = 2, delta = 1: mu_x = gx - 0.5, gx + 0.5; mu_y likewise.
    A, B = 10, 6
    x = torch.arange(B * A, dtype=torch.float64).view(1, 1, B, A)
    Fx, Fy = _crop_filters(8.5, 2.5, 2, A, B)  # columns a = 8, 9 and rows b = 2, 3 (1-based)
    patch = read_attention(x, Fx, Fy, t(1.0))
    expected = torch.tensor([[x[0, 0, 1, 7], x[0, 0, 1, 8]], [x[0, 0, 2, 7], x[0, 0, 2, 8]]])
    assert torch.allclose(patch[0, 0], expected)


def test_write_places_patch_divided_by_gamma():
    A, B, N = 8, 9, 3
    Fx, Fy = _crop_filters(5.0, 7.0, N, A, B)  # columns a = 4..6, rows b = 6..8 (1-based)
    w = torch.randn(1, 2, N, N, dtype=torch.float64)
    image = write_attention(w, Fx, Fy, t(4.0))
    assert image.shape == (1, 2, B, A)
    expected = torch.zeros(1, 2, B, A, dtype=torch.float64)
    expected[0, :, 5:8, 3:6] = w[0] / 4.0
    assert torch.allclose(image, expected, atol=1e-10)


def test_read_and_write_shapes_batched():
    b, C, N, A, B = 3, 2, 4, 11, 7
    gen = torch.Generator().manual_seed(2)
    params = torch.randn(b, 5, generator=gen)
    w = window_from_params(params, N, A, B)
    Fx, Fy = filterbank(w.gx, w.gy, w.sigma2, w.delta, N, A, B)
    x = torch.rand(b, C, B, A, generator=gen)
    r = read_attention(x, Fx, Fy, w.gamma)
    assert r.shape == (b, C, N, N)
    out = write_attention(torch.randn(b, C, N, N, generator=gen), Fx, Fy, w.gamma)
    assert out.shape == (b, C, B, A)
    # Each image uses its own window: reading image k alone gives the same patch.
    for k in range(b):
        rk = read_attention(x[k : k + 1], Fx[k : k + 1], Fy[k : k + 1], w.gamma[k : k + 1])
        assert torch.allclose(rk, r[k : k + 1], atol=1e-6)


def test_read_and_write_match_explicit_matrix_products():
    gen = torch.Generator().manual_seed(3)
    b, C, N, A, B = 2, 3, 3, 9, 6
    w = window_from_params(torch.randn(b, 5, generator=gen, dtype=torch.float64), N, A, B)
    Fx, Fy = filterbank(w.gx, w.gy, w.sigma2, w.delta, N, A, B)
    x = torch.rand(b, C, B, A, generator=gen, dtype=torch.float64)
    patch = torch.randn(b, C, N, N, generator=gen, dtype=torch.float64)
    r = read_attention(x, Fx, Fy, w.gamma)
    img = write_attention(patch, Fx, Fy, w.gamma)
    for k in range(b):
        for c in range(C):
            # Colour: the same filters on every channel.
            assert torch.allclose(r[k, c], w.gamma[k] * Fy[k] @ x[k, c] @ Fx[k].T)
            assert torch.allclose(img[k, c], Fy[k].T @ patch[k, c] @ Fx[k] / w.gamma[k])


def test_colour_read_and_write_equal_per_channel_operations():
    gen = torch.Generator().manual_seed(4)
    b, C, N, A, B = 2, 3, 5, 12, 10
    w = window_from_params(torch.randn(b, 5, generator=gen) * 0.5, N, A, B)
    Fx, Fy = filterbank(w.gx, w.gy, w.sigma2, w.delta, N, A, B)
    x = torch.rand(b, C, B, A, generator=gen)
    r = read_attention(x, Fx, Fy, w.gamma)
    per_channel = torch.cat([read_attention(x[:, c : c + 1], Fx, Fy, w.gamma) for c in range(C)], dim=1)
    assert torch.allclose(r, per_channel, atol=1e-6)
    patch = torch.randn(b, C, N, N, generator=gen)
    img = write_attention(patch, Fx, Fy, w.gamma)
    per_channel = torch.cat([write_attention(patch[:, c : c + 1], Fx, Fy, w.gamma) for c in range(C)], dim=1)
    assert torch.allclose(img, per_channel, atol=1e-6)


def test_write_is_the_adjoint_of_read_for_unit_gamma():
    # <Fy x Fx^T, w> = <x, Fy^T w Fx>: read and write use the filters the same way round.
    gen = torch.Generator().manual_seed(5)
    b, C, N, A, B = 2, 1, 4, 13, 8
    w = window_from_params(torch.randn(b, 5, generator=gen, dtype=torch.float64), N, A, B)
    Fx, Fy = filterbank(w.gx, w.gy, w.sigma2, w.delta, N, A, B)
    one = torch.ones(b, dtype=torch.float64)
    x = torch.randn(b, C, B, A, generator=gen, dtype=torch.float64)
    patch = torch.randn(b, C, N, N, generator=gen, dtype=torch.float64)
    lhs = (read_attention(x, Fx, Fy, one) * patch).sum()
    rhs = (x * write_attention(patch, Fx, Fy, one)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-10)
