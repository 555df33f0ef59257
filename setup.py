"""jaxpref: preference optimization for language models in JAX/Flax."""

from setuptools import find_packages, setup

# Lower bounds are the versions the test suite was run with (2026-11).
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "transformers>=5.23.0",
    "tokenizers>=0.23.3",
    "safetensors>=0.8.0",
    "datasets>=5.2.0",
    "ml_collections>=1.1.0",
    "chex>=0.1.92",
    "jinja2>=3.1",  # chat templates; transformers does not pull it in
    "numpy>=2.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "gguf>=0.19.0",  # reads GGUF checkpoints (SmolLM2) with numpy
    "vaderSentiment>=3.3.2",  # sentiment reward of the controlled-generation task
    "qwix>=0.1.8",  # LoRA adapters on the Flax model (config.lora)
]

EXTRAS = {
    # torch CPU build: only for the HF parity tests and the TRL comparisons.
    "test": ["pytest>=8.0", "torch==2.13.0", "peft>=0.21.2"],  # peft: the LoRA adapter export check
    "bench": ["torch==2.13.0", "trl>=1.16.0", "psutil>=5.9", "peft>=0.21.2"],
}

setup(
    name="jaxpref",
    version="0.1.0",
    description="Preference optimization (DPO, IPO, KTO, SLiC, RSO, TR-*, SPPO, SELM, active DPO) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["jaxpref", "jaxpref.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
    entry_points={"console_scripts": ["jaxpref=jaxpref.cli:main"]},
)
