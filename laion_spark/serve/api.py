"""clip-retrieval's JSON API over our Searchers: request bodies -> checked queries -> clip-retrieval's responses.

INPUT  -> the decoded JSON body of POST /knn-service (text | image (base64) | image_url | embedding_input,
          modality, num_images, num_result_ids, indice_name, deduplicate, use_safety_model,
          use_violence_detector, use_mclip, aesthetic_score, aesthetic_weight; and ours, unique_urls)
          or POST /metadata
          ({"indice_name", "ids"}), the served indices {name: Searcher} and the server's Settings
OUTPUT -> KnnQuery (what to search, where, with which filters, and which fields could not be honoured);
          result rows in clip-retrieval's shape ({"url", "caption", "id", "similarity", ... the other
          metadata columns}); /metadata's [{"id", "metadata"}]; ApiError(status, message) for a bad request

No HTTP here (app.py is the transport) and no Spark: plain functions a test can call directly.

Which index a request searches: indices are named by folder (`/indices-list`); `modality` says which
embeddings to search, as in clip-retrieval where one indice holds an image and a text index. A request
naming the `image` index with modality "text" searches the served text index of the same CLIP model
(the pipeline's run_dir/index holds image/ and text/); without indice_name, the first index of that
modality. Fields we cannot honour (violence detector, aesthetic re-ranking, mclip) are accepted and named
in KnnQuery.unhonoured, which the response reports; fields we do not know are named in KnnQuery.ignored.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field

MODALITIES = ("image", "text")
# clip-retrieval's request fields (ClipClient sends every one of them, null where unused), + verbose (its
# client sends it too)
KNN_FIELDS = frozenset({"text", "image", "image_url", "embedding_input", "modality", "num_images", "num_result_ids",
                        "indice_name", "use_mclip", "deduplicate", "use_safety_model", "use_violence_detector",
                        "aesthetic_score", "aesthetic_weight", "verbose",
                        "unique_urls"})  # ours: clip-retrieval's front drops duplicate URLs itself, we do it here
LAION_UNSAFE = 0.5  # LAION's rule: punsafe > 0.5 is unsafe (clip-retrieval's safety model threshold)


class ApiError(Exception):
    """A request we refuse: the HTTP status (4xx) and a message saying what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Settings:
    """What the server applies to every request (from cfg.serve and cfg.search)."""

    max_k: int = 1000
    default_k: int = 10
    deduplicate: bool = True  # when a request does not say
    dedup_threshold: float = 0.94
    unique_urls: bool = True
    safety_threshold: float = LAION_UNSAFE  # use_safety_model=true drops punsafe above this
    max_pwatermark: float | None = None  # always applied where set (no clip-retrieval field for it)
    allow_image_url: bool = False
    max_query_pixels: int = 16_777_216  # a query image with more (from its header) is refused undecoded

    @classmethod
    def from_config(cls, cfg) -> Settings:
        """JobConfig -> Settings (search.max_punsafe, when set, is the safety threshold; else LAION's 0.5)."""
        s, v = cfg.search, cfg.serve
        return cls(max_k=v.max_k, default_k=min(s.k, v.max_k), deduplicate=s.deduplicate,
                   dedup_threshold=s.dedup_threshold, unique_urls=s.unique_urls,
                   safety_threshold=s.max_punsafe if s.max_punsafe >= 0 else LAION_UNSAFE,
                   max_pwatermark=s.max_pwatermark if s.max_pwatermark >= 0 else None,
                   allow_image_url=v.allow_image_url, max_query_pixels=v.max_query_pixels)


@dataclass(frozen=True)
class KnnQuery:
    """One checked /knn-service request."""

    index: str  # the served index searched
    text: str | None = None
    image: bytes | None = None
    image_url: str | None = None  # fetched by the app (through download's guard) into image
    embedding: list | None = None
    num_images: int = 10  # rows returned with their metadata
    num_result_ids: int = 10  # rows returned in all (those past num_images: id and similarity only)
    deduplicate: bool = True
    unique_urls: bool = True  # results with a URL already shown are dropped
    max_punsafe: float | None = None
    unhonoured: tuple[str, ...] = ()  # accepted fields whose effect we do not apply (reported)
    ignored: tuple[str, ...] = field(default=())  # fields clip-retrieval does not have either


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {value!r}")
    return value


