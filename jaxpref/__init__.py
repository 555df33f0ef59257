"""jaxpref: preference optimization for language models in JAX/Flax.

Importing the package is cheap: submodules (``jaxpref.losses``, ``jaxpref.models``, ...) are
imported on demand so that ``import jaxpref.losses`` pulls in neither flax nor datasets.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "generate_text":  # text in, text out (jaxpref.infer.text), imported on first use
        from jaxpref.infer.text import generate_text

        return generate_text
    raise AttributeError(f"module 'jaxpref' has no attribute {name!r}")
