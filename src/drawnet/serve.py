"""`drawnet serve`: a local web page that draws with a model glimpse by glimpse (standard library HTTP only).

GET /              the page (serve.html, next to this file)
GET /api/models    [{name, kind, T, height, width, channels, scale, classes?, examples?}, ...]; kind is
                   "unconditional", "label" (classes: digits 0..classes-1) or "caption" (examples: captions)
POST /api/draw     {model, digit?, caption?, seed?} -> {model, kind, T, height, width, channels, scale, seed,
                   words?, frames}: frames[t] is glimpse t + 1 as {pixels, window, attention?}, where pixels
                   is the canvas at the model's resolution, base64 of its height x width x channels bytes
                   (visualize.to_uint8, row by row), window is the write window as {x0, y0, x1, y1,
                   line_width} in the pixels of that image upscaled `scale` times (visualize.window_rectangle
                   and window_line_width; null without write attention) and attention, for caption models, is
                   the weight of each of `words` at that glimpse.

A model takes exactly the fields it is conditioned on: a digit for label models, a caption for caption
models, neither for unconditional ones. Bad requests get 400 (413 for an oversized body) and {"error": one
line}; nothing else about the server reaches the client.
"""
import base64
import json
import logging
import math
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import torch

# EXAMPLE_CAPTIONS are offered for caption models; the first prefills the caption box
from .captions import EXAMPLE_CAPTIONS, decode_caption, encode_captions, parse_caption
from .errors import DrawnetError
from .visualize import to_uint8, window_line_width, window_rectangle

MAX_BODY = 4096  # bytes in a /api/draw request; a real one is under 300
MAX_CAPTION = 200  # characters in a caption
MAX_SEED = 2**31 - 1
DISPLAY_SIZE = 336  # frames are shown upscaled by an integer factor to at most this many pixels a side
PAGE = Path(__file__).with_name("serve.html")

log = logging.getLogger(__name__)


def model_kind(model) -> str:
    return model.condition or "unconditional"


