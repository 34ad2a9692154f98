"""The index chooser: (vectors, dimension, memory budget) -> one faiss index plan, never an empty choice.

INPUT  -> the number of vectors N, their dimension d, `index.max_index_memory` (bytes, or a string with
          K / M / G / T = 2^10 / 2^20 / 2^30 / 2^40), optionally a forced faiss factory key
OUTPUT -> a Plan: the factory key, the estimated bytes search holds (`memory_bytes`), the training
          sample size and its memory, the candidates that were weighed and why each was or was not
          taken; or IndexPlanError naming the smallest budget that fits

What search holds: the index file as it is read (codes, ids, centroids, quantiser, rotation); for
inverted lists kept on disk that is the same bytes, paged in by the OS as queries touch them, so the
budget counts them too (a budget that left them out would let any index "fit" and then page forever).

The rule, in order of accuracy, taking the first candidate that fits the budget:
  exact       IVF1,Flat when N x d is small enough for a scan to answer within a few ms (an IVF with
              one list is a flat scan that takes ids, memory-maps and merges: faiss's IndexFlat does none)
  IVF,Flat    raw float32 vectors in c lists
  IVF,SQfp16 / SQ8 / SQ6    scalar quantisation: 2 / 1 / 0.75 bytes per dimension, trained per dimension
  IVF,PQm     product quantisation, m bytes per vector (m divides d, m <= d/2, from large to small), with
              an OPQ rotation where sub-vectors have 4 or more dimensions (there it pays), and an HNSW
              coarse quantiser when c >= 16384 (assigning a vector to one of many lists by a flat scan
              costs c x d per vector)
  c is a power of two near 4 sqrt(N); a code that fits only with fewer lists is taken with c/2 or c/4
  before a coarser code with c (the centroids are the difference; the code is most of the recall)
Where autofaiss differs (reference: peers-index-tag-export.md): it returns an empty list for small
budgets (#118); this gives the smallest budget that fits instead. It trains on the first vectors (#99);
the job samples at random. Its training memory misses OPQ's second copy (#85); `train_memory_bytes`
counts the sample, OPQ's rotated copy and the k-means assignment buffers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# a flat scan of N x d floats answers one query in about N x d / 4e9 s on one core: 2^24 is a few ms
EXACT_MAX_CELLS = 2**24
MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid
PQ_TRAIN_MIN = 256 * MIN_POINTS_PER_LIST  # 8-bit codebooks: 256 centroids per sub-quantiser
HNSW_QUANTIZER_MIN_LISTS = 16384
HNSW_M = 32
ID_BYTES = 8


class IndexPlanError(ValueError):
    """No index fits the budget (the message names the smallest budget that fits), or a bad forced key."""


def parse_bytes(value: int | float | str) -> int:
    """'4G' / '256M' / '1.5G' / '800GB' / 1073741824 -> bytes (K/M/G/T are powers of 2^10)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise IndexPlanError(f"a memory size must be positive, got {value}")
        return int(value)
    text = str(value).strip().upper().replace(" ", "")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)(I?B)?", text)
    if not m:
        raise IndexPlanError(f"memory size {value!r}: write bytes, or a number with K, M, G or T (e.g. 4G, 256M)")
    size = int(float(m.group(1)) * _UNITS[m.group(2)])
    if size <= 0:
        raise IndexPlanError(f"a memory size must be positive, got {value!r}")
    return size


