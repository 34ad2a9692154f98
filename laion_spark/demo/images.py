"""The demo's image web: a loopback HTTP server that answers every image URL of the demo crawl.

INPUT  -> GET requests for any host and path (the download stage connects here through
          `download.connect_to`, keeping the crawl's own URLs and Host headers)
OUTPUT -> for a toy-shop path (/toy/<stream>/<index>.png, or <index>-wm.png for its watermarked
          preview; demo/toyshop.py) the PNG of that toy-world scene; for every other URL a
          deterministic answer chosen by a hash of host + path: mostly a generated photo-like JPEG or
          PNG (different per URL), and on purpose a few failures so the demo shows them as rows: 404,
          503, an HTML page sent as image/jpeg, and a too-small image

Nothing here leaves 127.0.0.1: the server binds to it, on a port the OS picks. There is no TLS
server: `closed_port` is a port bound on 127.0.0.1 with nobody listening, where the demo sends its
https URLs, so they fail honestly with "connection refused" (connect_error) instead of leaving the
machine or pretending to be TLS.
"""

from __future__ import annotations

import io
import random
import socket
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from laion_spark.demo.toyshop import is_toy_path, toy_png

# answers by crc32(host + path) % 20 (the rest are images)
_FAULTS = {0: "404", 1: "503", 2: "html", 3: "tiny"}


def answer_kind(host: str, path: str) -> str:
    """host + path -> 'toy', 'image', '404', '503', 'html' or 'tiny' (what the server will answer)."""
    if is_toy_path(path):
        return "toy"  # always the scene: every toy pair reaches the embed and filter stages
    return _FAULTS.get(zlib.crc32(f"{host.lower()}{path}".encode()) % 20, "image")


def demo_image(host: str, path: str, side: int = 320) -> tuple[bytes, str]:
    """host + path -> (image bytes, content type): a gradient with a coloured disc, unique per URL."""
    from PIL import Image, ImageDraw

    seed = zlib.crc32(f"{host.lower()}{path}".encode())
    colour = ((seed >> 0) & 255, (seed >> 8) & 255, (seed >> 16) & 255)
    width, height = side + seed % max(1, side // 2), side - seed % max(1, side // 4)
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(img)
    r = min(width, height) // 3
    draw.ellipse((width // 2 - r, height // 2 - r, width // 2 + r, height // 2 + r), fill=colour)
    draw.rectangle((0, 0, width // 5, height // 5), fill=tuple(255 - c for c in colour))
    # a little seeded texture: realistic file sizes (a flat image is too_small); not effect_spread or
    # effect_noise, which draw from C's rand() and would make the same URL's bytes differ between runs
    nw, nh = max(1, width // 4), max(1, height // 4)
    noise = Image.frombytes("L", (nw, nh), random.Random(seed).randbytes(nw * nh))
    img = Image.blend(img, noise.resize((width, height)).convert("RGB"), 0.05)
    out = io.BytesIO()
    if seed % 3 == 0:
        img.save(out, "PNG")
        return out.getvalue(), "image/png"
    img.save(out, "JPEG", quality=92)
    return out.getvalue(), "image/jpeg"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        path = self.path.split("?")[0]
        kind = answer_kind(host, path)
        with self.server.count_lock:  # handlers run in parallel threads: += alone can lose counts
            self.server.requests += 1
        if kind == "toy":
            self._send(200, toy_png(path), "image/png")
        elif kind in ("404", "503"):
            self._send(int(kind), b"no image here\n", "text/plain")
        elif kind == "html":
            self._send(200, b"<!doctype html><title>Not an image</title><p>Sorry.</p>", "image/jpeg")
        elif kind == "tiny":
            body, ctype = demo_image(host, path, side=16)
            self._send(200, body, ctype)
        else:
            body, ctype = demo_image(host, path)
            self._send(200, body, ctype)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # the demo prints its own report
        pass


class DemoImageServer:
    """Context manager: a threaded server on 127.0.0.1:<free port>; `.port`, `.requests`, `.closed_port`."""

    def __enter__(self) -> DemoImageServer:
        # bound but never listening: connections are refused, and no other program can take the port
        self._closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._closed.bind(("127.0.0.1", 0))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.requests = 0
        self._server.count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-images", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def closed_port(self) -> int:
        return self._closed.getsockname()[1]

    @property
    def requests(self) -> int:
        return self._server.requests

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._closed.close()
