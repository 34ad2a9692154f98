"""serve: clip-retrieval's JSON API (/knn-service, /indices-list, /metadata) over the toy CLIP's image and
text indices, thumbnails from the stored bytes, bad and hostile requests, image_url behind the download
guard, and `laion-spark serve` as a process stopped by SIGTERM.

Every request goes over a real socket to a real server on 127.0.0.1. Expectations come from elsewhere:
the Searcher called directly (the API must give what Python gives), the stored PNG bytes the test wrote,
and the toy world's ground truth of each picture.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from laion_spark import cli
from laion_spark.search.searcher import Searcher
from laion_spark.serve.job import build_server
from tests.toy_index import run_stage

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the toy index: embed + index through Spark once per session


@pytest.fixture(scope="module")
def run_index(spark, toy_index, tmp_path_factory):
    """The pipeline's run_dir/index shape: image/ (the toy index) and text/ (built here from the same
    embeddings' text field)."""
    root = tmp_path_factory.mktemp("serve_index")
    shutil.copytree(toy_index["index"], root / "index" / "image")
    run_stage(spark, "index", f"input={toy_index['embeddings']}", f"dataset={toy_index['images']}",
              f"output={root / 'index' / 'text'}", "index.field=text", "index.eval_queries=100")
    return str(root / "index")


def make_server(run_index, toy_index, *extra):
    cfg, _ = cli.prepare("serve", [], [f"input={run_index}", f"images={toy_index['images']}", "port=0",
                                       f"search.cache_dir={toy_index['cache']}", *extra])
    server = build_server(cfg)
    server.start()
    return server


@pytest.fixture(scope="module")
def server(run_index, toy_index):
    s = make_server(run_index, toy_index)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def searchers(run_index, toy_index):
    return {name: Searcher(f"{run_index}/{name}", cache_dir=toy_index["cache"]) for name in ("image", "text")}


def request(server, method, path, body=None, headers=None, raw: bytes | None = None,
            content_type: str | None = "application/json"):
    """-> (status, headers, decoded JSON or raw bytes); content_type=None sends only the headers given."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        resp = conn.getresponse()
        payload = resp.read()
        kind = resp.getheader("Content-Type", "")
        return resp.status, dict(resp.getheaders()), json.loads(payload) if kind.startswith("application/json") \
            else payload
    finally:
        conn.close()


def knn(server, **body):
    return request(server, "POST", "/knn-service", body)


def clip_client_body(**given):
    """The body clip-retrieval's ClipClient posts: every field, null where unused."""
    body = {"text": None, "image": None, "image_url": None, "embedding_input": None, "deduplicate": True,
            "use_safety_model": True, "use_violence_detector": True, "indice_name": "image", "use_mclip": False,
            "aesthetic_score": "", "aesthetic_weight": "", "modality": "image", "num_images": 5,
            "num_result_ids": 5}
    body.update(given)
    return body


def png_of(toy_index, colour, shape):
    sid = next(s for s, a in toy_index["truth"].items() if a["colour"] == colour and a["shape"] == shape)
    return sid, toy_index["png"][sid]


def test_indices_list_and_config(server):
    status, _, names = request(server, "GET", "/indices-list")
    assert status == 200 and names == ["image", "text"]
    status, _, config = request(server, "GET", "/config.json")
    assert status == 200 and config["thumbnails"] is True and config["image_url"] is False
    assert {n: i["field"] for n, i in config["indices"].items()} == {"image": "image", "text": "text"}
    assert config["indices"]["image"]["nb_vectors"] == 540


def test_text_query_gives_what_the_searcher_gives_with_clip_retrievals_shape(server, searchers, toy_index):
    status, headers, got = knn(server, **clip_client_body(text="a red circle", deduplicate=False))
    assert status == 200, got
    want = searchers["image"].query(text="a red circle", k=5, deduplicate=False)
    assert [r["id"] for r in got] == [r["sample_id"] for r in want]
    assert np.allclose([r["similarity"] for r in got], [r["similarity"] for r in want], atol=1e-6)
    assert [r["caption"] for r in got] == [r["text"] for r in want]
    assert all(r["url"] == f"http://toys.test/{r['id'] - 70_000}.png" for r in got)
    truth = toy_index["truth"]
    assert sum(truth[r["id"]]["colour"] == "red" and truth[r["id"]]["shape"] == "circle" for r in got) >= 4
    # ClipClient sends use_violence_detector / aesthetic fields; accepted and reported, never a 500
    assert "use_violence_detector" in headers["X-Unhonoured-Fields"]
    assert "use_safety_model" in headers["X-Unhonoured-Fields"]  # this index has no punsafe
    # each result's thumbnail is its stored image, byte for byte
    for r in got:
        status, th, data = request(server, "GET", r["thumbnail"])
        assert status == 200 and th["Content-Type"] == "image/png" and data == toy_index["png"][r["id"]]


