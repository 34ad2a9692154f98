"""Benchmark: `laion-spark embed` against a plain open_clip loop (and clip-retrieval) on the same images.

INPUT  -> --images generated photo-like JPEGs (seeded, 256 - 640 px, cached under bench/out/embed/) with
          captions, as an images table (status success); a ViT-B-32 with random weights saved once as a
          local checkpoint (the same compute as the real model; nothing is downloaded);
          CLIP_RETRIEVAL=path of a clip-retrieval binary (another venv) for a last run
OUTPUT -> printed figures per run: images/s on the run's own time and on wall time, CPU seconds; the
          Spark overhead ratio (Spark's own-time images/s / the plain loop's), for the stage as it
          ships and with embed.trim_text=false (the plain loop's work: the text tower over all 77
          padded tokens), and with clip-retrieval, ours / clip-retrieval; a table at the end

Run: `SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/embed.py [--images 256] [--batch 64]`
On a GPU machine: `MASTER='local[4]' ... bench/embed.py --device cuda --images 4096 --batch 256` (the plain
loop on the GPU with fp16 autocast; ours with embed.device=cuda, each of the 4 concurrent tasks holding its
own model copy on the GPU and decoding on its CPU core).

The plain loop is what a user would write in one process: decode with Pillow, the model's own
preprocess, encode_image + encode_text in batches under torch.inference_mode(), torch's default
threads (all cores). "Own time" is the embedding work: the loop's timed section, and for Spark the
stage's embed_seconds from `_summary.json` (the job's run, JVM start excluded); wall time is the
whole command (for Spark: the CLI with its JVM start, model load in each worker, Parquet writing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out" / "embed"
ARCH = "ViT-B-32"
WORDS = ("red", "blue", "old", "small", "house", "river", "dog", "street", "mountain", "car", "garden",
         "portrait", "vintage", "photo", "of", "a", "the", "with", "near", "sunset", "white", "cat")


def make_images(n: int, seed: int) -> Path:
    """-> a parquet images table of n generated JPEGs (cached per n and seed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    path = OUT / f"images-n{n}-s{seed}.parquet"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = {"sample_id": [], "url": [], "text": [], "language": [], "status": [], "image": []}
    for i in range(n):
        w, h = int(rng.integers(256, 641)), int(rng.integers(256, 641))
        # smooth colour gradients + grain: JPEG sizes and decode costs like photos'
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([(xx / w) * rng.uniform(80, 255), (yy / h) * rng.uniform(80, 255),
                         ((xx + yy) / (w + h)) * rng.uniform(80, 255)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 8, (h, w, 1)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        rows["sample_id"].append(i)
        rows["url"].append(f"http://bench.invalid/{i}.jpg")
        rows["text"].append(" ".join(rng.choice(WORDS, int(rng.integers(3, 12)))))
        rows["language"].append("en")
        rows["status"].append("success")
        rows["image"].append(buf.getvalue())
    pq.write_table(pa.table({**rows, "sample_id": pa.array(rows["sample_id"], pa.int64()),
                             "image": pa.array(rows["image"], pa.binary())}), path)
    return path


def random_checkpoint() -> Path:
    """-> a local ViT-B-32 checkpoint with seeded random weights (a state_dict open_clip loads)."""
    import open_clip
    import torch

    path = OUT / "vit-b-32-random-s0.pt"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = open_clip.create_model(ARCH, pretrained=None)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.rename(path)
    return path


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_plain(table: Path, checkpoint: Path, batch: int, device: str = "cpu") -> dict:
    """The plain loop, in this process (on cuda: the model on the GPU, fp16 autocast, decoding on the CPU)."""
    import contextlib

    import numpy as np
    import open_clip
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    data = pq.read_table(table, columns=["image", "text"]).to_pydict()
    t0 = time.perf_counter()
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=str(checkpoint), device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(ARCH)
    load_s = time.perf_counter() - t0
    autocast = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else contextlib.nullcontext()
    c0, t1 = time.process_time(), time.perf_counter()
    sims = []
    with torch.inference_mode(), autocast:
        for i in range(0, len(data["image"]), batch):
            images = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB"))
                                  for b in data["image"][i:i + batch]]).to(device)
            texts = tokenizer(data["text"][i:i + batch]).to(device)
            img = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
            txt = torch.nn.functional.normalize(model.encode_text(texts).float(), dim=-1)
            sims.append((img * txt).sum(-1).cpu().numpy())
    own = time.perf_counter() - t1
    n = len(data["image"])
    return {"tool": f"plain open_clip loop ({device})", "images": n, "own_s": own, "wall_s": own + load_s,
            "cpu_s": time.process_time() - c0, "threads": torch.get_num_threads(),
            "similarity_mean": float(np.concatenate(sims).mean())}


def run_spark(table: Path, checkpoint: Path, batch: int, extra: list[str]) -> dict:
    """`laion-spark embed` as a user runs it (local[*]), in a subprocess."""
    out = OUT / "spark-embeddings"
    cmd = [str(REPO / ".venv" / "bin" / "laion-spark"), "embed", f"input={table}", f"output={out}", "mode=overwrite",
           f"embed.model={ARCH}", f"embed.pretrained={checkpoint}", f"embed.model_batch_size={batch}", *extra]
    env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
           "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", str(REPO / ".venv" / "bin" / "python"))}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"laion-spark embed failed ({res.returncode}):\n{res.stderr[-4000:]}")
    summary = json.loads((out / "_summary.json").read_text())
    # CPU: not counted (the JVM does not reap its Python workers, so getrusage misses most of it)
    return {"tool": "laion-spark embed", "images": summary["embedded"], "own_s": summary["embed_seconds"],
            "wall_s": wall, "cpu_s": None, "setting": " ".join(extra) or "stage defaults"}


