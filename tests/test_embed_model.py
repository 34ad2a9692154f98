"""embed without Spark: model specs from config, loading (hub offline, local checkpoint, wrong files),
the device choice from a task's resources, and the UDF's row logic against open_clip called directly.

Expectations come from open_clip itself (tests/embed_fixtures.reference_embeddings) or are written
out by hand; no test reaches the network (HF_HUB_OFFLINE is set and socket connects are refused).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from laion_spark import cli
from laion_spark.config import ConfigError, load_config
from laion_spark.embed import cache
from laion_spark.embed.device import DeviceError, cpu_threads, select_device
from laion_spark.embed.encode import IMAGE_DECODE_ERROR, embed_rows
from laion_spark.embed.model import (
    ModelLoadError,
    ModelSpec,
    load_model,
    model_specs,
    resolve_weights,
)
from laion_spark.embed.udf import OUTPUT_COLUMNS, embed_partition
from tests.embed_fixtures import CORRUPT_ID, TINY_A, TINY_B, images_frame, reference_embeddings, write_model

HUB_TAG = ("ViT-B-32", "laion2b_s34b_b79k")
HUB_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embed-models")
    return {
        "a": write_model(folder, "tiny-a", TINY_A, seed=1),
        "b": write_model(folder, "tiny-b", TINY_B, seed=2),
    }


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1, an empty hub cache, and every socket connect refused (and recorded)."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in this test")

    def refuse_create(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse_create)
    return attempts


def embed_cfg(*overrides: str):
    return load_config([], list(overrides)).embed


# --- loading ---------------------------------------------------------------------------------------

def test_hub_tag_offline_is_a_clear_error_and_no_network_attempt(no_network):
    with pytest.raises(ModelLoadError) as err:
        load_model(ModelSpec(*HUB_TAG))
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message
    assert "embed.pretrained=/path/to/" in message  # says how to pass a local checkpoint
    assert HUB_REPO in message
    assert no_network == []


def test_hub_tag_offline_fails_the_cli_before_spark(no_network, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    code = cli.main(["embed", f"input={tmp_path / 'images'}", f"output={tmp_path / 'out'}",
                     f"embed.model={HUB_TAG[0]}", f"embed.pretrained={HUB_TAG[1]}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "embed.pretrained=/path/to/" in err
    assert no_network == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("tag", "repo", "file", "quick_gelu"), [
    ("laion2b_s34b_b79k", HUB_REPO, "open_clip_pytorch_model.bin", False),
    # OpenAI's weights were trained with QuickGELU, which the ViT-B-32 config lacks: it is forced on
    ("openai", "timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors", True),
])
def test_hub_tag_offline_uses_a_cached_file(no_network, monkeypatch, tmp_path, tag, repo, file, quick_gelu):
    """A hub cache laid out as huggingface_hub lays it out: the tag resolves to the cached file, offline."""
    cache_dir = tmp_path / "hub"
    repo_dir = cache_dir / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    snapshot = repo_dir / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / file).write_bytes(b"weights")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    weights = resolve_weights(ModelSpec("ViT-B-32", tag))
    assert weights.local_file and weights.pretrained == str(snapshot / file)
    assert dict(weights.preprocess)["image_resize_mode"] == "shortest"  # the tag's preprocessing is kept
    assert weights.quick_gelu is quick_gelu
    assert no_network == []


def test_local_checkpoint_loads_and_embeds_as_open_clip_does(models, no_network):
    frame = images_frame(12, with_corrupt=False)
    ok = frame[frame.status == "success"]
    images, texts = ok.image.tolist(), ok.text.tolist()
    want_image, want_text = reference_embeddings(models["a"], images, texts)

    spec = ModelSpec("tiny-a", models["a"].checkpoint, Path(models["a"].config).read_text())
    loaded = load_model(spec)
    digest = hashlib.sha256(Path(models["a"].checkpoint).read_bytes()).hexdigest()[:12]
    assert loaded.name == f"tiny-a/tiny-a-seed1.pt@{digest}" == models["a"].clip_model
    got = embed_rows(loaded, images, texts)
    assert got.errors == [None] * len(images)
    np.testing.assert_allclose(np.stack(got.image), want_image, atol=1e-5)
    np.testing.assert_allclose(np.stack(got.text), want_text, atol=1e-5)
    np.testing.assert_allclose(got.similarity, (want_image * want_text).sum(axis=1), atol=1e-5)
    assert all(v.dtype == np.float32 for v in got.image + got.text)
    np.testing.assert_allclose(np.linalg.norm(np.stack(got.image), axis=1), 1.0, atol=1e-5)
    assert no_network == []


def test_wrong_files_are_clear_errors(models, tmp_path):
    text_file = tmp_path / "notes.pt"
    text_file.write_text("this is not a checkpoint\n")
    config_a = Path(models["a"].config).read_text()

    with pytest.raises(ModelLoadError, match=r"notes\.pt is not a model checkpoint that torch or safetensors can"):
        load_model(ModelSpec("tiny-a", str(text_file), config_a))
    with pytest.raises(ModelLoadError, match=r"does not fit the tiny-a architecture.*checkpoint of another model"):
        load_model(ModelSpec("tiny-a", models["b"].checkpoint, config_a))
    with pytest.raises(ModelLoadError, match=r"checkpoint file not found: .*missing\.pt"):
        load_model(ModelSpec("tiny-a", str(tmp_path / "missing.pt"), config_a))
    with pytest.raises(ModelLoadError, match=r"neither a pretrained tag of ViT-B-32 \(its tags: .*laion2b_s34b_b79k"):
        load_model(ModelSpec("ViT-B-32", "no_such_tag"))
    with pytest.raises(ModelLoadError, match="unknown open_clip architecture 'ViT-B-33'"):
        load_model(ModelSpec("ViT-B-33", "openai"))


@pytest.mark.parametrize("case", ["text_file", "other_architecture", "missing", "bad_tag"])
def test_prepare_reports_wrong_models_before_spark(models, tmp_path, case):
    (tmp_path / "images").mkdir()
    text_file = tmp_path / "notes.bin"
    text_file.write_text("hello")
    pretrained = {"text_file": str(text_file), "other_architecture": models["b"].checkpoint,
                  "missing": str(tmp_path / "nope.pt"), "bad_tag": "no_such_tag"}[case]
    expected = {"text_file": "is not a model checkpoint", "other_architecture": "does not fit the tiny-a architecture",
                "missing": "checkpoint file not found", "bad_tag": "neither a pretrained tag of tiny-a"}[case]
    cfg = load_config([], [f"input={tmp_path / 'images'}", f"output={tmp_path / 'out'}", "embed.model=tiny-a",
                           f"embed.pretrained={pretrained}", f"embed.model_config={models['a'].config}"])
    from laion_spark.embed.job import prepare

    with pytest.raises(ConfigError, match=expected):
        prepare(cfg)


def test_prepare_accepts_a_good_checkpoint_per_group(models, tmp_path):
    (tmp_path / "images").mkdir()
    cfg = load_config([], [f"input={tmp_path / 'images'}", f"output={tmp_path / 'out'}", *models["a"].overrides(),
                           *models["b"].overrides("embed.models.multi")])
    from laion_spark.embed.job import prepare

    prepare(cfg)  # no exception: both checkpoints fit their architectures


def test_model_config_and_group_settings_are_checked(tmp_path, models):
    not_json = tmp_path / "bad.json"
    not_json.write_text("{not json")
    not_clip = tmp_path / "other.json"
    not_clip.write_text('{"layers": 2}')
    with pytest.raises(ConfigError, match="model_config .*bad.json is not JSON"):
        model_specs(embed_cfg(f"embed.model_config={not_json}"))
    with pytest.raises(ConfigError, match="not an open_clip model config: it needs the keys embed_dim"):
        model_specs(embed_cfg(f"embed.model_config={not_clip}"))
    with pytest.raises(ConfigError, match="embed.model_config not found"):
        model_specs(embed_cfg(f"embed.model_config={tmp_path / 'none.json'}"))
    with pytest.raises(ConfigError, match=r"embed.models.en must be MODEL,PRETRAINED\[,MODEL_CONFIG\]"):
        model_specs(embed_cfg("embed.models.en=ViT-B-32"))
    with pytest.raises(ConfigError, match="pretrained is empty"):
        model_specs(embed_cfg("embed.pretrained="))


def test_model_specs_per_group(models):
    default = model_specs(embed_cfg())
    assert set(default) == {"en", "multi", "nolang"}
    assert len(set(default.values())) == 1
    assert default["en"].name == "ViT-B-32/laion2b_s34b_b79k"

    specs = model_specs(embed_cfg(*models["a"].overrides(), *models["b"].overrides("embed.models.multi")))
    assert specs["en"] is specs["nolang"]
    assert specs["en"].name == models["a"].clip_model and specs["en"].name.startswith("tiny-a/tiny-a-seed1.pt@")
    assert specs["multi"].name == models["b"].clip_model and specs["multi"].name.startswith("tiny-b/tiny-b-seed2.pt@")
    # a group override naming the default model is the same model (one cache entry, one batch buffer)
    same = model_specs(embed_cfg(*models["a"].overrides(), *models["a"].overrides("embed.models.en")))
    assert same["en"] == same["nolang"] and hash(same["en"]) == hash(same["nolang"])


def test_checkpoints_are_named_by_content_not_by_file_name_alone(tmp_path):
    """Two different epoch_latest.pt are two embedding spaces; one file copied elsewhere is one."""
    first = write_model(tmp_path / "run1", "tiny-a", TINY_A, seed=1, checkpoint_name="epoch_latest.pt")
    second = write_model(tmp_path / "run2", "tiny-a", TINY_A, seed=2, checkpoint_name="epoch_latest.pt")
    copy = tmp_path / "copy" / "epoch_latest.pt"
    copy.parent.mkdir()
    shutil.copyfile(first.checkpoint, copy)
    names = {uri: model_specs(embed_cfg("embed.model=tiny-a", f"embed.pretrained={uri}",
                                        f"embed.model_config={first.config}"))["en"].name
             for uri in (first.checkpoint, second.checkpoint, str(copy))}
    assert names[first.checkpoint] != names[second.checkpoint]
    assert names[first.checkpoint] == names[str(copy)] == first.clip_model
    assert names[second.checkpoint] == second.clip_model
    for name in names.values():
        readable, _, digest = name.partition("@")
        assert readable == "tiny-a/epoch_latest.pt" and len(digest) == 12
        assert set(digest) <= set("0123456789abcdef")
    # a ModelSpec made by hand (no checksum taken by model_specs) is named the same way
    assert ModelSpec("tiny-a", second.checkpoint).name == second.clip_model


# --- device ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("resources", "device", "precision", "cuda_count", "want_device", "want_autocast"),
    [
        ({"gpu": ["0"]}, "auto", "auto", 1, "cuda:0", "fp16"),  # the task's GPU, fp16 autocast
        ({"gpu": ["1"]}, "auto", "auto", 2, "cuda:1", "fp16"),
        ({"gpu": ["3"]}, "auto", "bf16", 1, "cuda:0", "bf16"),  # container sees only its GPU: index 0
        ({"gpu": ["1"]}, "auto", "fp32", 4, "cuda:1", None),
        ({}, "auto", "auto", 1, "cpu", None),  # a GPU box, but Spark scheduled none: CPU
        (None, "auto", "auto", 0, "cpu", None),
        ({"gpu": []}, "auto", "auto", 1, "cpu", None),
        ({"gpu": ["0"]}, "auto", "auto", 0, "cpu", None),  # Spark says GPU, torch has no CUDA: CPU
        ({"gpu": ["0"]}, "cpu", "auto", 1, "cpu", None),  # told cpu
        ({"gpu": ["0"]}, "cpu", "bf16", 1, "cpu", "bf16"),
        ({}, "cuda", "auto", 1, "cuda:0", "fp16"),  # told cuda, local mode
        ({"gpu": ["1"]}, "cuda", "fp16", 2, "cuda:1", "fp16"),
        ({"fpga": ["0"]}, "auto", "auto", 1, "cpu", None),  # other resources do not count
    ],
)
def test_select_device(resources, device, precision, cuda_count, want_device, want_autocast):
    choice = select_device(resources, device, precision, cuda_count)
    assert (choice.device, choice.autocast) == (want_device, want_autocast)
    assert choice.is_cuda == want_device.startswith("cuda")


def test_select_device_errors():
    with pytest.raises(DeviceError, match="embed.device=cuda but torch sees no CUDA device"):
        select_device({"gpu": ["0"]}, "cuda", "auto", 0)
    with pytest.raises(DeviceError, match="Spark gave this task GPU 5, but torch sees only 2"):
        select_device({"gpu": ["5"]}, "auto", "auto", 2)


def test_cpu_threads():
    assert cpu_threads(0, 4) == 4  # the task's CPUs (spark.task.cpus)
    assert cpu_threads(0, None) == 1  # outside a task
    assert cpu_threads(0, 1) == 1
    assert cpu_threads(3, 8) == 3  # embed.cpu_threads wins


# --- the UDF function without Spark ----------------------------------------------------------------

def test_partition_function_loads_once_and_emits_one_row_per_success_row(models):
    import torch

    frame = images_frame(14)
    ok = frame[frame.status == "success"].reset_index(drop=True)
    inputs = ok[["sample_id", "image", "text", "language"]]
    batches = [inputs.iloc[i:i + 4] for i in range(0, len(inputs), 4)] + [inputs.iloc[:0]]
    cfg = embed_cfg(*models["a"].overrides(), "embed.model_batch_size=3", "embed.cpu_threads=2")
    threads = torch.get_num_threads()
    cache.clear()
    before = cache.load_count()
    try:
        frames = list(embed_partition(model_specs(cfg), cfg)(iter(batches)))
    finally:
        torch.set_num_threads(threads)
    assert cache.load_count() - before == 1  # once for the whole partition, not per batch
    assert all(len(f) <= 3 for f in frames) and all(list(f.columns) == OUTPUT_COLUMNS for f in frames)
    out = pd.concat(frames, ignore_index=True).set_index("sample_id")
    assert sorted(out.index) == sorted(ok.sample_id)

    corrupt = out.loc[CORRUPT_ID]
    assert corrupt.image_embedding is None and corrupt.text_embedding is None and np.isnan(corrupt.similarity)
    assert corrupt.error_message.startswith(IMAGE_DECODE_ERROR + ": ")
    assert corrupt.clip_model == models["a"].clip_model

    good = ok[ok.sample_id != CORRUPT_ID]
    want_image, want_text = reference_embeddings(models["a"], good.image.tolist(), good.text.tolist())
    got = out.loc[good.sample_id]
    np.testing.assert_allclose(np.stack(got.image_embedding), want_image, atol=1e-5)
    np.testing.assert_allclose(np.stack(got.text_embedding), want_text, atol=1e-5)
    assert got.error_message.isna().all()
