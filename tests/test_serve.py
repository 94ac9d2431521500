"""drawnet serve: the JSON API against the models' own generations, every request bound, the CLI command, and
the page end to end in headless Chromium (Debian's chromium package)."""
import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from drawnet import DRAW, DrawConfig
from drawnet.cli import _load_model, build_parser
from drawnet.captions import encode_captions, parse_caption
from drawnet.serve import EXAMPLE_CAPTIONS, MAX_BODY, MAX_CAPTION, MAX_SEED, display_scale, make_server
from drawnet.visualize import WRITE_COLOUR, draw_window, rgb_tiles, to_uint8, window_line_width, window_rectangle

CHROMIUM = shutil.which("chromium")
CAPTION = "the digit 7 is on the left of the digit 1"


@pytest.fixture(scope="module")
def models():
    """The shipped mnist model and tiny, untrained label and caption models (their drawings are noise, but the
    server treats them like any other)."""
    torch.manual_seed(0)
    tiny = dict(T=3, enc_size=16, dec_size=16, z_size=4)
    return {
        "mnist": _load_model("mnist"),
        "label": DRAW(DrawConfig(num_classes=10, **tiny)),
        "caption": DRAW(DrawConfig.preset("mnist-captions", caption_size=8, align_size=8, **tiny)),
    }


