"""serve's web page in a real headless browser (Debian's chromium + chromium-driver, driven by selenium):
type a query, see the result images load with the captions the API gives, toggle a filter, see an error.

Skips with the reason where selenium, chromium or chromedriver is missing (`make test` installs them
where it can). The expectation is the Searcher's own answer for the same query and settings, and the
stored bytes' pixel size for each thumbnail.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from laion_spark import cli
from laion_spark.search.searcher import Searcher
from laion_spark.serve.job import build_server

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (make test installs it)")
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium / chromedriver not found (apt-get install chromium chromium-driver; make test does "
                    "it as root)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--proxy-server=direct://", "--proxy-bypass-list=*"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_server(toy_index):
    cfg, _ = cli.prepare("serve", [], [f"input={toy_index['index']}", f"images={toy_index['images']}", "port=0",
                                       f"search.cache_dir={toy_index['cache']}"])
    server = build_server(cfg)
    server.start()
    yield server
    server.stop()


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def results(driver) -> list[dict]:
    """-> per shown result: caption, similarity text, and the image's natural size once it has loaded."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#results figure.result')).map(f => {
          const img = f.querySelector('img');
          return {caption: f.querySelector('.caption').textContent,
                  similarity: f.querySelector('.similarity').textContent,
                  src: img.getAttribute('src'), complete: img.complete,
                  width: img.naturalWidth, height: img.naturalHeight};
        });""")


def search(driver, text):
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "go").click()


def test_type_a_query_and_see_the_results_load(browser, page_server, toy_index):
    from selenium.webdriver.common.by import By

    browser.get(page_server.url)
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.ready") == "true")
    searcher = Searcher(toy_index["index"], cache_dir=toy_index["cache"])
    name = Path(toy_index["index"]).name  # an index is named by its folder
    for query in ("a red circle", "two blue squares"):
        search(browser, query)
        want = searcher.query(text=query, k=10)  # the page's defaults: 10 results, near duplicates hidden
        captions = [w["text"] for w in want]
        # the captions the Searcher gives, once every image has loaded (or failed: naturalWidth says which)
        wait_for(browser, lambda d: [r["caption"] for r in results(d)] == captions  # noqa: B023
                 and all(r["complete"] for r in results(d)))
        shown = results(browser)
        assert [r["similarity"] for r in shown] == [f"{w['similarity']:.3f}" for w in want]
        for r, w in zip(shown, want, strict=True):
            assert r["src"] == f"/thumb/{name}/{w['sample_id']}"
            size = Image.open(io.BytesIO(toy_index["png"][w["sample_id"]])).size
            assert r["width"] > 0 and (r["width"], r["height"]) == size
        status = browser.find_element(By.ID, "status").text
        assert status.startswith(f"{len(want)} results from {name}")
    # the near-duplicate toggle searches again: more of one caption comes back
    browser.find_element(By.ID, "dedup").click()
    want = searcher.query(text="two blue squares", k=10, deduplicate=False)
    wait_for(browser, lambda d: [r["caption"] for r in results(d)] == [w["text"] for w in want]
             and all(r["complete"] for r in results(d)))
    assert len(set(w["text"] for w in want)) < 10  # near duplicates are back: a caption shows twice
    assert all(r["width"] > 0 for r in results(browser))


def test_a_refused_query_shows_the_servers_message(browser, page_server):
    from selenium.webdriver.common.by import By

    browser.get(page_server.url)
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.ready") == "true")
    browser.execute_script("document.getElementById('k').value = '100000'")
    search(browser, "a red circle")
    wait_for(browser, lambda d: "serve.max_k" in d.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    assert results(browser) == []


@pytest.fixture(scope="module")
def web_images(toy_index):
    """A loopback web server holding the toy pictures at /img/<sample_id>.png (where the page's thumbnails
    come from when serve has no images= table)."""
    import http.server
    import threading

    png = toy_index["png"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1].removesuffix(".png")
            body = png.get(int(name)) if self.path.startswith("/img/") and name.isdigit() else None
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/img"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def url_page(spark, toy_index, web_images, tmp_path_factory):
    """The toy embeddings indexed over a dataset whose URLs point at web_images, every second picture of a
    caption sharing the URL of the one before (as re-hosted copies do), and punsafe scores; served without
    images=, so every thumbnail is the result's URL."""
    import numpy as np

    from tests.toy_index import run_stage

    root = tmp_path_factory.mktemp("url_page")
    rng = np.random.default_rng(5)
    rows, last_of_caption = [], {}
    for sid in sorted(toy_index["png"]):
        caption = toy_index["captions"][sid]
        prev = last_of_caption.pop(caption, None)
        url = f"{web_images}/{prev if prev is not None else sid}.png"
        if prev is None:
            last_of_caption[caption] = sid
        rows.append((sid, url, caption, round(float(rng.random()), 3)))
    spark.createDataFrame(rows, "sample_id long, url string, text string, punsafe double") \
        .write.parquet(str(root / "dataset"))
    run_stage(spark, "index", f"input={toy_index['embeddings']}", f"dataset={root / 'dataset'}",
              f"output={root / 'index'}", "index.eval_queries=100")
    cfg, _ = cli.prepare("serve", [], [f"input={root / 'index'}", "port=0", f"search.cache_dir={toy_index['cache']}"])
    server = build_server(cfg)
    server.start()
    yield server, str(root / "index"), {r[0]: r for r in rows}
    server.stop()