def _count(body: dict, name: str, default: int, max_k: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ApiError(400, f"{name} must be at least 1, got {value}")
    if value > max_k:
        raise ApiError(400, f"{name}={value} is more than this server gives (serve.max_k={max_k})")
    return value


def _optional_number(body: dict, name: str):
    """aesthetic_score / aesthetic_weight: a number, a numeric string, "" or null (clip-retrieval's spellings)."""
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ApiError(400, f"{name} must be a number or \"\", got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number or \"\", got {value!r}") from None


def decode_base64_image(value) -> bytes:
    """The request's image field (standard base64, optionally a data: URL, line breaks allowed) -> bytes."""
    if not isinstance(value, str):
        raise ApiError(400, f"image must be a base64 string, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("data:") and "," in text:  # a browser's FileReader.readAsDataURL
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if not text:
        raise ApiError(400, "image is empty")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"image is not valid base64: {exc}") from None
    if not data:
        raise ApiError(400, "image is empty")
    return data


def pick_index(indices: dict, name, modality) -> str:
    """Served indices {name: Searcher} + the request's indice_name and modality -> the index to search."""
    served = ", ".join(f"{n} ({s.field})" for n, s in indices.items())
    if modality is not None and modality not in MODALITIES:
        raise ApiError(400, f"modality must be \"image\" or \"text\", got {modality!r}")
    if name is None or name == "":
        chosen = [n for n, s in indices.items() if modality is None or s.field == modality]
        if not chosen:
            raise ApiError(400, f"no {modality} index is served; served: {served}")
        return chosen[0]
    if not isinstance(name, str) or name not in indices:
        raise ApiError(400, f"unknown indice_name {name!r}; served: {served} (GET /indices-list)")
    own = indices[name]
    if modality is None or own.field == modality:
        return name
    model = own.infos.get("clip_model")
    for other, s in indices.items():
        if s.field == modality and s.infos.get("clip_model") == model:
            return other
    raise ApiError(400, f"index {name!r} holds {own.field} embeddings and no {modality} index of its model "
                   f"({model}) is served; served: {served}")


def parse_knn(body, indices: dict, settings: Settings) -> KnnQuery:
    """A decoded /knn-service body -> KnnQuery, or ApiError(4xx) saying what is wrong with it."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
    given = [f for f in ("text", "image", "image_url", "embedding_input") if body.get(f) is not None]
    if len(given) != 1:
        raise ApiError(400, "give exactly one of text, image (base64), image_url or embedding_input"
                       + (f"; got {', '.join(given)}" if given else ""))
    index = pick_index(indices, body.get("indice_name"), body.get("modality"))
    num_images = _count(body, "num_images", settings.default_k, settings.max_k)
    num_result_ids = max(num_images, _count(body, "num_result_ids", num_images, settings.max_k))
    query: dict = {}
    what = given[0]
    value = body[what]
    if what == "text":
        if not isinstance(value, str) or not value.strip():
            raise ApiError(400, "text is empty" if isinstance(value, str) else f"text must be a string, got {value!r}")
        query["text"] = value
    elif what == "image":
        query["image"] = decode_base64_image(value)
    elif what == "image_url":
        if not settings.allow_image_url:
            raise ApiError(403, "image_url is off on this server (serve.allow_image_url=false): send the image "
                           "itself, base64-encoded, as image")
        if not isinstance(value, str) or not value.strip():
            raise ApiError(400, f"image_url must be a URL string, got {value!r}")
        query["image_url"] = value.strip()
    else:
        if not isinstance(value, list) or not value or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in value):
            raise ApiError(400, "embedding_input must be a non-empty list of numbers")
        query["embedding"] = value
    deduplicate = _bool(body, "deduplicate", settings.deduplicate)
    unique_urls = _bool(body, "unique_urls", settings.unique_urls)
    safety = _bool(body, "use_safety_model", False)
    unhonoured = []
    if safety and "punsafe" not in indices[index].infos.get("metadata_columns", ()):
        unhonoured.append("use_safety_model")  # the index has no punsafe scores to filter on
    if _bool(body, "use_violence_detector", False):
        unhonoured.append("use_violence_detector")
    if _bool(body, "use_mclip", False):
        unhonoured.append("use_mclip")  # the query is encoded with the index's own CLIP
    if _optional_number(body, "aesthetic_score") is not None:
        unhonoured.append("aesthetic_score")
    if _optional_number(body, "aesthetic_weight") is not None:
        unhonoured.append("aesthetic_weight")
    ignored = tuple(sorted(k for k in body if k not in KNN_FIELDS))
    return KnnQuery(index=index, num_images=num_images, num_result_ids=num_result_ids, deduplicate=deduplicate,
                    unique_urls=unique_urls, max_punsafe=settings.safety_threshold if safety else None,
                    unhonoured=tuple(unhonoured),
                    ignored=ignored, **query)


def _json_value(value):
    """A metadata value -> what JSON can hold (NaN and infinities, which JSON has not, -> null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def clip_metadata(row: dict) -> dict:
    """A Searcher row -> clip-retrieval's metadata naming: text -> caption; sample_id and similarity left out
    (the result's id and similarity); every other column as it is."""
    out = {}
    for key, value in row.items():
        if key in ("sample_id", "similarity"):
            continue
        out["caption" if key == "text" else key] = _json_value(value)
    return out


def knn_response(rows: list[dict], num_images: int, thumbnail=None) -> list[dict]:
    """Searcher rows, best first -> clip-retrieval's /knn-service list: the first num_images with their
    metadata, the rest id and similarity only (clip-retrieval's num_result_ids, fetched later by /metadata).

    thumbnail: sample_id -> the path of its stored image on this server (None: no images table); given as
    `thumbnail` beside the metadata, as clip-retrieval gives `image`, so a browser needs no sample_id of
    its own (a JavaScript number holds integers up to 2^53 only, sample_ids go to 2^63).
    """
    out = []
    for rank, row in enumerate(rows):
        result = clip_metadata(row) if rank < num_images else {}
        if thumbnail is not None and rank < num_images:
            result["thumbnail"] = thumbnail(int(row["sample_id"]))
        result["id"] = int(row["sample_id"])
        result["similarity"] = _json_value(float(row["similarity"]))
        out.append(result)
    return out


def run_knn(searcher, q: KnnQuery, settings: Settings, image: bytes | None = None, thumbnail=None) -> list[dict]:
    """A checked query (image: the fetched bytes of its image_url; thumbnail: as knn_response takes it) ->
    the /knn-service response list. Raises the Searcher's SearchError for a query it cannot search (the app
    answers 400)."""
    rows = searcher.query(text=q.text, image=image if image is not None else q.image, embedding=q.embedding,
                          k=q.num_result_ids, deduplicate=q.deduplicate, dedup_threshold=settings.dedup_threshold,
                          unique_urls=q.unique_urls, max_punsafe=q.max_punsafe,
                          max_pwatermark=settings.max_pwatermark)
    return knn_response(rows, q.num_images, thumbnail)


def parse_metadata(body, indices: dict, settings: Settings) -> tuple[str, list[int]]:
    """A /metadata body {"indice_name", "ids"} -> (index name, ids), or ApiError."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ApiError(400, "ids must be a list of integer ids")
    if len(ids) > settings.max_k:
        raise ApiError(400, f"{len(ids)} ids is more than this server gives at once (serve.max_k={settings.max_k})")
    if any(not -2**63 <= i < 2**63 for i in ids):
        raise ApiError(400, "ids must be 64-bit integers (sample_ids)")
    return pick_index(indices, body.get("indice_name"), None), ids


def metadata_response(searcher, ids: list[int]) -> list[dict]:
    """ids -> clip-retrieval's /metadata list [{"id", "metadata"}] (metadata null where the index has no such id)."""
    rows = searcher.metadata(ids) if ids else []
    return [{"id": i, "metadata": None if row is None else clip_metadata(row)} for i, row in zip(ids, rows)]
