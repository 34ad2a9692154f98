"""open_clip models named in config: which model serves which language group, checking and loading one.

INPUT  -> EmbedConfig (model, pretrained, model_config, models.<group>)
OUTPUT -> model_specs: a ModelSpec per language group (picklable: what a worker needs to load it);
          check_spec: the driver's checks before any Spark work (architecture known, tag known and,
          offline, in the hub cache; checkpoint file present and fitting the architecture, checked
          on the meta device so no weights are allocated); load_model: the worker's model on its
          device with the model's own preprocess and tokenizer

`embed.pretrained` is an open_clip pretrained tag (downloaded by open_clip from the Hugging Face
Hub, or taken from its cache) or a checkpoint: a local file, or a URI (s3://, gs://, hdfs://, ...)
that each worker copies once into its temporary folder. With HF_HUB_OFFLINE set, a tag that is not
in the cache is an error that says how to pass a local checkpoint; nothing is fetched.
A custom architecture's JSON (`embed.model_config`) is read on the driver, shipped inside the
ModelSpec and registered with open_clip (open_clip.add_model_config) under `embed.model` in every
process that loads it, so the file need not exist on the executors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laion_spark.config import ConfigError
from laion_spark.schemas import LANGUAGE_GROUPS

log = logging.getLogger(__name__)

# hex digits of a checkpoint's sha256 in its clip_model name: 48 bits, enough to tell a user's
# checkpoints apart, short enough to read
CHECKSUM_CHARS = 12
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")  # what open_clip needs to accept a model config


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message names the setting and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """One model as config names it; equal specs are one model (the worker cache's key)."""

    model: str  # open_clip architecture
    pretrained: str  # pretrained tag, or checkpoint file / URI
    model_config: str = ""  # JSON text of a custom architecture ('' = one of open_clip's)
    setting: str = field(default="embed", compare=False)  # the config key it came from, for messages
    # a checkpoint's content hash (checkpoint_checksum), taken on the driver by model_specs so that
    # workers need not read a remote file to name it; '' = taken when the name is first asked for
    checksum: str = ""

    @property
    def is_checkpoint(self) -> bool:
        return looks_like_checkpoint(self.pretrained)

    @property
    def name(self) -> str:
        """The clip_model column: MODEL/TAG, or MODEL/<checkpoint file name>@<checksum>.

        A checkpoint is named by its content too: two different `epoch_latest.pt` files are two
        embedding spaces, which filter and index must never take for one; the file name stays, to
        be read. A hub tag names its weights already (ViT-B-32/laion2b_s34b_b79k)."""
        if self.is_checkpoint:
            checksum = self.checksum or checkpoint_checksum(self.pretrained)
            return f"{self.model}/{self.pretrained.rstrip('/').rsplit('/', 1)[-1]}@{checksum}"
        return f"{self.model}/{self.pretrained}"

    @property
    def arch(self) -> str:
        """The architecture name open_clip looks up (it spells '/' as '-'; hf-hub:ORG/REPO stays as is)."""
        return self.model if ":" in self.model else self.model.replace("/", "-")


@dataclass
class LoadedModel:
    """A model ready on its device, with its own preprocess (PIL -> tensor) and tokenizer."""

    name: str
    model: Any
    preprocess: Any
    tokenizer: Any
    device: str


def looks_like_checkpoint(pretrained: str) -> bool:
    """embed.pretrained -> whether it names a file (a path, a URI, a checkpoint suffix) rather than a tag.

    open_clip's tags are plain names (laion2b_s34b_b79k, openai): no '/', no ':', no suffix.
    """
    p = pretrained.strip()
    return ("/" in p or "\\" in p or ":" in p or p.lower().endswith(CHECKPOINT_SUFFIXES)
            or os.path.isfile(p))


def _is_remote(uri: str) -> bool:
    return ("://" in uri and not uri.startswith("file://")) or uri.startswith("dbfs:")


def _local_path(uri: str) -> str:
    return os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri)


def checkpoint_checksum(uri: str) -> str:
    """A checkpoint file or URI -> the first CHECKSUM_CHARS hex digits of the sha256 of its bytes
    (FileNotFoundError when absent); read once per process (laion_spark.checksum caches it)."""
    from laion_spark.checksum import content_hash

    return content_hash(uri if _is_remote(uri) else _local_path(uri), CHECKSUM_CHARS)


# --- config -> specs (driver) ----------------------------------------------------------------------

