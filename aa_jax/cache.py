"""XLA's persistent compilation cache, shared by every run on this machine.

Compiling the train step and the evaluation function for each sequence-length bucket takes
several seconds per run; the programs are the same from one run of a sweep to the next.
:func:`enable_compilation_cache` points JAX's persistent cache at one folder, so a second
run (another seed, task or method with the same shapes) loads them instead.

The folder is ``$AA_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/aa_jax/xla`` (by default
``~/.cache/aa_jax/xla``). ``AA_JAX_CACHE_DIR=off`` turns the cache off; a
``JAX_COMPILATION_CACHE_DIR`` that the user set is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    setting = os.environ.get("AA_JAX_CACHE_DIR")
    if setting == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aa_jax" / "xla"


def enable_compilation_cache() -> Path | None:
    """Turns JAX's persistent compilation cache on; returns its folder (None: off)."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    directory = cache_dir()
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile every time, as without the cache
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return directory