def test_modality_picks_the_text_index_of_the_same_model(server, searchers):
    status, headers, got = knn(server, text="two blue squares", modality="text", indice_name="image",
                               num_images=6, deduplicate=False)
    assert status == 200 and headers["X-Index"] == "text"
    want = searchers["text"].query(text="two blue squares", k=6, deduplicate=False)
    assert [r["id"] for r in got] == [r["sample_id"] for r in want]
    assert all(r["caption"] == "two blue squares" for r in got[:3])  # text embeddings: the same caption first


def test_image_and_embedding_queries(server, searchers, toy_index):
    sid, png = png_of(toy_index, "green", "triangle")
    for encoded in (base64.b64encode(png).decode(), "data:image/png;base64," + base64.encodebytes(png).decode()):
        status, _, got = knn(server, image=encoded, modality="image", num_images=5, deduplicate=False)
        assert status == 200, got
        want = searchers["image"].query(image=png, k=5, deduplicate=False)
        assert [r["id"] for r in got] == [r["sample_id"] for r in want] and got[0]["id"] == sid
    vector = searchers["image"].embed_text("a yellow square")
    status, _, got = knn(server, embedding_input=[float(x) * 3 for x in vector], num_images=4)  # not unit: normalised
    want = searchers["image"].query(embedding=vector, k=4)
    assert status == 200 and [r["id"] for r in got] == [r["sample_id"] for r in want]


def test_num_result_ids_then_metadata(server, searchers):
    status, _, got = knn(server, text="three green triangles", num_images=3, num_result_ids=12, deduplicate=False)
    assert status == 200 and len(got) == 12
    assert all("caption" in r for r in got[:3]) and all(set(r) == {"id", "similarity"} for r in got[3:])
    ids = [r["id"] for r in got[3:]] + [123]  # 123: no such row
    status, _, meta = request(server, "POST", "/metadata", {"indice_name": "image", "ids": ids})
    want = searchers["image"].metadata(ids)
    assert status == 200 and [m["id"] for m in meta] == ids and meta[-1]["metadata"] is None
    assert [m["metadata"]["caption"] for m in meta[:-1]] == [w["text"] for w in want[:-1]]


def test_bad_requests_get_a_4xx_with_a_message(server, toy_index):
    dim = server.service.indices["image"].dimension
    cases = [
        (dict(text=""), 400, "text is empty"),
        (dict(text="   "), 400, "text is empty"),
        (dict(image="!!not base64!!"), 400, "not valid base64"),
        (dict(image=base64.b64encode(b"not an image at all").decode()), 400, "does not decode"),
        (dict(text="a red circle", num_images=10**6), 400, "serve.max_k"),
        (dict(text="a red circle", num_images=0), 400, "at least 1"),
        (dict(text="a red circle", num_images="5"), 400, "integer"),
        (dict(text="a red circle", indice_name="nope"), 400, "unknown indice_name"),
        (dict(text="a red circle", modality="audio"), 400, "modality"),
        (dict(text="a", image="aGk="), 400, "exactly one"),
        (dict(), 400, "exactly one"),
        (dict(embedding_input=[1.0, 2.0]), 400, "values"),
        (dict(embedding_input=[0.0] * dim), 400, "zero"),
        (dict(embedding_input=["x"]), 400, "numbers"),
        (dict(text="a red circle", deduplicate="yes"), 400, "true or false"),
        (dict(text="a red circle", unique_urls=1), 400, "unique_urls must be true or false"),
        (dict(image_url="http://127.0.0.1:1/x.png"), 403, "image_url is off"),
    ]
    for body, status, message in cases:
        got_status, _, got = knn(server, **body)
        assert (got_status, got["status"]) == (status, status), (body, got)
        assert message in got["error"], (body, got)
    for method, path, body, raw, status in [
        ("POST", "/knn-service", None, b"{not json", 400),
        ("POST", "/knn-service", None, b"[1, 2]", 400),
        ("POST", "/knn-service", None, b"\xff\xfe", 400),
        ("GET", "/knn-service", None, None, 405),
        ("DELETE", "/indices-list", None, None, 405),
        ("GET", "/nope", None, None, 404),
        ("GET", "/thumb/image/123", None, None, 404),  # no such row
        ("GET", "/thumb/nope/70000", None, None, 404),
        ("GET", "/thumb/image/99999999999999999999", None, None, 404),
        ("GET", "/thumb/image/../../etc/passwd", None, None, 404),
        ("POST", "/metadata", {"ids": "1,2"}, None, 400),
        ("POST", "/metadata", {"ids": [2**70]}, None, 400),
    ]:
        got_status, _, got = request(server, method, path, body, raw=raw)
        assert got_status == status and got["error"], (method, path, got)
    # a Host that is no loopback name (DNS rebinding): refused
    got_status, _, got = request(server, "GET", "/indices-list", headers={"Host": "evil.example:1234"})
    assert got_status == 403 and "loopback" in got["error"]


