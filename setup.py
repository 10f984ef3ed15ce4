"""hypert5: HyperTuning (HyperT5) in JAX/Flax, trained the t5x way."""
from setuptools import find_packages, setup

# Pinned: the set verified to install together on Python 3.11 from PyPI alone.
RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "importlib_resources",  # tfds needs it but does not declare it
    "gin-config==0.5.0",
    "sentencepiece==0.2.3",
    "rouge-score==0.1.2",
    "safetensors",
    "tensorstore",
    "matplotlib",
    "tqdm",
    "tensorboard",  # TensorBoard summaries (clu metric_writers); tensorflow no longer pulls it in
]

setup(
    name="hypert5",
    version="0.1.0",
    description="HyperTuning: a T5 hypermodel that generates prefixes / LoRA for a frozen T5",
    packages=find_packages(include=["hypert5", "hypert5.*", "tasks", "tasks.*"]),
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={"test": ["pytest", "pytest-xdist"]},
    entry_points={"console_scripts": ["hypert5=hypert5.main:main"]},
)
