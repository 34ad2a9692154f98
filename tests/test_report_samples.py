"""The report's sample thumbnails: chosen on narrow columns, their image bytes read from the chosen rows' row
groups only (report/data.py read_images), the same rows a plain Spark pick gives."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import functions as F

from laion_spark import schemas as S
from laion_spark.report import data as D


def test_samples_read_only_the_chosen_rows_bytes(spark, tmp_path):
    folder = tmp_path / "a table with spaces"
    folder.mkdir()
    rows = [{"sample_id": i * 7919 % 1000, "url": f"http://h/{i}", "text": f"t{i}",
             "image": None if i % 5 == 0 else f"bytes of {i}".encode(), "similarity": i / 100}
            for i in range(300)]
    for n in range(3):  # three files of several row groups each
        part = rows[n * 100:(n + 1) * 100]
        pq.write_table(pa.Table.from_pylist(part), folder / f"part-{n}.parquet", row_group_size=16)
    table = D.with_place(spark.read.parquet(str(folder)))
    got = D._samples(table, F.col(S.SIMILARITY) > 0.5, [S.SIMILARITY], 8)
    # what Spark itself picks when it carries the bytes (the old way): the same rows, the same bytes
    want = (spark.read.parquet(str(folder)).where((F.col(S.SIMILARITY) > 0.5) & F.col(S.IMAGE).isNotNull())
            .orderBy(F.xxhash64(F.col(S.SAMPLE_ID))).limit(8).collect())
    assert [(r["sample_id"], r["image"]) for r in got] == [(r.sample_id, bytes(r.image)) for r in want]
    assert all(r["image"] == f"bytes of {int(r['url'].rsplit('/', 1)[1])}".encode() for r in got)
    places = table.where(F.col(S.SAMPLE_ID).isin([0, 7919 % 1000])).select(D.PLACE_FILE, D.PLACE_ROW, S.IMAGE).collect()
    assert D.read_images([(r[D.PLACE_FILE], r[D.PLACE_ROW]) for r in places]) == [r[S.IMAGE] for r in places]
