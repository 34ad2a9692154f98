"""Search one index from Python: a text, an image or an embedding -> the top-k rows with their metadata.

INPUT  -> an index folder URI (the index stage's output: knn.index [+ knn.ivfdata] or shards/, metadata/,
          index_infos.json, tombstones.npy where a takedown wrote one), a query, k and the filters
OUTPUT -> `Searcher.query(...)`: rows best first, each {sample_id, similarity (the cosine between the
          query and the result, as faiss' codes give it), url, text, ... the metadata columns}; the
          metadata's own image-text cosine is `pair_similarity` there; `Searcher.changed()`: whether the
          index at its URI is no longer the version opened (a server then opens it again)

The index opens memory-mapped (IO_FLAG_MMAP, or the on-disk lists in knn.ivfdata), so an index larger
than RAM is searched from disk; a remote one is copied to the cache first (local.py). The CLIP that
encodes a text or image query is the one index_infos.json names (`model`): search needs no other flag.

Tombstones: a takedown writes tombstones.npy (the removed sample_ids) before it rewrites the index files,
which for on-disk lists means a rebuild that can take long. Whatever the files still hold, no result and
no metadata lookup gives a tombstoned id: an IVF searched without reconstruction skips them inside faiss
(an IDSelector), every other search asks for as many more results as there are tombstones and drops them.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os

import numpy as np

from laion_spark.index import build as B
from laion_spark.search import local
from laion_spark.search.filters import apply_filters
from laion_spark.search.metadata import Metadata

log = logging.getLogger(__name__)
MAX_K = 10_000
SIMILARITY = "similarity"
PAIR_SIMILARITY = "pair_similarity"


class SearchError(ValueError):
    """A query that cannot be searched (empty text, an image that does not decode, k out of range, an
    embedding of the wrong size): the caller's mistake, said in the message."""


def _open_index(folder: str, infos: dict):
    shards = sorted(glob.glob(os.path.join(folder, "shards", "knn_*.index")))
    if shards:
        return B.ShardSet([B.read_index(p, mmap=True) for p in shards])
    path = os.path.join(folder, "knn.index")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder} has neither knn.index nor shards/knn_*.index")
    if glob.glob(os.path.join(glob.escape(folder), "*.ivfdata")) and not os.path.exists(
            os.path.join(folder, "knn.ivfdata")):
        import faiss

        # on-disk lists under the name knn.index gives them (a takedown's rewrite may rename the file)
        return faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    return B.read_index(path, mmap=True)


def read_tombstones(data: bytes | None) -> np.ndarray:
    """tombstones.npy's bytes (None: no file) -> the sorted, unique int64 sample_ids it holds."""
    if data is None:
        return np.empty(0, dtype=np.int64)
    ids = np.load(io.BytesIO(data), allow_pickle=False)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"{local.TOMBSTONES} holds {ids.dtype} of shape {ids.shape}, not a list of sample_ids")
    return np.unique(ids.astype(np.int64))


def _skipping(index, tombstones: np.ndarray):
    """-> (faiss search parameters that leave the tombstoned ids out inside an IVF's search, the selectors
    they point to, kept alive with them), or None where the index is no single faiss IVF or has no
    tombstones (the results are filtered after the search)."""
    import faiss

    if not len(tombstones) or isinstance(index, B.ShardSet):
        return None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    batch = faiss.IDSelectorBatch(tombstones)
    selector = faiss.IDSelectorNot(batch)
    # explicit parameters replace the index's own: the tuned nprobe goes along
    return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe, max_codes=ivf.max_codes), (batch, selector)