def _read_model_config(uri: str, setting: str) -> str:
    """A model config URI -> its JSON text (normalised), or ConfigError."""
    import fsspec

    from laion_spark.io import fsspec_uri

    try:
        with fsspec.open(fsspec_uri(uri), "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{setting}.model_config not found: {uri}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{setting}.model_config {uri} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(k in data for k in _CONFIG_KEYS):
        raise ConfigError(f"{setting}.model_config {uri} is not an open_clip model config: it needs the keys "
                          f"{', '.join(_CONFIG_KEYS)} (see open_clip/model_configs/*.json)")
    return json.dumps(data, sort_keys=True)


def _spec(model: str, pretrained: str, model_config: str, setting: str) -> ModelSpec:
    model, pretrained, model_config = model.strip(), pretrained.strip(), model_config.strip()
    if not model:
        raise ConfigError(f"{setting}: the model (open_clip architecture, e.g. ViT-B-32) is empty")
    if not pretrained:
        raise ConfigError(f"{setting}: pretrained is empty; give an open_clip pretrained tag (e.g. "
                          "laion2b_s34b_b79k) or a checkpoint file: random weights would differ per worker")
    text = _read_model_config(model_config, setting) if model_config else ""
    checksum = ""
    if looks_like_checkpoint(pretrained):
        try:
            checksum = checkpoint_checksum(pretrained)
        except FileNotFoundError:
            raise ConfigError(f"{setting}.pretrained: checkpoint file not found: {pretrained}") from None
    return ModelSpec(model, pretrained, text, setting, checksum)


def model_specs(cfg) -> dict[str, ModelSpec]:
    """EmbedConfig -> {language group: ModelSpec}; embed.models.<group> overrides embed.model."""
    base = _spec(cfg.model, cfg.pretrained, cfg.model_config, "embed")
    specs: dict[str, ModelSpec] = {}
    for group in LANGUAGE_GROUPS:
        parts = tuple(getattr(cfg.models, group))
        if not parts:
            specs[group] = base
            continue
        if len(parts) not in (2, 3):
            raise ConfigError(f"embed.models.{group} must be MODEL,PRETRAINED[,MODEL_CONFIG], got {','.join(parts)!r}")
        model, pretrained, config = (*parts, "")[:3]
        spec = _spec(model, pretrained, config, f"embed.models.{group}")
        specs[group] = base if spec == base else spec  # equal specs share one model and its batches
    return specs


# --- open_clip registration and weights ------------------------------------------------------------

def register_config(spec: ModelSpec) -> None:
    """Register spec's custom architecture with open_clip under spec.arch (no-op for built-ins).

    open_clip names a registered config after its file, so the JSON is written to
    <tmp>/laion_spark_model_configs/<digest>/<arch>.json (atomically: concurrent workers) first.
    """
    if not spec.model_config:
        return
    import open_clip

    wanted = json.loads(spec.model_config)
    if open_clip.get_model_config(spec.arch) == wanted:
        return
    digest = hashlib.sha256(spec.model_config.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "laion_spark_model_configs" / digest / f"{spec.arch}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(spec.model_config, encoding="utf-8")
        os.replace(tmp, path)
    open_clip.add_model_config(path)


def _check_arch(spec: ModelSpec) -> None:
    import open_clip

    if ":" in spec.model:  # hf-hub:ORG/REPO, local-dir:PATH: open_clip resolves these itself
        return
    if spec.arch not in open_clip.list_models():
        import difflib

        near = difflib.get_close_matches(spec.arch, open_clip.list_models(), n=5)
        raise ModelLoadError(f"{spec.setting}: unknown open_clip architecture {spec.model!r}"
                             + (f" (close: {', '.join(near)})" if near else "")
                             + "; for a custom one give its JSON config as embed.model_config")


def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE, read now, not at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_cache_dir() -> str | None:
    """The hub cache folder as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _hub_files(tag_cfg: dict) -> tuple[str, list[str]]:
    """open_clip pretrained entry -> (hub repo, file names open_clip would fetch, in its order)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(tag_cfg.get("hf_hub", ""))
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def cached_tag_file(tag_cfg: dict) -> str | None:
    """open_clip pretrained entry -> the local file holding its weights, from the caches only (no network)."""
    if tag_cfg.get("file") and os.path.isfile(tag_cfg["file"]):
        return tag_cfg["file"]
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, names = _hub_files(tag_cfg)
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=_hub_cache_dir())
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if tag_cfg.get("url"):
        path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(tag_cfg["url"]))
        if os.path.isfile(path):
            return path
    return None