def display_scale(model) -> int:
    return max(1, DISPLAY_SIZE // max(model.config.height, model.config.width))


def describe(name: str, model) -> dict:
    """One entry of /api/models."""
    cfg = model.config
    info = dict(name=name, kind=model_kind(model), T=cfg.T, height=cfg.height, width=cfg.width,
                channels=cfg.channels, scale=display_scale(model))
    if cfg.num_classes:
        info["classes"] = cfg.num_classes
    if cfg.vocab_size:
        info["examples"] = list(EXAMPLE_CAPTIONS)
    return info


def _bounded_int(request: dict, field: str, low: int, high: int) -> int:
    value = request[field]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DrawnetError(f"{field} must be an integer from {low} to {high}, got {json.dumps(value)[:40]}")
    return value


def parse_request(body: bytes, models: dict):
    """(name, model, y, seed, words) from a /api/draw body, or DrawnetError with a one-line message."""
    try:
        request = json.loads(body)
    except ValueError:  # UnicodeDecodeError as well as JSONDecodeError
        raise DrawnetError("the request body is not valid JSON") from None
    except RecursionError:
        raise DrawnetError("the request body is JSON nested too deeply") from None
    if not isinstance(request, dict):
        raise DrawnetError("the request body must be a JSON object")
    unknown = sorted(set(request) - {"model", "digit", "caption", "seed"})
    if unknown:
        raise DrawnetError(f"unknown field(s) {', '.join(unknown)[:100]}; expected model, digit, caption, seed")
    name = request.get("model")
    if not isinstance(name, str) or name not in models:
        raise DrawnetError(f"unknown model {json.dumps(name)[:60]}; choose from {', '.join(models)}")
    model = models[name]
    seed = _bounded_int(request, "seed", 0, MAX_SEED) if "seed" in request else 0
    kind = model_kind(model)
    takes = {"label": "digit", "caption": "caption"}.get(kind)
    for field in ("digit", "caption"):
        if field in request and field != takes:
            raise DrawnetError(f"model {name} is {kind}: it takes no {field}")
    if takes and takes not in request:
        raise DrawnetError(f"model {name} draws a given {takes}: the request needs one")
    y, words = None, None
    if kind == "label":
        y = torch.tensor([_bounded_int(request, "digit", 0, model.config.num_classes - 1)])
    elif kind == "caption":
        y, words = encode_caption(request["caption"])
    return name, model, y, seed, words


def encode_caption(caption):
    """(word ids [1, MAX_WORDS], the caption's words) for a caption within the size bound and the grammar."""
    if not isinstance(caption, str) or not caption.strip():
        raise DrawnetError("caption must be a non-empty string")
    if len(caption) > MAX_CAPTION:
        raise DrawnetError(f"caption is {len(caption)} characters long; at most {MAX_CAPTION} are allowed")
    parse_caption(caption)
    ids = encode_captions([caption])
    return ids, decode_caption(ids[0]).split()


def draw(name: str, model, y, seed: int, words, lock: threading.Lock) -> dict:
    """Generate one image and describe its glimpses as the /api/draw response (module docstring)."""
    cfg = model.config
    device = next(model.parameters()).device
    with lock:  # one generation at a time: concurrent torch calls would only share the same cores
        gen = model.generate(1, generator=torch.Generator(device=device).manual_seed(seed),
                             y=None if y is None else y.to(device))
    scale = display_scale(model)
    frames = [{"pixels": base64.b64encode(frame.tobytes()).decode("ascii"), "window": None}
              for frame in to_uint8(gen.canvases[:, 0])]
    if gen.write_windows is not None:
        w = gen.write_windows
        for t, frame in enumerate(frames):
            rect = window_rectangle(w.gx[t, 0], w.gy[t, 0], w.delta[t, 0], cfg.write_n, scale)
            if all(map(math.isfinite, rect)):  # JSON has no NaN or infinity; a window that far off draws nothing
                x0, y0, x1, y1 = (round(v, 3) for v in rect)
                frame["window"] = dict(x0=x0, y0=y0, x1=x1, y1=y1,
                                       line_width=window_line_width(w.sigma2[t, 0], scale))
    if words is not None:
        for frame, alignment in zip(frames, gen.alignments[:, 0, : len(words)].tolist()):
            frame["attention"] = [round(a, 4) for a in alignment]
    response = dict(model=name, kind=model_kind(model), T=cfg.T, height=cfg.height, width=cfg.width,
                    channels=cfg.channels, scale=scale, seed=seed, frames=frames)
    if words is not None:
        response["words"] = words
    return response


class DrawServer(ThreadingHTTPServer):
    """The HTTP server holding the models, by name, and the lock that serialises generation."""

    daemon_threads = True  # a stuck client must not keep the process alive after Ctrl-C

    def __init__(self, address, models: dict):
        if not models:
            raise DrawnetError("no models to serve")
        self.models = models
        self.lock = threading.Lock()
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: DrawServer
    timeout = 30  # seconds a client may take to send its request before the connection is dropped

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/":
            self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/api/models":
            self._send_json(HTTPStatus.OK, [describe(name, m) for name, m in self.server.models.items()])
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path[:100]}"})

    def do_POST(self):
        if urlsplit(self.path).path != "/api/draw":
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "POST goes to /api/draw"})
            return
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):  # also refuses chunked bodies, of unknown size
            self.close_connection = True
            self._send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "the request needs a Content-Length"})
            return
        if int(length) > MAX_BODY:  # refused before reading a byte of it
            self.close_connection = True
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            {"error": f"the request body is over {MAX_BODY} bytes"})
            return
        try:
            request = parse_request(self.rfile.read(int(length)), self.server.models)
            response = draw(*request, self.server.lock)
        except DrawnetError as e:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception:  # the traceback goes to the server's log only
            log.exception("POST /api/draw failed")
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the server's log"})
        else:
            self._send_json(HTTPStatus.OK, response)

    def _send_json(self, status, obj):
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def _send(self, status, body: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        # BaseHTTPRequestHandler writes every request to stderr; here they go to logging, shown by `drawnet serve`
        log.info("%s %s", self.address_string(), format % args)


def make_server(models: dict, host: str = "127.0.0.1", port: int = 0) -> DrawServer:
    """A server for models {name: DRAW}, listening on host:port (port 0: any free port); serve_forever() runs it."""
    return DrawServer((host, port), models)


def serve(models: dict, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until Ctrl-C, printing its URL first."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        server = make_server(models, host, port)
    except (OSError, OverflowError) as e:  # address in use or not ours, or a port beyond 65535
        raise DrawnetError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    print(f"serving {', '.join(models)} at {server.url} (Ctrl-C to stop)", flush=True)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