class Searcher:
    """One index, opened for queries (thread-safe for searches: faiss searches do not write the index)."""

    def __init__(self, index_uri: str, cache_dir: str = "", device: str = "cpu"):
        from laion_spark.index.tune import apply

        self.uri = index_uri
        self.cache_dir = cache_dir
        self._state = local.read_state(index_uri)  # the version opened: what changed() compares
        infos, tombstones = self._state
        self.infos = json.loads(infos)
        self.tombstones = read_tombstones(tombstones)
        self.name = os.path.basename(index_uri.rstrip("/")) or index_uri
        self.field = self.infos.get("field", "image")
        self.dimension = int(self.infos["dimension"])
        self.device = device
        cache = local.cache_folder(index_uri, self.infos, cache_dir, tombstones)
        self.folder = local.local_index_folder(index_uri, self.infos, cache, tombstones)
        self.index = _open_index(self.folder, self.infos)
        if self.infos.get("index_param"):
            apply(self.index, self.infos["index_param"])
        self._skip = _skipping(self.index, self.tombstones)
        self.meta = Metadata(f"{index_uri.rstrip('/')}/metadata", os.path.join(cache, "metadata"), self.tombstones)
        self._model = None

    def changed(self) -> bool:
        """-> whether the index at the URI is no longer the version opened (its index_infos.json or
        tombstones.npy differ: a takedown, a rebuild). Reads those two small files; raises what reading
        them raises (a folder gone: FileNotFoundError)."""
        return local.read_state(self.uri) != self._state

    def reopen(self) -> Searcher:
        """-> a new Searcher of the index now at the URI (the model, cached per process, is not loaded again)."""
        return Searcher(self.uri, self.cache_dir, self.device)

    def _alive(self, ids: np.ndarray) -> np.ndarray:
        """int64 ids -> a mask: True where the id is not tombstoned."""
        if not len(self.tombstones):
            return np.ones(len(ids), dtype=bool)
        return ~np.isin(ids, self.tombstones)

    # ------------------------------------------------------------------ encoding a query
    def _loaded(self):
        from laion_spark.embed.cache import get_model
        from laion_spark.embed.model import ModelSpec

        spec = self.infos.get("model") or {}
        if not spec.get("model") or not spec.get("pretrained"):
            raise SearchError(f"index {self.name} names no model to encode a text or image query with "
                              f"(index_infos.json 'model' is {spec!r}); search it with an embedding")
        from laion_spark.embed.model import ModelLoadError

        try:
            return get_model(ModelSpec(spec["model"], spec["pretrained"], spec.get("model_config") or "", "search"),
                             self.device)
        except ModelLoadError as exc:  # the query cannot be encoded here; an embedding query still can
            raise SearchError(f"index {self.name}: its model {spec['model']}/{spec['pretrained']} cannot be loaded "
                              f"here to encode the query ({exc}); search it with an embedding") from None

    def embed_text(self, text: str) -> np.ndarray:
        import torch

        from laion_spark.embed.text import encode_text

        if not isinstance(text, str) or not text.strip():
            raise SearchError("the text query is empty")
        loaded = self._loaded()
        with torch.inference_mode():
            out = encode_text(loaded.model, loaded.tokenizer([text]).to(loaded.device), trim=True).float()
        return out.cpu().numpy()[0]

    def embed_image(self, data: bytes) -> np.ndarray:
        import torch

        from laion_spark.embed.encode import ImageRefused, decode_image

        if not data:
            raise SearchError("the image query is empty")
        try:
            im = decode_image(bytes(data))
        except ImageRefused as exc:
            raise SearchError(f"the image query is refused: {exc.reason}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever Pillow raises for bytes that are no image
            raise SearchError(f"the image query does not decode: {type(exc).__name__}: {exc}") from None
        loaded = self._loaded()
        with torch.inference_mode():
            out = loaded.model.encode_image(loaded.preprocess(im)[None].to(loaded.device)).float()
        return out.cpu().numpy()[0]

    def _vector(self, embedding) -> np.ndarray:
        try:
            v = np.asarray(embedding, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise SearchError(f"the embedding is not a list of numbers: {exc}") from None
        if v.shape[0] != self.dimension:
            raise SearchError(f"the embedding has {v.shape[0]} values; index {self.name} holds {self.dimension}")
        norm = float(np.linalg.norm(v))
        if not np.isfinite(v).all() or norm < 1e-12:
            raise SearchError("the embedding is zero or not finite")
        return v / norm

    # ------------------------------------------------------------------ searching
    def query(self, text: str | None = None, image: bytes | None = None, embedding=None, k: int = 10,
              deduplicate: bool = True, dedup_threshold: float = 0.94, unique_urls: bool = True,
              max_punsafe: float | None = None, max_pwatermark: float | None = None) -> list[dict]:
        """One query (exactly one of text, image, embedding) -> up to k rows, best first, filtered."""
        given = [x is not None for x in (text, image, embedding)]
        if sum(given) != 1:
            raise SearchError("give exactly one of text, image or embedding")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise SearchError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if text is not None:
            vector = self.embed_text(text)
        elif image is not None:
            vector = self.embed_image(image)
        else:
            vector = embedding
        q = self._vector(vector)[None, :]
        total = int(self.index.ntotal)
        filtering = deduplicate or unique_urls or max_punsafe is not None or max_pwatermark is not None
        # the tombstoned rows are dropped after the search, unless faiss skips them (no reconstruction there)
        dropped_after = len(self.tombstones) if self._skip is None or deduplicate else 0
        depth = min(total, (k if not filtering else max(4 * k, k + 16)) + dropped_after)
        while True:
            rows, vectors = self._search(q, depth, with_vectors=deduplicate)
            kept, dropped = apply_filters(rows, vectors, deduplicate, dedup_threshold, unique_urls, max_punsafe,
                                          max_pwatermark)
            if len(kept) >= k or depth >= total or depth >= 16 * max(k, 16):
                break
            depth = min(total, depth * 4)  # the filters took too many: look deeper
        if any(dropped.values()):
            log.debug("search %s: filters dropped %s", self.name, dropped)
        return kept[:k]

    def _search(self, q: np.ndarray, depth: int, with_vectors: bool) -> tuple[list[dict], np.ndarray | None]:
        if depth <= 0:
            return [], None
        vectors = None
        if with_vectors:
            try:
                scores, ids, vectors = self.index.search_and_reconstruct(q, depth)
                vectors = vectors[0]
            except RuntimeError as exc:  # an index type faiss cannot decode in place: no dedup, said once
                log.warning("search %s: results cannot be reconstructed (%s); near duplicates are kept",
                            self.name, exc)
                scores, ids = self.index.search(q, depth)
                vectors = None
        elif self._skip is not None:
            scores, ids = self.index.search(q, depth, params=self._skip[0])
        else:
            scores, ids = self.index.search(q, depth)
        real = (ids[0] != B.NO_ID) & self._alive(ids[0])
        ids, scores = ids[0][real], scores[0][real]
        if vectors is not None:
            vectors = vectors[real]
        rows = []
        for sid, score, meta in zip(ids.tolist(), scores.tolist(), self.meta.rows(ids), strict=True):
            row = {"sample_id": int(sid), SIMILARITY: float(score)}
            for key, value in (meta or {}).items():
                if key == "sample_id":
                    continue
                row[PAIR_SIMILARITY if key == SIMILARITY else key] = value
            rows.append(row)
        return rows, vectors

    def metadata(self, sample_ids) -> list[dict | None]:
        """sample_ids -> their metadata rows (None where the index has no such id, or a takedown removed it);
        similarity as pair_similarity."""
        out = []
        alive = self._alive(np.asarray(sample_ids, dtype=np.int64).reshape(-1))
        for row, keep in zip(self.meta.rows(sample_ids), alive.tolist(), strict=True):
            if row is not None and SIMILARITY in row:
                row[PAIR_SIMILARITY] = row.pop(SIMILARITY)
            out.append(row if keep else None)
        return out


def open_indices(uri: str, cache_dir: str = "", device: str = "cpu") -> dict[str, Searcher]:
    """One index folder -> {its name: Searcher}; a folder of index folders (image/, text/, one per model)
    -> one Searcher each, named by folder."""
    import fsspec

    from laion_spark.io import fsspec_uri

    fs, path = fsspec.core.url_to_fs(fsspec_uri(uri))
    base = path.rstrip("/")
    if fs.exists(f"{base}/{local.INFOS}"):
        s = Searcher(uri, cache_dir, device)
        return {s.name: s}
    found = {}
    prefix = uri.rstrip("/")
    for child in sorted(fs.ls(base, detail=True), key=lambda e: e["name"]):
        name = child["name"].rstrip("/").rsplit("/", 1)[-1]
        if child["type"] == "directory" and fs.exists(f"{child['name'].rstrip('/')}/{local.INFOS}"):
            found[name] = Searcher(f"{prefix}/{name}", cache_dir, device)
    if not found:
        raise FileNotFoundError(f"{uri} holds no index: neither {local.INFOS} nor folders that have one")
    return found
