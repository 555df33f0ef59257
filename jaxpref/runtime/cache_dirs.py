"""Where jaxpref's on-disk caches live: one folder per kind under a common root.

The root is ``$JAXPREF_CACHE_DIR``, else ``~/.cache/jaxpref``; a kind may also have its own
environment variable that names its folder outright (e.g. ``$JAXPREF_REF_CACHE_DIR``).
"""

from __future__ import annotations

import os


def cache_dir(kind: str, override_env: str | None = None) -> str:
    """``$override_env`` if set, else ``$JAXPREF_CACHE_DIR/<kind>``, else ``~/.cache/jaxpref/<kind>``."""
    if override_env and os.environ.get(override_env):
        return os.environ[override_env]
    root = os.environ.get("JAXPREF_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxpref")
    return os.path.join(root, kind)
