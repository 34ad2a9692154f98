"""Benchmark: `laion-spark embed` against a plain open_clip loop (and clip-retrieval) on the same images.

INPUT  -> --images generated photo-like JPEGs (seeded, 256 - 640 px, cached under bench/out/embed/) with
          captions, as an images table (status success; several sizes comma-separated, e.g. 512,2048 for
          1x and 4x, each run --repeat times); a ViT-B-32 with random weights saved once as a
          local checkpoint (the same compute as the real model; nothing is downloaded);
          CLIP_RETRIEVAL=path of a clip-retrieval binary (another venv) for a last run
OUTPUT -> printed figures per run: images/s on the run's own time and on wall time, CPU seconds, the
          peak RSS/PSS of the run's process tree; per size, from the best runs: the Spark overhead
          ratio (Spark's own-time images/s / the plain loop's), for the stage as it ships and with
          embed.trim_text=false (the plain loop's work: the text tower over all 77 padded tokens), and
          with clip-retrieval, ours / clip-retrieval; ms per image on own time and on wall time with
          the start-up (wall - own) apart; a table at the end; and per run kind whether the cost per
          image on own time is flat (within 20%) or falling from the smallest size to the largest

Run: `SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/embed.py [--images 256] [--batch 64] [--repeat 1]`;
     1x and 4x, best of two: `... bench/embed.py --images 512,2048 --repeat 2`
On a GPU machine: `MASTER='local[4]' ... bench/embed.py --device cuda --images 4096 --batch 256` (the plain
loop on the GPU with fp16 autocast; ours with embed.device=cuda, each of the 4 concurrent tasks holding its
own model copy on the GPU and decoding on its CPU core).

The plain loop is what a user would write in one process: decode with Pillow, the model's own
preprocess, encode_image + encode_text in batches under torch.inference_mode(), torch's default
threads (all cores). "Own time" is the embedding work: the loop's timed section, and for Spark the
stage's embed_seconds from `_summary.json` (the job's run, JVM start excluded); wall time is the
whole command (for the loop: its process with imports and model load; for Spark: the CLI with its
JVM start, model load in each worker, Parquet writing). Every run is a child process under
bench/measure.py's sampler (the loop: this script with the hidden --one plain), so its peak memory
is its own tree.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # bench/ is not a package: imported from its folder

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
            "similarity_mean": float(np.concatenate(sims).mean()), "load_s": load_s}


def run_plain_measured(table: Path, checkpoint: Path, batch: int, device: str = "cpu") -> dict:
    """The plain loop in a child process (this script, --one plain), its process tree sampled -> its
    figures, wall time being the whole process (imports and model load included, as Spark's CLI)."""
    log = OUT / "plain.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "plain", "--table", str(table),
           "--checkpoint", str(checkpoint), "--batch", str(batch), "--device", device]
    m = measure.run_measured(cmd, dict(os.environ), log)
    got = measure.read_result(log)
    if m["rc"] != 0 or got is None:
        raise RuntimeError(f"plain loop failed ({m['rc']}); last lines of {log}:\n{measure.tail(log, 30)}")
    return {**got, **memory(m), "wall_s": m["wall_s"]}


def memory(m: dict) -> dict:
    """run_measured's figures -> the ones kept per run (the tree's CPU apart from the loop's own cpu_s)."""
    keep = ("peak_rss_mib", "peak_pss_mib", "processes", "cpu_by_process", "peak_rss_mib_by_process", "sampler_cpu_s")
    return {**{k: m[k] for k in keep if k in m}, "tree_cpu_s": m.get("cpu_s")}


