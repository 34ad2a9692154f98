"""The toy CLIP's searchable world, built once per test session: 540 toy scenes -> an images table ->
embed (the toy CLIP) -> an image index, as the stages run them (search and serve tests read it).

INPUT  -> a SparkSession and a folder
OUTPUT -> {"root", "images" (the table's URI), "embeddings", "index" (an image index folder), "truth"
          (sample_id -> the scene's attributes, the toy world's ground truth), "png" (sample_id -> the
          stored bytes), "captions" (sample_id -> its text), "checkpoint", "cache"}
"""

from __future__ import annotations

import io

TOY_N = 540


def run_stage(spark, stage, *args) -> dict:
    from laion_spark import cli

    cfg, module = cli.prepare(stage, [], list(args))
    return cli.run(stage, cfg, module, spark)


def build_toy_index(spark, root) -> dict:
    import pandas as pd

    from laion_spark.toy import world
    from laion_spark.toy.train import ensure_checkpoint

    scenes = world.split("test", TOY_N, start=5000)
    rows, truth, png, captions = [], {}, {}, {}
    for k, scene in enumerate(scenes):
        buf = io.BytesIO()
        scene.image.save(buf, "PNG")
        sid = 70_000 + k
        truth[sid] = scene.attributes
        png[sid] = buf.getvalue()
        captions[sid] = scene.caption
        rows.append({"sample_id": sid, "url": f"http://toys.test/{k}.png", "text": scene.caption, "language": "en",
                     "status": "success", "error_message": None, "image": png[sid]})
    spark.createDataFrame(pd.DataFrame(rows), "sample_id long, url string, text string, language string, "
                          "status string, error_message string, image binary").repartition(2) \
        .write.parquet(str(root / "images"))
    ck = ensure_checkpoint()
    run_stage(spark, "embed", f"input={root / 'images'}", f"output={root / 'embeddings'}", f"embed.model={ck.model}",
              f"embed.model_config={ck.model_config}", f"embed.pretrained={ck.checkpoint}")
    run_stage(spark, "index", f"input={root / 'embeddings'}", f"dataset={root / 'images'}",
              f"output={root / 'index'}", "index.eval_queries=200")
    return {"root": root, "images": str(root / "images"), "embeddings": str(root / "embeddings"),
            "index": str(root / "index"), "truth": truth, "png": png, "captions": captions,
            "checkpoint": ck, "cache": str(root / "cache")}