def test_hostile_connections_do_not_hold_the_server(server):
    host, port = server.server_address[:2]
    # a client that trickles its headers and one that announces a huge body: both left hanging
    slow = socket.create_connection((host, port))
    slow.sendall(b"POST /knn-service HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    huge = socket.create_connection((host, port))
    huge.sendall(b"POST /knn-service HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999\r\n\r\n")
    huge.settimeout(30)
    answer = huge.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    no_length = socket.create_connection((host, port))
    no_length.settimeout(30)
    no_length.sendall(b"POST /knn-service HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n{}")
    assert no_length.recv(65536).startswith(b"HTTP/1.1 411")
    try:
        # meanwhile others are served, several at once, each as it would be alone
        alone = knn(server, text="a purple triangle", num_images=5)[2]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: knn(server, text="a purple triangle", num_images=5), range(16)))
        assert all(a[0] == 200 and a[2] == alone for a in answers)
    finally:
        for s in (slow, huge, no_length):
            s.close()


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    png = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args):
        pass


def test_image_url_goes_through_the_download_guard(run_index, toy_index, searchers):
    _, png = png_of(toy_index, "blue", "circle")
    handler = type("H", (_ImageHandler,), {"png": png})
    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{images.server_address[1]}/blue.png"
    guarded = make_server(run_index, toy_index, "serve.allow_image_url=true")
    allowed = make_server(run_index, toy_index, "serve.allow_image_url=true", "download.allowed_networks=127.0.0.1/32")
    try:
        status, _, got = knn(guarded, image_url=url)  # loopback is what the guard refuses by default
        assert status == 403 and "address guard" in got["error"]
        status, _, got = knn(guarded, image_url="file:///etc/passwd")
        assert 400 <= status < 500
        status, _, got = knn(allowed, image_url=url, num_images=5, deduplicate=False)
        want = searchers["image"].query(image=png, k=5, deduplicate=False)
        assert status == 200 and [r["id"] for r in got] == [r["sample_id"] for r in want]
    finally:
        guarded.stop()
        allowed.stop()
        images.shutdown()
        images.server_close()


def test_serve_process_answers_then_stops_on_sigterm(run_index, toy_index):
    from tests.processes import serve_process

    with serve_process(f"input={run_index}", f"images={toy_index['images']}",
                       f"search.cache_dir={toy_index['cache']}") as (proc, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/knn-service", json.dumps({"text": "a red circle", "num_images": 3}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and len(json.loads(resp.read())) == 3
        conn.close()
    assert proc.returncode == 0, proc.summary
    assert "/knn-service 200: 1" in proc.summary and "stopped" in proc.summary


def test_serve_refuses_bad_inputs_before_opening_anything(tmp_path, toy_index):
    res = subprocess.run([sys.executable, "-m", "laion_spark.cli", "serve", f"input={tmp_path / 'none'}"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2 and "input not found" in res.stderr
    res = subprocess.run([sys.executable, "-m", "laion_spark.cli", "serve", f"input={toy_index['index']}",
                          f"images={toy_index['embeddings']}"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2 and "no image column" in res.stderr


def test_use_safety_model_drops_unsafe_rows_where_the_index_has_punsafe(spark, tmp_path):
    from laion_spark import schemas as S
    from laion_spark.index.synthetic import clustered_vectors

    n, d = 400, 16
    vectors, _ = clustered_vectors(n, d, clusters=4, seed=8)
    punsafe = np.random.default_rng(2).random(n).round(3)
    spark.createDataFrame([(i, [float(x) for x in v], None, 0.3, "ViT-T/test", None) for i, v in enumerate(vectors)],
                          S.EMBEDDINGS).write.parquet(str(tmp_path / "emb"))
    spark.createDataFrame([(i, f"http://x.test/{i}.jpg", f"c{i}", float(punsafe[i])) for i in range(n)],
                          "sample_id long, url string, text string, punsafe double").write.parquet(str(tmp_path / "ds"))
    run_stage(spark, "index", f"input={tmp_path / 'emb'}", f"dataset={tmp_path / 'ds'}",
              f"output={tmp_path / 'idx'}", "index.eval_queries=50")
    cfg, _ = cli.prepare("serve", [], [f"input={tmp_path / 'idx'}", "port=0",
                                       f"search.cache_dir={tmp_path / 'cache'}"])
    server = build_server(cfg)
    server.start()
    try:
        query = [float(x) for x in vectors[7]]
        exact = np.argsort(-(vectors @ vectors[7]), kind="stable")  # the ranking, written here
        status, headers, safe = knn(server, embedding_input=query, num_images=10, deduplicate=False,
                                    use_safety_model=True)
        assert status == 200 and "use_safety_model" not in headers.get("X-Unhonoured-Fields", "")
        assert [r["id"] for r in safe] == [int(i) for i in exact if punsafe[i] <= 0.5][:10]  # LAION's 0.5
        status, _, every = knn(server, embedding_input=query, num_images=10, deduplicate=False,
                               use_safety_model=False)
        assert [r["id"] for r in every] == [int(i) for i in exact[:10]]
        assert set(r["id"] for r in every) - set(r["id"] for r in safe)  # the filter removed something here
    finally:
        server.stop()