def _offline_error(spec: ModelSpec, tag_cfg: dict) -> ModelLoadError:
    if tag_cfg.get("hf_hub"):
        repo, names = _hub_files(tag_cfg)
        file = names[-1]
        source = f"the Hugging Face Hub repo {repo} (file {file})"
        fetch = f"`huggingface-cli download {repo} {file}`"
    else:
        file = "checkpoint.pt"
        source, fetch = tag_cfg.get("url", "its URL"), "your browser or curl"
    return ModelLoadError(
        f"{spec.setting}.pretrained={spec.pretrained} is an open_clip pretrained tag of {spec.model} whose weights "
        f"come from {source}, but HF_HUB_OFFLINE is set and they are not in the local cache, so nothing is "
        f"downloaded. Pass a local checkpoint instead: {spec.setting}.pretrained=/path/to/{file} "
        f"(fetch it once where the hub is reachable, e.g. with {fetch}; .pt, .bin and .safetensors files "
        "load), or unset HF_HUB_OFFLINE to let open_clip download it"
    )


@dataclass(frozen=True)
class Weights:
    """What open_clip is given: a tag (it downloads) or a local file, plus the tag's preprocessing."""

    pretrained: str
    preprocess: tuple = ()  # (name, value) overrides: the tag's mean / std / interpolation / resize mode
    local_file: bool = False
    # the tag's weights were trained with QuickGELU (OpenAI's): open_clip only warns when the
    # architecture lacks it (ViT-B-32 + openai), and the embeddings would then be off
    quick_gelu: bool = False


def _tag_preprocess(tag_cfg: dict) -> tuple:
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
            "resize_mode": "image_resize_mode"}
    return tuple((arg, tag_cfg[k]) for k, arg in keys.items() if k in tag_cfg)


def local_checkpoint(uri: str) -> str:
    """A checkpoint file or URI -> a local path (a remote one is copied once per machine), or ModelLoadError."""
    if not _is_remote(uri):
        path = _local_path(uri)
        if not os.path.isfile(path):
            raise ModelLoadError(f"checkpoint file not found: {uri}")
        return path
    import fsspec

    from laion_spark.io import fsspec_uri

    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "laion_spark_checkpoints" / digest / uri.rstrip("/").rsplit("/", 1)[-1]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            with fsspec.open(fsspec_uri(uri), "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(16 * 1024 * 1024):
                    dst.write(chunk)
        except FileNotFoundError:
            raise ModelLoadError(f"checkpoint not found: {uri}") from None
        os.replace(tmp, path)
    return str(path)


def resolve_weights(spec: ModelSpec, fetch: bool = True) -> Weights:
    """ModelSpec -> Weights for open_clip; ModelLoadError for an unknown tag, a missing file, or a
    tag that is not cached while the hub is offline. fetch=False: a remote checkpoint stays a URI."""
    import open_clip

    if not spec.is_checkpoint:
        tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(spec.arch)
            raise ModelLoadError(
                f"{spec.setting}.pretrained={spec.pretrained!r} is neither a pretrained tag of {spec.model} "
                f"(its tags: {', '.join(tags) if tags else 'none'}) nor a checkpoint file")
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        if hub_offline():
            path = cached_tag_file(tag_cfg)
            if path is None:
                raise _offline_error(spec, tag_cfg)
            return Weights(path, _tag_preprocess(tag_cfg), local_file=True, quick_gelu=quick_gelu)
        return Weights(spec.pretrained, quick_gelu=quick_gelu)
    if not fetch and _is_remote(spec.pretrained):
        from laion_spark.io import exists

        if not exists(spec.pretrained):
            raise ModelLoadError(f"{spec.setting}.pretrained: checkpoint not found: {spec.pretrained}")
        return Weights(spec.pretrained)
    try:
        return Weights(local_checkpoint(spec.pretrained), local_file=True)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{spec.setting}.pretrained: {exc}") from None


def _load_error(spec: ModelSpec, weights: Weights, exc: BaseException) -> ModelLoadError:
    """A failure inside open_clip -> a ModelLoadError that says what the file or tag is wrong about."""
    detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]
    if not weights.local_file:
        return ModelLoadError(
            f"{spec.setting}: could not load {spec.model} with pretrained tag {spec.pretrained} ({detail}). "
            "If the weights cannot be downloaded here, pass a local checkpoint: "
            f"{spec.setting}.pretrained=/path/to/checkpoint.pt")
    from open_clip.factory import load_state_dict

    try:
        load_state_dict(weights.pretrained)
    except Exception as not_ckpt:  # noqa: BLE001 - whatever torch.load / safetensors says about the file
        first = str(not_ckpt).strip().splitlines()[0] if str(not_ckpt).strip() else ""
        return ModelLoadError(
            f"{spec.setting}.pretrained={spec.pretrained} is not a model checkpoint that torch or safetensors "
            f"can read ({type(not_ckpt).__name__}: {first[:300]}); give an open_clip checkpoint file "
            "(a state_dict saved with torch.save, or .safetensors)")
    hint = (" and embed.model_config its JSON config" if spec.model_config else
            " (a custom architecture also needs its JSON config as embed.model_config)")
    return ModelLoadError(
        f"{spec.setting}.pretrained={spec.pretrained} does not fit the {spec.model} architecture ({detail}); "
        f"is it the checkpoint of another model? embed.model must name the architecture it was trained as{hint}")


