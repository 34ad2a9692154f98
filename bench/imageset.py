"""A deterministic synthetic image set and the loopback HTTP server that serves it (for bench/download.py).

INPUT  -> a seed, a pool size and a URL count
OUTPUT -> load_pool(): the pool of distinct images (JPEG / PNG / WebP, 200x200 .. 1600x1200, smooth
          gradients + texture + noise, so JPEG sizes look like photos'), generated once and cached
          under bench/out/ keyed by seed and size; build_urls(): the URL list (pool images reused
          under different paths, spread over several loopback hosts, plus HTTP 404/500, time-outs and
          corrupt bodies), each URL with the outcome a downloader should get; serve (`python
          bench/imageset.py serve POOL_DIR ...`): the server, listening on 127.0.0.1 .. 127.0.0.N (all
          loopback, never 0.0.0.0) on one port, which it prints; it exits when its stdin closes

URL paths say what the server does, so it needs no URL table:
  /img/<i>/<pool>.<ext>   the pool image            /err/<code>/<i>.jpg   HTTP <code>
  /slow/<i>.jpg           sleeps --slow-s first     /trunc/<i>/<pool>.jpg the first half of a JPEG
  /rand/<i>.jpg           random bytes as image/jpeg
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
FORMATS = {"jpeg": ("jpg", "image/jpeg"), "png": ("png", "image/png"), "webp": ("webp", "image/webp")}
FORMAT_WEIGHTS = {"jpeg": 0.70, "png": 0.15, "webp": 0.15}
# share of the URLs per failure kind (the rest are images that should download)
FAILURE_SHARES = {"http_404": 0.035, "http_500": 0.015, "timeout": 0.002, "truncated": 0.002, "random": 0.002}
POOL_VERSION = 1


@dataclass(frozen=True)
class PoolImage:
    name: str
    format: str  # jpeg | png | webp
    width: int
    height: int
    size: int  # bytes


def _render(rng, width: int, height: int, noise: float, texture: float):
    """-> an RGB uint8 array: a smooth random field (gradients), mid-frequency texture and pixel noise."""
    import numpy as np
    from PIL import Image

    def field(cells_x: int, cells_y: int, amplitude: float):
        small = rng.uniform(0, 255, (cells_y, cells_x, 3)).astype(np.uint8)
        img = Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)
        return (np.asarray(img, dtype=np.float32) - 128.0) * amplitude

    base = field(int(rng.integers(2, 6)), int(rng.integers(2, 5)), 1.0) + 128.0
    tex = field(max(2, width // int(rng.integers(12, 40))), max(2, height // int(rng.integers(12, 40))), texture)
    grain = rng.normal(0.0, noise, (height, width, 1)).astype(np.float32)  # luminance grain
    return np.clip(base + tex + grain, 0, 255).astype(np.uint8)


def generate_pool(seed: int, size: int, directory: Path) -> list[PoolImage]:
    """Write `size` images into `directory` (+ manifest.json) -> their descriptions."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    formats = list(FORMAT_WEIGHTS)
    weights = np.array(list(FORMAT_WEIGHTS.values()))
    pool = []
    for k in range(size):
        fmt = formats[int(rng.choice(len(formats), p=weights / weights.sum()))]
        width, height = int(rng.integers(200, 1601)), int(rng.integers(200, 1201))
        # PNGs are mostly graphics-like (less grain) on the web; JPEG/WebP get photo grain
        noise = float(rng.uniform(1.0, 3.0)) if fmt == "png" else float(rng.uniform(3.0, 9.0))
        pixels = _render(rng, width, height, noise, float(rng.uniform(0.15, 0.5)))
        buf = io.BytesIO()
        if fmt == "jpeg":
            Image.fromarray(pixels).save(buf, "JPEG", quality=int(rng.integers(75, 93)))
        elif fmt == "webp":
            Image.fromarray(pixels).save(buf, "WEBP", quality=int(rng.integers(75, 91)), method=2)
        else:
            Image.fromarray(pixels).save(buf, "PNG", compress_level=6)
        data = buf.getvalue()
        ext = FORMATS[fmt][0]
        name = f"{k:04d}.{ext}"
        (directory / name).write_bytes(data)
        pool.append(PoolImage(name, fmt, width, height, len(data)))
    manifest = {"seed": seed, "size": size, "version": POOL_VERSION, "images": [p.__dict__ for p in pool]}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return pool


def pool_dir(seed: int, size: int) -> Path:
    return OUT / f"imagepool-s{seed}-n{size}-v{POOL_VERSION}"


def load_pool(seed: int, size: int) -> tuple[Path, list[PoolImage], bool]:
    """-> (directory, pool, generated now?): the cached pool, generated first when missing."""
    directory = pool_dir(seed, size)
    manifest = directory / "manifest.json"
    if manifest.is_file():
        images = [PoolImage(**p) for p in json.loads(manifest.read_text())["images"]]
        if all((directory / p.name).is_file() for p in images):
            return directory, images, False
    return directory, generate_pool(seed, size, directory), True


