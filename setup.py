"""laion-spark: LAION-style image-text datasets from web archives, on Apache Spark."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="laion-spark",
    version="0.1.0",
    description="One Spark pipeline from Common Crawl WARC/WAT to a LAION-style image-text dataset",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["laion_spark", "laion_spark.*"]),
    include_package_data=True,
    # toy/: the toy CLIP's model config; toy/weights/: its committed checkpoint
    package_data={"laion_spark": ["py.typed", "toy/*.json", "toy/weights/*.pt", "toy/weights/*.json"]},
    # ranges for pip users; requirements.txt pins the set that the tests ran with
    install_requires=[
        "pyspark[connect]>=4.0,<5",
        "pandas>=2.0,<3",
        "pyarrow>=14",
        "fastwarc>=2.0",
        "warcio>=1.7",
        "selectolax>=1.0",
        "cld3-py>=3.0",
        "charset-normalizer>=3.0",
        "brotli>=1.0",
        "isal>=1.6",
        "fsspec>=2024.2",
        "aiohttp>=3.9",
        "requests>=2.31",
        "urllib3>=2.0,<3",  # the download stage's address guard plugs into urllib3's connections
        "Pillow>=10.0",
        "protego>=0.3",  # robots.txt (RFC 9309)
        "PyYAML>=6.0",
        "mmh3>=4.0",  # export's LAION hash column
    ],
    extras_require={
        "cluster": ["venv-pack>=0.2"],
        # embed (and the toy CLIP): torch is gigabytes, so the stages before embed do without it
        "embed": ["torch>=2.1", "torchvision>=0.16", "open_clip_torch>=2.24", "timm>=1.0"],
        "index": ["faiss-cpu>=1.8", "uvicorn>=0.30,<1"],  # index, search and serve (serve's HTTP server)
        "report": ["matplotlib>=3.8"],  # the run's report (PNG plots)
        # the pipeline and the demo run every stage: embed's, index's and report's packages together
        # evaluate: open_clip's own trainer (the open_clip_train package, shipped since 2.26.1) reads webdataset
        "evaluate": ["torch>=2.1", "torchvision>=0.16", "open_clip_torch>=2.26.1", "timm>=1.0", "webdataset>=0.2.5"],
        "all": ["torch>=2.1", "torchvision>=0.16", "open_clip_torch>=2.26.1", "timm>=1.0", "faiss-cpu>=1.8",
                "uvicorn>=0.30,<1",
                "matplotlib>=3.8", "webdataset>=0.2.5"],
        "s3": ["s3fs"],  # s3:// inputs (Common Crawl's bucket from inside AWS)
        "gcs": ["gcsfs"],
        "lz4": ["lz4>=4.0"],  # LZ4 WARC files (one frame per record, as FastWARC writes them)
        "test": ["pytest", "ruff", "html5lib", "lxml", "webdataset", "lz4"],
    },
    entry_points={"console_scripts": ["laion-spark=laion_spark.cli:main"]},
)
