"""Keep PyTorch out of a jaxpref process that never uses it.

jaxpref uses ``transformers`` only for tokenizers and chat templates and ``tensorboardX`` only to
write scalars, but where PyTorch is installed both import it: transformers with its first
tokenizer (``configuration_utils`` -> ``modeling_rope_utils`` -> ``torch``), tensorboardX in its
writer module. That costs about 0.2 GiB of resident memory and a second of start-up that a JAX job
never uses. The command line (``jaxpref train``, ``python -m jaxpref.main``, ``jaxpref generate``)
calls ``keep_torch_out`` first; a library user who also runs PyTorch models in the same process
should not (nothing here changes unless it is called).
"""

from __future__ import annotations

import contextlib
import sys

_active = False


def keep_torch_out() -> bool:
    """From now on, ``transformers`` treats PyTorch as not installed and ``torch_blocked`` blocks
    its import. Returns False (and changes nothing) when torch is already imported."""
    global _active
    if "torch" in sys.modules:
        return False
    import transformers.utils as tf_utils
    import transformers.utils.import_utils as tf_import_utils

    def unavailable() -> bool:
        return False

    tf_import_utils.is_torch_available = unavailable
    tf_utils.is_torch_available = unavailable
    _active = True
    return True


@contextlib.contextmanager
def torch_blocked():
    """After ``keep_torch_out``: ``import torch`` raises ImportError inside the block (for libraries
    that import it optionally); otherwise a no-op."""
    if not _active or "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # the import system's "not importable" marker
    try:
        yield
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
