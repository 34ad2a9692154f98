"""clip-retrieval `.npy` shards per embedding space (job level): vector rows -> one folder of shards per clip_model.

INPUT  -> rows (sample_id, url, text, clip_model, image_embedding, text_embedding), the rows expected per
          clip_model (the caller counted them on the table it exports), a folder's fsspec URI, the dtype,
          rows per shard, the run's mode, and whether one space gets a sub-folder too
OUTPUT -> the shards (export/npy.py's layout, written by export/write.py's write_embeddings) and a
          summary dict: folder, dtype, rows, shards, models (clip_model -> folder, rows, shards, dims);
          NpyError when a space's shards do not hold its rows

The filter's shortcut (filter.npy=true) and the export's `<output>/emb/` both write through here, so the
two layouts cannot drift apart.
"""

from __future__ import annotations

import logging
import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import schemas as S
from laion_spark.export import npy as N
from laion_spark.export.transform import pack_embeddings
from laion_spark.export.write import missing_embedding_files, write_embeddings

log = logging.getLogger(__name__)


class NpyError(RuntimeError):
    """The written .npy shards do not hold the rows they should."""


def space_folders(folder: str, models: list, always_subfolder: bool) -> dict:
    """clip_models -> {model: its folder}: the folder itself for a lone space (unless always_subfolder),
    else <folder>/<model_folder_name(model)>; NpyError when two models give one folder name."""
    names = {m: N.model_folder_name(m) for m in models}
    if len(set(names.values())) != len(names):
        raise NpyError(f"clip_model names {models} give the same folder name; cannot separate their shards")
    if len(models) == 1 and not always_subfolder:
        return {models[0]: folder}
    return {m: f"{folder.rstrip('/')}/{names[m]}" for m in models}


def write_spaces(vectors: DataFrame, per_model: dict, folder: str, dtype: str, rows_per_shard: int, mode: str,
                 always_subfolder: bool = False) -> dict:
    """Vector rows + expected rows per clip_model + folder (fsspec URI) -> the shards written -> summary."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(folder)
    if mode == "overwrite" and fs.exists(path):
        removed = N.remove_files(folder)  # its top and one model sub-folder down
        if removed:
            log.info("removed %d .npy shard files of an earlier run from %s", removed, folder)
    fs.makedirs(path, exist_ok=True)
    models = sorted(per_model, key=lambda m: (m is None, m or ""))
    folders = space_folders(folder, models, always_subfolder)
    out: dict = {"folder": folder, "dtype": dtype, "rows": 0, "shards": 0, "models": {}}
    for model in models:
        sub = folders[model]
        rows = vectors.filter(F.col(S.CLIP_MODEL).eqNullSafe(F.lit(model).cast(T.StringType())))
        num_shards = max(1, math.ceil(per_model[model] / rows_per_shard))
        stats = write_embeddings(pack_embeddings(rows, num_shards), sub, dtype)
        written = sum(s["rows"] for s in stats)
        if written != per_model[model]:
            raise NpyError(f".npy shards of {model}: {per_model[model]} rows expected but {written} written to {sub}")
        missing = missing_embedding_files(sub, stats)
        if missing:
            raise NpyError(f".npy shards of {model}: {missing[:5]} missing from {sub} after the write")
        dims = sorted({s["dim"] for s in stats})
        out["models"][model] = {"folder": sub, "rows": written, "shards": len(stats), "dims": dims}
        out["rows"] += written
        out["shards"] += len(stats)
    out["stale_temporaries_removed"] = N.remove_files(folder, temporaries_only=True)
    return out