def run_clip_retrieval(binary: str, table: Path, checkpoint: Path, batch: int) -> dict:
    """clip-retrieval inference on the same images and model file: a folder of NNNNNN.jpg, its `files`
    reader, images only (--enable_text False). Images only, because 2.45 cannot pair captions in
    either input format: its `files` reader keys images and captions by file name with the extension
    (KeyError '000000.txt'), and its webdataset reader stalled after the first batch here
    (sample_per_sec 0 for 15 min). So clip-retrieval runs the image tower only, ours both towers: the
    comparison favours clip-retrieval. It runs in its own process group with a time limit, because on a
    worker failure its main process waits for its logger process forever."""
    import signal

    import numpy as np
    import pyarrow.parquet as pq

    folder = OUT / f"cr-files-{table.stem}"
    if not folder.exists():
        data = pq.read_table(table, columns=["sample_id", "image"]).to_pydict()
        tmp = folder.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for sid, img in zip(data["sample_id"], data["image"]):
            (tmp / f"{sid:06d}.jpg").write_bytes(img)
        tmp.rename(folder)
    out = OUT / "cr-output"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [binary, "inference", "--input_dataset", str(folder), "--output_folder", str(out),
           "--input_format", "files", "--enable_text", "False", "--enable_metadata", "False",
           "--batch_size", str(batch), "--num_prepro_workers", "2",
           "--clip_model", f"open_clip:{ARCH}/{checkpoint}", "--use_jit", "False"]
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        log, _ = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
    wall = time.perf_counter() - t0
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its leftover helper processes
    files = sorted((out / "img_emb").glob("*.npy")) if (out / "img_emb").exists() else []
    n = sum(np.load(f).shape[0] for f in files)
    if proc.returncode != 0 or not n:
        return {"tool": "clip-retrieval", "unavailable": f"exit {proc.returncode}, {n} embeddings: {log[-1500:]}"}
    # its own figure: the last "sample_per_sec N" it prints (after its model load)
    rates = [int(p.split()[0]) for p in log.split("sample_per_sec ")[1:] if p.split() and p.split()[0].isdigit()]
    return {"tool": "clip-retrieval inference (images only)", "images": n, "own_s": wall, "wall_s": wall,
            "cpu_s": _children_cpu() - c0, "reported_per_s": rates[-1] if rates else None}