def run_spark(table: Path, checkpoint: Path, batch: int, extra: list[str]) -> dict:
    """`laion-spark embed` as a user runs it (local[*]), in a subprocess."""
    out = OUT / "spark-embeddings"
    cmd = [str(REPO / ".venv" / "bin" / "laion-spark"), "embed", f"input={table}", f"output={out}", "mode=overwrite",
           f"embed.model={ARCH}", f"embed.pretrained={checkpoint}", f"embed.model_batch_size={batch}", *extra]
    env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
           "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", str(REPO / ".venv" / "bin" / "python"))}
    log = OUT / "spark.log"
    m = measure.run_measured(cmd, env, log)
    if m["rc"] != 0:
        raise RuntimeError(f"laion-spark embed failed ({m['rc']}):\n{measure.tail(log, 40)}")
    summary = json.loads((out / "_summary.json").read_text())
    # cpu_s: not counted (the JVM does not reap its Python workers, so getrusage misses most of it);
    # tree_cpu_s is the sampler's /proc figure (a process's last ~0.2 s may be missed)
    return {"tool": "laion-spark embed", "images": summary["embedded"], "own_s": summary["embed_seconds"],
            "wall_s": m["wall_s"], "cpu_s": None, "setting": " ".join(extra) or "stage defaults", **memory(m)}


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
    sampler = measure.TreeSampler(proc.pid)
    sampler.start()
    try:
        log, _ = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
    wall = time.perf_counter() - t0
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its leftover helper processes
    measured = memory(sampler.stop())
    files = sorted((out / "img_emb").glob("*.npy")) if (out / "img_emb").exists() else []
    n = sum(np.load(f).shape[0] for f in files)
    if proc.returncode != 0 or not n:
        return {"tool": "clip-retrieval", "unavailable": f"exit {proc.returncode}, {n} embeddings: {log[-1500:]}"}
    # its own figure: the last "sample_per_sec N" it prints (after its model load)
    rates = [int(p.split()[0]) for p in log.split("sample_per_sec ")[1:] if p.split() and p.split()[0].isdigit()]
    return {"tool": "clip-retrieval inference (images only)", "images": n, "own_s": wall, "wall_s": wall,
            "cpu_s": _children_cpu() - c0, "reported_per_s": rates[-1] if rates else None, **measured}


def show(r: dict) -> None:
    if r.get("unavailable"):
        print(f"{r['tool']}: unavailable ({r['unavailable']})")
        return
    print(f"{r['tool']}: {r['images']} images, {r['images'] / r['own_s']:.2f} images/s on its own time "
          f"({r['own_s']:.1f} s), {r['images'] / r['wall_s']:.2f} on wall time ({r['wall_s']:.1f} s)"
          + (f", CPU {r['cpu_s']:.1f} s" if r.get("cpu_s") is not None else "")
          + (f", {r['setting']}" if r.get("setting") else ""))
    print(f"  {measure.memory_text(r)}"
          + (f"; CPU of the tree {r['tree_cpu_s']:.1f} s {r.get('cpu_by_process', {})}" if r.get("tree_cpu_s") else ""),
          flush=True)


def name_of(r: dict) -> str:
    return r["tool"] + (f" ({r['setting']})" if r.get("setting") else "")