def format_bytes(n: float) -> str:
    """bytes -> '1.5G' style (binary units), the spelling parse_bytes reads back."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.4g}{unit}"
    return f"{int(n)}"


@dataclass(frozen=True)
class Candidate:
    key: str
    memory_bytes: int
    fits: bool
    why: str


@dataclass(frozen=True)
class Plan:
    key: str  # the faiss index_factory string (inner product metric)
    nb_vectors: int
    dimension: int
    nlist: int
    encoding: str  # Flat, SQfp16, SQ8, SQ6, PQ{m}
    code_bytes: int  # per vector, ids excluded
    memory_bytes: int  # what search holds (see the module docstring)
    budget_bytes: int
    train_size: int
    train_memory_bytes: int
    exact: bool  # a flat scan: every search parameter gives the exact result
    hnsw_quantizer: bool
    candidates: tuple[Candidate, ...] = field(default=())

    def as_dict(self) -> dict:
        return {"index_key": self.key, "nb_vectors": self.nb_vectors, "dimension": self.dimension,
                "nlist": self.nlist, "encoding": self.encoding, "code_bytes": self.code_bytes,
                "memory_bytes": self.memory_bytes, "budget_bytes": self.budget_bytes,
                "train_size": self.train_size, "train_memory_bytes": self.train_memory_bytes,
                "exact": self.exact,
                "candidates": [c.__dict__ for c in self.candidates]}


def nlist_for(n: int) -> int:
    """N vectors -> the inverted list count: a power of two near 4 sqrt(N), with at least
    MIN_POINTS_PER_LIST vectors per list (a list count the data cannot train is no use)."""
    if n < 2 * MIN_POINTS_PER_LIST:
        return 1
    c = 2 ** round(math.log2(4 * math.sqrt(n)))
    while c > 1 and n / c < MIN_POINTS_PER_LIST:
        c //= 2
    return max(1, c)


def _code_bytes(encoding: str, d: int) -> int:
    if encoding == "Flat":
        return 4 * d
    if encoding == "SQfp16":
        return 2 * d
    if encoding == "SQ8":
        return d
    if encoding == "SQ6":
        return math.ceil(6 * d / 8)
    if encoding == "SQ4":
        return math.ceil(d / 2)
    m = re.fullmatch(r"PQ(\d+)", encoding)
    if m:
        return int(m.group(1))
    raise IndexPlanError(f"unknown encoding {encoding}")


_PQ_M = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # sub-quantiser counts faiss handles well


def _pq_sizes(d: int) -> list[int]:
    """Sub-quantiser counts m for d, large to small: m divides d, m <= d/2, 8-bit codes."""
    return [m for m in range(d // 2, 0, -1) if d % m == 0 and m in _PQ_M]


def _uses_opq(encoding: str, d: int) -> bool:
    m = re.fullmatch(r"PQ(\d+)", encoding)
    return bool(m) and d // int(m.group(1)) >= 4


def _memory(n: int, d: int, nlist: int, encoding: str, hnsw: bool) -> int:
    code = _code_bytes(encoding, d)
    total = n * (code + ID_BYTES)
    if nlist > 1:
        total += nlist * d * 4  # coarse centroids
        total += nlist * 8 * 2  # inverted list headers (size + pointer)
    if hnsw:
        total += nlist * (2 * HNSW_M * 4 + 16)  # level-0 links (2M per node, int32) + levels and offsets
    if encoding.startswith("SQ"):
        total += 2 * d * 4  # per-dimension min / range
    if encoding.startswith("PQ"):
        total += 256 * d * 4  # codebooks: m x 256 x (d/m) floats
        if _uses_opq(encoding, d):
            total += d * d * 4  # the rotation matrix
    return total


def _train_size(n: int, nlist: int, encoding: str, max_train_vectors: int) -> int:
    want = max(64 * nlist, PQ_TRAIN_MIN if encoding.startswith("PQ") else 0,
               1000 if encoding.startswith("SQ") else 0)
    floor = MIN_POINTS_PER_LIST * nlist
    return int(min(n, max(min(want, max_train_vectors), floor)))


def _train_memory(size: int, d: int, nlist: int, encoding: str) -> int:
    sample = size * d * 4
    total = sample + size * 8 * 2  # the sample, plus k-means assignments and distances
    total += nlist * d * 4 * 2  # centroids and their update buffer
    if _uses_opq(encoding, d):
        total += sample  # OPQ trains on a rotated copy of the sample (autofaiss#85 missed this)
    return total


def _key(nlist: int, encoding: str, d: int, hnsw: bool) -> str:
    coarse = f"IVF{nlist}_HNSW{HNSW_M}" if hnsw else f"IVF{nlist}"
    if encoding.startswith("PQ"):
        m = int(encoding[2:])
        body = f"{coarse},PQ{m}x8"
        return f"OPQ{m}_{d},{body}" if _uses_opq(encoding, d) else body
    return f"{coarse},{encoding}"


def plan_index(n: int, d: int, budget: int | str, forced_key: str = "", max_train_vectors: int = 1_000_000) -> Plan:
    """N, d, budget -> the Plan (see the module docstring); IndexPlanError when nothing fits."""
    if n <= 0:
        raise IndexPlanError("no vectors to index")
    if d <= 0:
        raise IndexPlanError(f"dimension {d}")
    budget_bytes = parse_bytes(budget)
    if forced_key:
        return _forced(n, d, budget_bytes, forced_key, max_train_vectors)
    nlist = nlist_for(n)
    hnsw = nlist >= HNSW_QUANTIZER_MIN_LISTS
    options: list[tuple[int, str, bool]] = []
    if n * d <= EXACT_MAX_CELLS or nlist == 1:
        options.append((1, "Flat", False))
    if nlist > 1:
        # PQ's 8-bit codebooks need about 10k training vectors; below that only scalar quantisers
        pq = [f"PQ{m}" for m in _pq_sizes(d)] if n >= PQ_TRAIN_MIN else []
        for enc in ("Flat", "SQfp16", "SQ8", "SQ6", *pq, "SQ4"):
            options.append((nlist, enc, hnsw))
        options.sort(key=lambda o: -_code_bytes(o[1], d) if o[0] > 1 else -10**12)
    candidates = []
    chosen = None
    for lists, enc, _ in options:
        # a code that misses the budget by the centroids' share fits with fewer lists: a finer code is
        # worth more recall than more lists (1M x 512 in 256M: IVF1024,PQ256 0.947 recall@10 against
        # OPQ128,IVF4096,PQ128 0.852, in bench/index.py's data)
        tries = [lists] if lists == 1 or chosen is not None else [lists, lists // 2, lists // 4]
        for c in tries:
            with_hnsw = c >= HNSW_QUANTIZER_MIN_LISTS
            mem = _memory(n, d, c, enc, with_hnsw)
            key = _key(c, enc, d, with_hnsw)
            fits = mem <= budget_bytes
            why = "fits" if fits else f"needs {format_bytes(mem)} > budget {format_bytes(budget_bytes)}"
            if fits and chosen is not None:
                why = "fits, but less accurate than the one taken"
            candidates.append(Candidate(key, mem, fits, why))
            if fits and chosen is None:
                chosen = (c, enc, with_hnsw, mem, key)
            if fits:
                break
    if chosen is None:
        smallest = min(c.memory_bytes for c in candidates)
        raise IndexPlanError(
            f"no index of {n} vectors x {d} dimensions fits index.max_index_memory={format_bytes(budget_bytes)}; "
            f"the smallest ({min(candidates, key=lambda c: c.memory_bytes).key}) needs {format_bytes(smallest)}: "
            f"set index.max_index_memory={format_bytes(math.ceil(smallest * 1.01))} or more")
    lists, enc, with_hnsw, mem, key = chosen
    # the exact index trains one centroid: a small sample does it
    size = _train_size(n, lists, enc, max_train_vectors) if lists > 1 or enc != "Flat" else min(n, 1000)
    return Plan(key=key, nb_vectors=n, dimension=d, nlist=lists, encoding=enc, code_bytes=_code_bytes(enc, d),
                memory_bytes=mem, budget_bytes=budget_bytes, train_size=size,
                train_memory_bytes=_train_memory(size, d, lists, enc) if size else 0,
                exact=(lists == 1 and enc == "Flat"), hnsw_quantizer=with_hnsw, candidates=tuple(candidates))


_FORCED = re.compile(r"(?:OPQ(\d+)(?:_(\d+))?,)?IVF(\d+)(_HNSW\d+)?,(Flat|SQfp16|SQ8|SQ6|SQ4|PQ(\d+)(?:x8)?)")


def plan_candidates(n: int, d: int, budget: int | str, forced_key: str = "", max_train_vectors: int = 1_000_000,
                    count: int = 2) -> list[Plan]:
    """N, d, budget -> the plans worth measuring, best by the rule first: plan_index's choice, then up to
    count - 1 more that fit, each with another encoding (the rule's order is a guess about recall; the job
    measures them on a sample, index/choose.py). A forced key with `;` (IVF4096,SQ4;IVF1024,PQ256x8) gives
    each of its keys, in its order. The exact scan has nothing to weigh: it is alone."""
    if forced_key and ";" in forced_key:
        keys = [k for k in (part.strip() for part in forced_key.split(";")) if k]
        if not keys:
            raise IndexPlanError(f"index.key={forced_key!r}: no key between the ';'")
        return [plan_index(n, d, budget, k, max_train_vectors) for k in keys]
    first = plan_index(n, d, budget, forced_key, max_train_vectors)
    if forced_key or first.exact or count <= 1:
        return [first]
    out, encodings = [first], {first.encoding}
    for c in first.candidates:
        if len(out) >= count:
            break
        if not c.fits or c.key == first.key:
            continue
        other = _forced(n, d, first.budget_bytes, c.key, max_train_vectors, why=c.why)
        if other.encoding in encodings or other.exact:
            continue
        encodings.add(other.encoding)
        out.append(other)
    return out


def _forced(n: int, d: int, budget_bytes: int, key: str, max_train_vectors: int,
            why: str = "forced by index.key") -> Plan:
    """A factory key (a user's own, or a candidate's) -> its Plan (IVF families only: they take ids,
    memory-map and merge)."""
    m = _FORCED.fullmatch(key.replace(" ", ""))
    if not m:
        raise IndexPlanError(f"index.key={key!r}: give an IVF key such as IVF1024,SQ8, IVF4096_HNSW32,PQ64x8 or "
                             "OPQ64_512,IVF4096,PQ64x8 (IVF indices take sample_ids, memory-map and merge on disk)")
    nlist = int(m.group(3))
    encoding = m.group(5) if not m.group(6) else f"PQ{m.group(6)}"
    if encoding.startswith("PQ") and d % int(m.group(6)):
        raise IndexPlanError(f"index.key={key!r}: PQ{m.group(6)} needs a dimension divisible by {m.group(6)}, not {d}")
    if n < nlist:
        raise IndexPlanError(f"index.key={key!r}: {nlist} lists but only {n} vectors to train them")
    hnsw = bool(m.group(4))
    mem = _memory(n, d, nlist, encoding, hnsw)
    size = _train_size(n, nlist, encoding, max_train_vectors) if (nlist > 1 or encoding != "Flat") else min(n, 1000)
    return Plan(key=key.replace(" ", ""), nb_vectors=n, dimension=d, nlist=nlist, encoding=encoding,
                code_bytes=_code_bytes(encoding, d), memory_bytes=mem, budget_bytes=budget_bytes, train_size=size,
                train_memory_bytes=_train_memory(size, d, nlist, encoding) if size else 0,
                exact=(nlist == 1 and encoding == "Flat"), hnsw_quantizer=hnsw,
                candidates=(Candidate(key, mem, mem <= budget_bytes, why),))
