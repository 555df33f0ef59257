"""jaxpref: preference optimization for language models in JAX/Flax.

Importing the package is cheap: submodules (``jaxpref.losses``, ``jaxpref.models``, ...) are
imported on demand so that ``import jaxpref.losses`` pulls in neither flax nor datasets.
"""

__version__ = "0.1.0"