@contextlib.contextmanager
def _root_handlers_kept():
    """open_clip logs with the module functions (logging.info(...)), which run logging.basicConfig()
    when the root logger has no handler: a host that had none would be left with a stderr handler,
    and its own later basicConfig(...) would silently do nothing. The handlers that appear during
    the call, on a root that had none, are removed again. The root's level is never changed:
    open_clip's messages reach the host's root logger at the host's levels."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        if not before:
            for handler in [h for h in root.handlers if h not in before]:
                root.removeHandler(handler)
                handler.close()


def _check_fit(spec: ModelSpec, weights: Weights) -> None:
    """Load the checkpoint into the architecture built on the meta device (shapes only, no weights
    allocated): a file of another architecture fails here, on the driver, not in every task.

    open_clip logs (on the root logger) that this weightless model is "initialized randomly": that
    is the point of a meta model, and the weights are checked right after."""
    import functools

    import open_clip

    log.info("%s: checking that %s fits %s (open_clip builds it without weights first)", spec.setting,
             spec.pretrained, spec.model)
    try:
        meta = open_clip.create_model(spec.arch, pretrained=None, device="meta", pretrained_text=False)
    except Exception as exc:  # noqa: BLE001 - e.g. a tower that needs the hub to be built: the worker will say
        log.info("%s: skipping the driver-side checkpoint check (%s: %s)", spec.setting, type(exc).__name__, exc)
        return
    # assign=True on this instance only: copying into meta parameters is a no-op that torch warns about
    # once per parameter, and a warnings filter to hide that would be process-wide; shapes and keys
    # are checked all the same (strict)
    meta.load_state_dict = functools.partial(meta.load_state_dict, assign=True)
    try:
        open_clip.load_checkpoint(meta, weights.pretrained, strict=True)
    except Exception as exc:
        raise _load_error(spec, weights, exc) from exc


def check_spec(spec: ModelSpec) -> None:
    """Driver-side checks before Spark: architecture, tag (cached when offline), checkpoint present and
    fitting. Raises ModelLoadError."""
    with _root_handlers_kept():
        _check_spec(spec)


def _check_spec(spec: ModelSpec) -> None:
    register_config(spec)
    _check_arch(spec)
    weights = resolve_weights(spec, fetch=False)
    if weights.local_file and not spec.is_checkpoint:
        return  # a cached hub file of an open_clip tag: it fits its architecture
    if weights.local_file:
        _check_fit(spec, weights)


def load_model(spec: ModelSpec, device: str = "cpu") -> LoadedModel:
    """ModelSpec + torch device -> LoadedModel in eval mode (fp32 weights; autocast is the caller's).

    Raises ModelLoadError with a message that names the setting and what to do.
    """
    with _root_handlers_kept():
        return _load_model(spec, device)


def _load_model(spec: ModelSpec, device: str) -> LoadedModel:
    import open_clip

    register_config(spec)
    _check_arch(spec)
    weights = resolve_weights(spec)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.arch, pretrained=weights.pretrained, device=device, force_quick_gelu=weights.quick_gelu,
            **dict(weights.preprocess))
    except Exception as exc:
        raise _load_error(spec, weights, exc) from exc
    try:
        tokenizer = open_clip.get_tokenizer(spec.arch)
    except Exception as exc:
        raise ModelLoadError(f"{spec.setting}: could not build the tokenizer of {spec.model} "
                             f"({type(exc).__name__}: {exc}); a hub tokenizer needs the hub or its cache") from exc
    model.eval()
    log.info("loaded %s on %s", spec.name, device)
    return LoadedModel(spec.name, model, preprocess, tokenizer, device)