def show(r: dict) -> None:
    if r.get("unavailable"):
        print(f"{r['tool']}: unavailable ({r['unavailable']})")
        return
    print(f"{r['tool']}: {r['images']} images, {r['images'] / r['own_s']:.2f} images/s on its own time "
          f"({r['own_s']:.1f} s), {r['images'] / r['wall_s']:.2f} on wall time ({r['wall_s']:.1f} s)"
          + (f", CPU {r['cpu_s']:.1f} s" if r.get("cpu_s") is not None else "")
          + (f", {r['setting']}" if r.get("setting") else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="model batch size, every run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for ours")
    parser.add_argument("--only", choices=("plain", "spark", "both"), default="both")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda (a GPU machine): the plain loop on the GPU, ours with embed.device=cuda")
    parser.add_argument("--no-same-work", action="store_true",
                        help="skip the second Spark run with embed.trim_text=false (the plain loop's work)")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    t0 = time.perf_counter()
    table, checkpoint = make_images(args.images, args.seed), random_checkpoint()
    print(f"input: {table} ({args.images} JPEGs 256-640 px), model {ARCH} random weights {checkpoint} "
          f"({time.perf_counter() - t0:.1f} s, not timed), batch {args.batch}, {os.cpu_count()} cores")
    if args.device == "cuda":
        args.set = ["embed.device=cuda", *args.set]
    results = []
    if args.only in ("plain", "both"):
        results.append(run_plain(table, checkpoint, args.batch, args.device))
        show(results[-1])
    if args.only in ("spark", "both"):
        results.append(run_spark(table, checkpoint, args.batch, args.set))
        show(results[-1])
        if not args.no_same_work:
            # the same work as the plain loop (padded text tower): what Spark itself costs
            results.append(run_spark(table, checkpoint, args.batch, [*args.set, "embed.trim_text=false"]))
            show(results[-1])
    binary = os.environ.get("CLIP_RETRIEVAL")
    if binary:
        results.append(run_clip_retrieval(binary, table, checkpoint, args.batch))
        show(results[-1])
    else:
        print("clip-retrieval: skipped (set CLIP_RETRIEVAL=path of the clip-retrieval binary)")

    done = [r for r in results if not r.get("unavailable")]
    plain = next((r for r in done if r["tool"].startswith("plain")), None)
    sparks = [r for r in done if r["tool"].startswith("laion-spark")]
    cr = next((r for r in done if r["tool"].startswith("clip-retrieval")), None)
    print("\n| run | images | images/s (own time) | images/s (wall) | CPU s |\n| --- | --- | --- | --- | --- |")
    for r in done:
        cpu = f"{r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "-"
        name = r["tool"] + (f" ({r['setting']})" if r.get("setting") else "")
        print(f"| {name} | {r['images']} | {r['images'] / r['own_s']:.2f} | {r['images'] / r['wall_s']:.2f} | {cpu} |")

    def rate(r, key):
        return r["images"] / r[key]

    for spark in sparks:
        if plain:
            print(f"Spark ({spark['setting']}) / plain loop: {rate(spark, 'own_s') / rate(plain, 'own_s'):.2f}x on own "
                  f"time, {rate(spark, 'wall_s') / rate(plain, 'wall_s'):.2f}x on wall time (target >= 0.9x)")
        if cr:
            print(f"Spark ({spark['setting']}) / clip-retrieval (images only): "
                  f"{rate(spark, 'wall_s') / rate(cr, 'wall_s'):.2f}x on wall time")
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