@pytest.fixture(scope="module")
def server(models):
    server = make_server(models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def request(server, path, body=None):
    """(status, parsed JSON or text) of a GET, or of a POST when body (bytes or a JSON-able object) is given."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(server.url.rstrip("/") + path, data), timeout=30) as r:
            status, kind, raw = r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        status, kind, raw = e.code, e.headers["Content-Type"], e.read()
    return status, json.loads(raw) if kind == "application/json" else raw.decode()


def expected_generation(model, seed, y=None):
    return model.generate(1, generator=torch.Generator().manual_seed(seed), y=y)


def test_models_are_listed(server, models):
    status, listed = request(server, "/api/models")
    assert status == 200
    assert [m["name"] for m in listed] == list(models)
    mnist, label, caption = listed
    assert mnist == dict(name="mnist", kind="unconditional", T=64, height=28, width=28, channels=1, scale=12)
    assert (label["kind"], label["classes"], label["T"]) == ("label", 10, 3)
    assert (caption["kind"], caption["height"], caption["width"]) == ("caption", 60, 60)
    assert caption["examples"] == list(EXAMPLE_CAPTIONS)
    for example in EXAMPLE_CAPTIONS:
        parse_caption(example)  # every example is a caption of the grammar


def test_the_page_is_served_with_or_without_a_query(server):
    for path in ("/", "/?model=mnist&autoplay=1"):
        status, page = request(server, path)
        assert status == 200 and "<canvas" in page and "/api/draw" in page


def test_a_drawing_is_the_models_generation(server, models):
    model = models["mnist"]
    status, answer = request(server, "/api/draw", {"model": "mnist", "seed": 7})
    assert status == 200
    scale = display_scale(model)
    assert (answer["T"], answer["height"], answer["width"], answer["scale"], answer["seed"]) == (64, 28, 28, scale, 7)
    gen = expected_generation(model, 7)
    pixels, w = to_uint8(gen.canvases[:, 0]), gen.write_windows
    assert len(answer["frames"]) == model.config.T
    for t, frame in enumerate(answer["frames"]):
        assert base64.b64decode(frame["pixels"]) == pixels[t].tobytes()
        rect = window_rectangle(w.gx[t, 0], w.gy[t, 0], w.delta[t, 0], model.config.write_n, scale)
        window = frame["window"]
        assert [window[k] for k in ("x0", "y0", "x1", "y1")] == pytest.approx(rect, abs=1e-3)
        assert window["line_width"] == window_line_width(w.sigma2[t, 0], scale)
    # A 28x28, T = 64 drawing is small; a 60x60 one has about 4.6 times the pixels.
    assert len(json.dumps(answer)) < 100_000
    _, again = request(server, "/api/draw", {"model": "mnist", "seed": 7})
    assert again == answer
    _, other = request(server, "/api/draw", {"model": "mnist", "seed": 8})
    assert other["frames"][-1]["pixels"] != answer["frames"][-1]["pixels"]


def test_a_label_model_draws_the_digit_asked_for(server, models):
    status, answer = request(server, "/api/draw", {"model": "label", "digit": 3, "seed": 1})
    assert status == 200 and answer["kind"] == "label"
    gen = expected_generation(models["label"], 1, torch.tensor([3]))
    expected = [frame.tobytes() for frame in to_uint8(gen.canvases[:, 0])]
    assert [base64.b64decode(frame["pixels"]) for frame in answer["frames"]] == expected


def test_a_caption_model_reports_its_attention_over_the_words(server, models):
    status, answer = request(server, "/api/draw", {"model": "caption", "caption": CAPTION.upper(), "seed": 2})
    assert status == 200
    assert answer["words"] == CAPTION.split()  # as the model reads them: lower case
    gen = expected_generation(models["caption"], 2, encode_captions([CAPTION]))
    assert len(answer["frames"]) == 3
    for t, frame in enumerate(answer["frames"]):
        assert base64.b64decode(frame["pixels"]) == to_uint8(gen.canvases[t])[0].tobytes()
        expected = gen.alignments[t, 0, : len(answer["words"])].tolist()
        assert frame["attention"] == pytest.approx(expected, abs=1e-4)
        assert sum(frame["attention"]) == pytest.approx(1, abs=1e-3)


def test_a_60x60_drawing_with_64_glimpses_stays_well_under_a_megabyte(models):
    model = DRAW(DrawConfig.preset("two-digit-mnist", enc_size=16, dec_size=16, z_size=4))
    server = make_server({"two": model})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, answer = request(server, "/api/draw", {"model": "two", "seed": 0})
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200 and len(answer["frames"]) == 64
    assert len(json.dumps(answer)) < 400_000


LABEL_RANGE = "digit must be an integer from 0 to 9"
SEED_RANGE = f"seed must be an integer from 0 to {MAX_SEED}"


@pytest.mark.parametrize("body, needle", [
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
    ({"model": "mnist", "size": 100}, "unknown field(s) size"),
    ({"model": "nope"}, 'unknown model "nope"; choose from mnist, label, caption'),
    ({}, "unknown model null"),
    ({"model": ["mnist"]}, 'unknown model ["mnist"]'),
    ({"model": "mnist", "digit": 3}, "model mnist is unconditional: it takes no digit"),
    ({"model": "mnist", "caption": CAPTION}, "takes no caption"),
    ({"model": "label"}, "the request needs one"),
    ({"model": "label", "digit": 10}, LABEL_RANGE),
    ({"model": "label", "digit": -1}, LABEL_RANGE),
    ({"model": "label", "digit": "3"}, LABEL_RANGE),
    ({"model": "label", "digit": 3.0}, LABEL_RANGE),
    ({"model": "label", "digit": True}, LABEL_RANGE),
    ({"model": "label", "digit": 3, "caption": CAPTION}, "model label is label: it takes no caption"),
    ({"model": "caption"}, "the request needs one"),
    ({"model": "caption", "caption": 7}, "caption must be a non-empty string"),
    ({"model": "caption", "caption": "  "}, "caption must be a non-empty string"),
    ({"model": "caption", "caption": "the digit 1 " * 20}, f"at most {MAX_CAPTION} are allowed"),
    ({"model": "caption", "caption": "the digit 3 is on the moon"}, "unknown word 'moon'"),
    ({"model": "caption", "caption": "the digit 3 is on the left of the digit 3"}, "not a caption this data set knows"),
    ({"model": "mnist", "seed": -1}, SEED_RANGE),
    ({"model": "mnist", "seed": MAX_SEED + 1}, SEED_RANGE),
    ({"model": "mnist", "seed": "0"}, SEED_RANGE),
    ({"model": "mnist", "seed": 0.5}, SEED_RANGE),
    ({"model": "mnist", "seed": None}, SEED_RANGE),
])
def test_bad_requests_get_400_and_one_line(server, body, needle):
    status, answer = request(server, "/api/draw", body)
    assert status == 400
    assert needle in answer["error"]
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]


def test_request_bodies_are_bounded(server):
    status, answer = request(server, "/api/draw", b" " * (MAX_BODY + 1))
    assert status == 413 and f"over {MAX_BODY} bytes" in answer["error"]
    assert request(server, "/api/draw", b" " * MAX_BODY)[0] == 400  # the bound itself is allowed (and not JSON)
    # The size is refused from the header alone: the server answers without waiting for the gigabyte.
    for length, status in (("1000000000", 413), ("", 411), ("-1", 411), ("1e3", 411)):
        conn = http.client.HTTPConnection(server.server_address[0], server.server_address[1], timeout=10)
        conn.putrequest("POST", "/api/draw")
        if length:
            conn.putheader("Content-Length", length)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == status, length
        assert "error" in json.loads(response.read())
        conn.close()


def test_unknown_paths_are_404(server):
    for path, body in (("/nope", None), ("/api/draw", None), ("/api/models/x", None), ("/api/other", b"{}")):
        status, answer = request(server, path, body)
        assert status == 404 and answer["error"]


def test_one_generation_at_a_time(server, models, monkeypatch):
    model, running, overlaps = models["label"], [], []
    generate = model.generate

    def slow_generate(*args, **kwargs):
        running.append(1)
        overlaps.append(len(running))
        time.sleep(0.05)
        running.pop()
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", slow_generate)
    statuses = []
    threads = [threading.Thread(target=lambda s=s: statuses.append(
        request(server, "/api/draw", {"model": "label", "digit": 1, "seed": s})[0])) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 4 and overlaps == [1] * 4


def test_the_server_listens_on_localhost_by_default(models):
    server = make_server({"mnist": models["mnist"]})
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 8000, None)


def test_the_serve_command_prints_its_url_and_serves(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "drawnet.cli", "serve", "--port", "0", "--model", "mnist",
                                "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()  # the first line, once the server listens
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, (line, process.poll())
        with urllib.request.urlopen(url.group() + "api/models", timeout=30) as r:
            assert [m["name"] for m in json.loads(r.read())] == ["mnist"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_serve_command_reports_a_missing_model_in_one_line(tmp_path, run_cli, one_line_error):
    code, _, err = run_cli("serve", "--port", "0", "--model", tmp_path / "nope")
    one_line_error(code, err)
    assert "no model found" in err


# --- the page in headless Chromium ---

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("DRAWNET_REQUIRE_CHROMIUM"),
    reason="Debian's chromium is not installed (apt-get install chromium); DRAWNET_REQUIRE_CHROMIUM=1 fails instead",
)


def chromium(server, query, tmp_path, *flags):
    """Open the page at ?query in headless Chromium and let it run 20 s of virtual time (the animations take
    at most 64 x 80 ms); returns the DOM at the end."""
    assert CHROMIUM, "DRAWNET_REQUIRE_CHROMIUM is set but chromium is not installed"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", *flags, "--dump-dom",
         f"{server.url}?{query}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@needs_chromium
def test_the_page_draws_the_last_glimpse_in_chromium(server, models, tmp_path):
    shot = tmp_path / "page.png"
    dom = chromium(server, "model=mnist&autoplay=1&seed=0", tmp_path, "--window-size=800,640", f"--screenshot={shot}")
    assert "<title>drawnet: done</title>" in dom and "glimpse 64 / 64" in dom

    # What the page should show: the last canvas upscaled with its write window, as the GIFs draw it.
    model, scale = models["mnist"], display_scale(models["mnist"])
    gen = expected_generation(model, 0)
    w = gen.write_windows
    expected = rgb_tiles(gen.canvases[-1], scale)[0]
    draw_window(expected, w.gx[-1, 0], w.gy[-1, 0], w.sigma2[-1, 0], w.delta[-1, 0], model.config.write_n, scale,
                WRITE_COLOUR)

    with Image.open(shot) as img:
        page = np.asarray(img.convert("RGB"))
    red_on_page, red_expected = (np.argwhere((a == WRITE_COLOUR).all(-1)) for a in (page, expected))
    assert len(red_on_page) == len(red_expected) > 0, "the write window's rectangle is not on the page"
    top, left = red_on_page.min(0) - red_expected.min(0)  # where the canvas is on the page
    canvas = page[top : top + expected.shape[0], left : left + expected.shape[1]]
    assert canvas.shape == expected.shape
    assert np.abs(canvas.astype(int) - expected).max() <= 2
    grey = canvas[~(canvas == WRITE_COLOUR).all(-1)][:, 0]
    assert (grey < 30).mean() > 0.5 and (grey > 225).sum() > 100  # a dark background and bright strokes


@needs_chromium
def test_the_page_highlights_the_words_of_a_caption_in_chromium(server, tmp_path):
    dom = chromium(server, f"model=caption&caption={CAPTION.replace(' ', '+')}&autoplay=1&seed=3", tmp_path)
    assert "<title>drawnet: done</title>" in dom and "glimpse 3 / 3" in dom
    # each word highlighted by its weight at the last glimpse, which its tooltip gives
    highlighted = re.findall(r'<span title="attention ([0-9.]+)" style="background: rgba[^"]*;">(\w+)</span>', dom)
    assert [word for _, word in highlighted] == CAPTION.split()
    _, answer = request(server, "/api/draw", {"model": "caption", "caption": CAPTION, "seed": 3})
    assert [float(a) for a, _ in highlighted] == pytest.approx(answer["frames"][-1]["attention"], abs=6e-4)


@needs_chromium
def test_the_page_shows_errors_in_chromium(server, tmp_path):
    dom = chromium(server, "model=label&digit=12&autoplay=1", tmp_path)
    assert "<title>drawnet: error</title>" in dom and "digit must be an integer from 0 to 9, got 12" in dom
    dom = chromium(server, "model=nope&autoplay=1", tmp_path)
    assert "<title>drawnet: error</title>" in dom and "unknown model" in dom
