from setuptools import find_packages, setup

setup(
    name="pixparse",
    version="0.1.0",
    description="OCR-free document understanding: pretraining and fine-tuning with DeepSpeed",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pixparse", "pixparse.*"]),
    package_data={"pixparse.models.presets": ["*.json"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.19,<0.20",  # engine.zero_fast replaces ZeRO internals of these versions
        "accelerate>=1.1.0",  # transformers' HfDeepSpeedConfig (ZeRO-3 zero.Init of HF decoders)
        "psutil>=5.9",  # the ranks watch their launcher (engine.dist.LauncherWatch)
        "matplotlib>=3.7",  # its DejaVu fonts render the render:lines|blocks|pages sources (no download)
        "timm>=1.0.9",
        "transformers>=5.0",
        "webdataset>=1.0",
        "sentencepiece>=0.2",
        "jsonargparse[signatures]>=4.35",
        "tensorboard>=2.14",
        "safetensors>=0.4",
        "pillow>=10.1",
        "pypdfium2>=4.20",  # PDF pages (Apache-2.0/BSD; PyMuPDF would be AGPL)
        "numpy>=1.24",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "zss>=1.2",  # tree edit distance (Donut's TED accuracy)
        "rapidfuzz>=3.0",  # edit distances
        "jiwer>=3.0",  # CER / WER
        "orjson>=3.9",  # page annotations in loader workers (a 38 KB DocBank page: 0.15 vs 0.62 ms)
    ],
    extras_require={
        # --train.wandb; S3 checkpoints in the eval app (--s3-bucket, s3://)
        "wandb": ["wandb>=0.17"],
        "s3": ["boto3>=1.28"],
        "hub": ["datasets>=3.0"],  # write hf_cord|hf_rvl_cdip|hf_docvqa: Hugging Face datasets to shards
        # the S3 tests start a local S3-compatible server (moto)
        "bench": ["matplotlib>=3.7"],  # benchmarks/plot.py
        # pytest-xdist: launch/test.sh runs the one-process tests on both cores
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "wandb>=0.17", "boto3>=1.28", "moto[server]>=5.0",
                 "matplotlib>=3.7", "datasets>=3.0"],
        "dev": ["pytest>=8.0", "pytest-xdist>=3.5", "wandb>=0.17", "boto3>=1.28", "moto[server]>=5.0", "ruff"],
    },
    entry_points={"console_scripts": ["pixparse=pixparse.cli:main"]},
)
