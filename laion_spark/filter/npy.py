"""The filter's .npy shortcut (filter.npy=true): the export stage's .npy shard files, under the old name.

INPUT  -> as laion_spark/export/npy.py
OUTPUT -> as laion_spark/export/npy.py: there is one writer of .npy shards, this module only names it
"""

from laion_spark.export.npy import (  # noqa: F401 (re-exported)
    DTYPES,
    KINDS,
    METADATA_SCHEMA,
    SHARD_FILE,
    SUBDIRS,
    file_names,
    matrix,
    model_folder_name,
    remove_files,
    shard_contents,
    write_shard,
)