def test_without_images_the_thumbnails_are_the_urls_and_each_filter_is_a_toggle(browser, url_page, toy_index):
    from selenium.webdriver.common.by import By

    server, index, rows = url_page
    browser.get(server.url)
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.ready") == "true")
    searcher = Searcher(index, cache_dir=toy_index["cache"])
    query = "a red circle"

    def shown_matches(want):
        wait_for(browser, lambda d: [r["caption"] for r in results(d)] == [w["text"] for w in want]
                 and all(r["complete"] for r in results(d)))
        shown = results(browser)
        for r, w in zip(shown, want, strict=True):
            assert r["src"] == w["url"]  # no images table: the picture comes from its web address
            source = int(w["url"].rsplit("/", 1)[-1].removesuffix(".png"))
            size = Image.open(io.BytesIO(toy_index["png"][source])).size
            assert r["width"] > 0 and (r["width"], r["height"]) == size
        return shown

    search(browser, query)  # the page's defaults: near duplicates and duplicate URLs hidden, safe mode on
    want = searcher.query(text=query, k=10, max_punsafe=0.5)
    shown_matches(want)
    assert len({w["url"] for w in want}) == len(want) and all(w["punsafe"] <= 0.5 for w in want)
    browser.find_element(By.ID, "dedup").click()  # near duplicates back: then the URL toggle has work to do
    want = searcher.query(text=query, k=10, deduplicate=False, max_punsafe=0.5)
    shown_matches(want)
    browser.find_element(By.ID, "urls").click()
    want = searcher.query(text=query, k=10, deduplicate=False, unique_urls=False, max_punsafe=0.5)
    shown_matches(want)
    assert len({w["url"] for w in want}) < len(want)  # a URL shows twice: the toggle did something
    browser.find_element(By.ID, "safe").click()
    want = searcher.query(text=query, k=10, deduplicate=False, unique_urls=False)
    shown_matches(want)
    assert any(w["punsafe"] > 0.5 for w in want)  # safe mode off: unsafe rows are back
    assert "results from" in browser.find_element(By.ID, "status").text


@pytest.fixture()
def other_page():
    """A loopback web server of another origin (another port: what a page the user visits elsewhere is to
    the service) holding one page, built by the test from the HTML it is given -> set_html, its URL."""
    import http.server
    import threading

    html = {"page": b""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(html["page"])))
            self.end_headers()
            self.wfile.write(html["page"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield (lambda text: html.update(page=text.encode())), f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_page_of_another_origin_cannot_make_the_browser_search_or_load_a_thumbnail(browser, page_server,
                                                                                       toy_index, other_page):
    import json

    set_html, url = other_page
    name = Path(toy_index["index"]).name
    sid = next(iter(toy_index["png"]))
    service = page_server.service
    counts = lambda: {k: service.counts[k] for k in (("/knn-service", 200), ("/knn-service", 403),  # noqa: E731
                                                     ("/thumb", 200), ("/thumb", 403))}
    before = counts()
    # what a page needs no permission for: a POST of text/plain (no-cors: its answer stays unread, its cost
    # is the service's) and an <img> of a thumbnail (whose size or failure the page can see)
    set_html(f"""<!doctype html><html><body><img id="thumb"><script>
      const img = document.getElementById("thumb");
      const done = [];
      img.onload = () => done.push("img loaded");
      img.onerror = () => done.push("img refused");
      img.src = {json.dumps(f"{page_server.url}thumb/{name}/{sid}")};
      fetch({json.dumps(page_server.url + "knn-service")}, {{method: "POST", mode: "no-cors",
            headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{text: "a red circle"}})}})
        .then(() => done.push("sent"), e => done.push("failed " + e));
      setInterval(() => {{ if (done.length === 2) document.title = done.sort().join(", "); }}, 20);
    </script></body></html>""")
    browser.get(url)
    wait_for(browser, lambda d: d.title != "")
    assert browser.title == "img refused, sent"
    after = counts()
    assert after[("/knn-service", 403)] == before[("/knn-service", 403)] + 1  # it reached the server: refused
    assert after[("/knn-service", 200)] == before[("/knn-service", 200)]  # and nothing was searched
    assert after[("/thumb", 403)] == before[("/thumb", 403)] + 1
    assert after[("/thumb", 200)] == before[("/thumb", 200)]