def build_urls(seed: int, n: int, pool: list[PoolImage], hosts: list[str], port: int) -> list[dict]:
    """-> n rows {url, text, sample_id, kind, expected_success}; deterministic for (seed, n, pool, hosts)."""
    rng = random.Random(seed)
    kinds = []
    for kind, share in FAILURE_SHARES.items():
        kinds += [kind] * (max(3, round(n * share)) if n >= 100 else int(n * share))
    kinds = (kinds + ["ok"] * n)[:n]
    rng.shuffle(kinds)
    jpegs = [k for k, p in enumerate(pool) if p.format == "jpeg"]
    rows = []
    for i, kind in enumerate(kinds):
        base = f"http://{hosts[rng.randrange(len(hosts))]}:{port}"
        p = rng.randrange(len(pool))
        if kind == "ok":
            path = f"/img/{i}/{p}.{FORMATS[pool[p].format][0]}"
        elif kind.startswith("http_"):
            path = f"/err/{kind[5:]}/{i}.jpg"
        elif kind == "timeout":
            path = f"/slow/{i}.jpg"
        elif kind == "truncated":
            path = f"/trunc/{i}/{jpegs[p % len(jpegs)]}.jpg"
        else:
            path = f"/rand/{i}.jpg"
        rows.append({"url": base + path, "text": f"synthetic photo {i}: a smooth gradient with grain, {kind}",
                     "sample_id": i, "kind": kind, "expected_success": kind == "ok"})
    return rows


# ------------------------------------------------------------------------------------------- server


def _app(directory: Path, slow_s: float):
    from aiohttp import web

    pool = [PoolImage(**p) for p in json.loads((directory / "manifest.json").read_text())["images"]]
    bodies = [(directory / p.name).read_bytes() for p in pool]
    types = [FORMATS[p.format][1] for p in pool]

    async def image(request):
        k = int(request.match_info["pool"])
        return web.Response(body=bodies[k], content_type=types[k])

    async def error(request):
        return web.Response(status=int(request.match_info["code"]), text="synthetic error\n")

    async def slow(request):
        await asyncio.sleep(slow_s)
        return web.Response(body=bodies[0], content_type=types[0])

    async def truncated(request):
        body = bodies[int(request.match_info["pool"])]
        return web.Response(body=body[: len(body) // 2], content_type="image/jpeg")

    async def garbage(request):
        r = random.Random(int(request.match_info["i"]))
        return web.Response(body=r.randbytes(r.randrange(8_000, 40_000)), content_type="image/jpeg")

    app = web.Application()
    app.add_routes([
        web.get(r"/img/{i:\d+}/{pool:\d+}.{ext}", image),
        web.get(r"/err/{code:\d+}/{i:\d+}.jpg", error),
        web.get(r"/slow/{i:\d+}.jpg", slow),
        web.get(r"/trunc/{i:\d+}/{pool:\d+}.jpg", truncated),
        web.get(r"/rand/{i:\d+}.jpg", garbage),
    ])
    return app


async def _serve(directory: Path, hosts: list[str], slow_s: float) -> None:
    from aiohttp import web

    runner = web.AppRunner(_app(directory, slow_s), access_log=None, handle_signals=False)
    await runner.setup()
    for _attempt in range(20):  # the first host picks a free port; the others must get the same one
        sites = [web.TCPSite(runner, hosts[0], 0, backlog=1024)]
        await sites[0].start()
        port = sites[0]._server.sockets[0].getsockname()[1]
        try:
            for host in hosts[1:]:
                site = web.TCPSite(runner, host, port, backlog=1024)
                await site.start()
                sites.append(site)
            break
        except OSError:
            for site in sites:
                await site.stop()
    else:
        raise RuntimeError("no port free on every loopback host")
    print(port, flush=True)
    await asyncio.Event().wait()  # until the process ends


class ChildServer:
    """A server script in a separate process that prints its port on its first line (imageset.py serve,
    webserver.py serve); stopped by stop(), and its stdin closing ends it too (_exit_when_stdin_closes)."""

    def __init__(self, argv: list[str], what: str):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{what} did not start (got {line!r})")
        self.port = int(line)
        self.pid = self.proc.pid

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _exit_when_stdin_closes() -> None:
    """The parent holds our stdin: when it goes (exit, crash, kill), so do we."""
    try:
        while sys.stdin.buffer.read(1):
            pass
    finally:
        os._exit(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a generated pool on loopback hosts")
    serve.add_argument("pool_dir", type=Path)
    serve.add_argument("--hosts", type=int, default=16, help="listen on 127.0.0.1 .. 127.0.0.N")
    serve.add_argument("--slow-s", type=float, default=15.0, help="delay of the /slow/ URLs")
    gen = sub.add_parser("generate", help="generate (or load) a pool and print its sizes")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--pool", type=int, default=200)
    args = parser.parse_args()
    if args.command == "generate":
        directory, pool, _ = load_pool(args.seed, args.pool)
        for fmt in FORMATS:
            sizes = [p.size for p in pool if p.format == fmt]
            if sizes:
                print(f"{fmt:5} {len(sizes):4} images, mean {sum(sizes) / len(sizes) / 1e3:7.1f} kB, "
                      f"min {min(sizes) / 1e3:6.1f} kB, max {max(sizes) / 1e3:7.1f} kB")
        print(directory)
        return 0
    if not 1 <= args.hosts <= 254:
        parser.error("--hosts must be 1 .. 254")
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    asyncio.run(_serve(args.pool_dir, [f"127.0.0.{k}" for k in range(1, args.hosts + 1)], args.slow_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