def best(runs: list[dict]) -> dict:
    """The runs of one kind and size -> the best figures over them (the machine is shared: noise only
    slows a run down), the start-up (wall - own time, fixed per run) apart, the highest peak memory."""
    n = runs[0]["images"]
    own, wall = min(r["own_s"] for r in runs), min(r["wall_s"] for r in runs)
    return {"images": n, "runs": len(runs), "own_s": own, "wall_s": wall,
            "own_per_s": max(r["images"] / r["own_s"] for r in runs),
            "wall_per_s": max(r["images"] / r["wall_s"] for r in runs),
            "own_ms": own / n * 1e3, "wall_ms": wall / n * 1e3,
            "startup_s": min(r["wall_s"] - r["own_s"] for r in runs),
            "peak_rss_mib": max(r.get("peak_rss_mib", 0) for r in runs),
            "peak_pss_mib": max(r.get("peak_pss_mib", 0) for r in runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="256",
                        help="images in the input; comma-separated for several sizes, e.g. 512,2048 (1x, 4x)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind per size; the best is reported")
    parser.add_argument("--batch", type=int, default=64, help="model batch size, every run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for ours")
    parser.add_argument("--only", choices=("plain", "spark", "both"), default="both")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda (a GPU machine): the plain loop on the GPU, ours with embed.device=cuda")
    parser.add_argument("--no-same-work", action="store_true",
                        help="skip the second Spark run with embed.trim_text=false (the plain loop's work)")
    # the child side of the plain loop's measured run (see run_plain_measured())
    parser.add_argument("--one", choices=("plain",), help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure.print_result(run_plain(args.table, args.checkpoint, args.batch, args.device))
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    counts = measure.sizes(args.images)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if args.device == "cuda":
        args.set = ["embed.device=cuda", *args.set]
    binary = os.environ.get("CLIP_RETRIEVAL")
    results = []
    for n in counts:
        t0 = time.perf_counter()
        table, checkpoint = make_images(n, args.seed), random_checkpoint()
        print(f"\ninput: {table} ({n} JPEGs 256-640 px), model {ARCH} random weights {checkpoint} "
              f"({time.perf_counter() - t0:.1f} s, not timed), batch {args.batch}, {os.cpu_count()} cores")

        def record(r: dict, n: int = n, k: int = 0) -> None:
            results.append({**r, "size": n, "run": k})
            show(r)

        # the runs of a size alternate between the kinds, so slow spells of the shared machine hit all
        for k in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"-- {n} images, run {k} of {args.repeat} --")
            if args.only in ("plain", "both"):
                record(run_plain_measured(table, checkpoint, args.batch, args.device), k=k)
            if args.only in ("spark", "both"):
                record(run_spark(table, checkpoint, args.batch, args.set), k=k)
                if not args.no_same_work:
                    # the same work as the plain loop (padded text tower): what Spark itself costs
                    record(run_spark(table, checkpoint, args.batch, [*args.set, "embed.trim_text=false"]), k=k)
            if binary:
                record(run_clip_retrieval(binary, table, checkpoint, args.batch), k=k)
            elif k == 1 and n == counts[0]:
                print("clip-retrieval: skipped (set CLIP_RETRIEVAL=path of the clip-retrieval binary)")

    done = [r for r in results if not r.get("unavailable")]
    label_size, label_run = len(counts) > 1, args.repeat > 1
    print("\n| run | images | images/s (own time) | images/s (wall) | CPU s | peak RSS MiB | peak PSS MiB |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for r in done:
        cpu = f"{r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "-"
        extra = ([f"{r['size']} images"] if label_size else []) + ([f"run {r['run']}"] if label_run else [])
        name = name_of(r) + (f" [{', '.join(extra)}]" if extra else "")
        print(f"| {name} | {r['images']} | {r['images'] / r['own_s']:.2f} | {r['images'] / r['wall_s']:.2f} | {cpu} | "
              f"{r.get('peak_rss_mib', 0):.0f} | {r.get('peak_pss_mib', 0):.0f} |")

    groups: dict[str, dict[int, list[dict]]] = {}
    for r in done:
        groups.setdefault(name_of(r), {}).setdefault(r["size"], []).append(r)
    bests = {name: {n: best(runs) for n, runs in sorted(by_size.items())} for name, by_size in groups.items()}
    plain = next((b for name, b in bests.items() if name.startswith("plain")), {})
    cr = next((b for name, b in bests.items() if name.startswith("clip-retrieval")), {})
    for name, by_size in bests.items():
        if not name.startswith("laion-spark"):
            continue
        setting = name[len("laion-spark embed ("):-1]
        for n, spark in by_size.items():
            at = f", {n} images" if label_size else ""
            if n in plain:
                print(f"Spark ({setting}{at}) / plain loop: {spark['own_per_s'] / plain[n]['own_per_s']:.2f}x on own "
                      f"time, {spark['wall_per_s'] / plain[n]['wall_per_s']:.2f}x on wall time (target >= 0.9x)")
            if n in cr:
                print(f"Spark ({setting}{at}) / clip-retrieval (images only): "
                      f"{spark['wall_per_s'] / cr[n]['wall_per_s']:.2f}x on wall time")

    print("\ncost per image, best run of each kind and size; start-up (wall - own time) apart:")
    for name, by_size in bests.items():
        for n, b in by_size.items():
            print(f"  {name}, {n} images (best of {b['runs']}): {b['own_per_s']:.2f} images/s on own time, "
                  f"{b['wall_per_s']:.2f} on wall; {b['own_ms']:.1f} ms/image own, {b['wall_ms']:.1f} ms/image wall; "
                  f"start-up {b['startup_s']:.1f} s; peak RSS {b['peak_rss_mib']:.0f} MiB, "
                  f"PSS {b['peak_pss_mib']:.0f} MiB (highest of its runs)")
    for name, by_size in bests.items():
        if len(by_size) > 1:
            line = measure.trend({n: b["own_ms"] for n, b in by_size.items()}, "ms/image", " images")
            fit = measure.fit_text({n: b["wall_s"] for n, b in by_size.items()}, "image")
            print(f"  {name}: cost per image on own time (start-up excluded) {line}{fit}")
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
