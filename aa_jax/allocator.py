"""Start-up choice of the memory allocator for the ``aa-jax`` command and the sweep runner.

XLA's CPU runtime allocates and frees its large per-step buffers through the C allocator.
With glibc's malloc on Linux those pages go back to the kernel and are faulted in again on
every step: on a 2-core machine a MiniLM training step (batch 32 x 128) took about 490,000
minor page faults and 0.7 s of system time. mimalloc, told to keep freed memory for 10 s
before returning it (``MIMALLOC_PURGE_DELAY=10000``; a step reuses it well within that),
takes a few hundred faults per step (the step 1.47 s -> 1.13 s); over a whole run it keeps
more memory resident than glibc (about 6 GB against 2.6 GB for the README's main job).
Keeping memory for ever (-1) or a preallocated arena left some processes in a slow state
(0.7-1 s of system time per step) in repeated trials; the 10 s delay did not.

mimalloc is also told not to use transparent huge pages (``MIMALLOC_ALLOW_THP=0``; it
then turns them off for the whole process with ``PR_SET_THP_DISABLE``, and for the
processes it starts). Where the kernel gives huge pages on request (``enabled=madvise``,
a common setting), each first touch of a 2 MB region waits while the kernel zeroes a
2 MB page (and, with ``defrag=madvise``, possibly compacts memory to find one). On a
machine whose memory had been in use for hours, the README's main job took 1,500-1,900
such faults and 11-18 s of system time, against about 2.5 s with ordinary pages. Without
them its user time was 3-5% higher (the TLB covers less); at 32 x 128 a training step
took 1-2% longer and inference 6-13% longer, alternated in one sitting (about 15% longer
in the medians of runs not alternated). On this machine that cost is far smaller than
the stalls (docs/speed.md); where free huge pages are cheap to find, or a long job
mostly predicts, it may not be.

It installs with the project (the ``cmeel-mimalloc`` wheel), and
:func:`reexec_with_mimalloc` restarts the process with it preloaded, before JAX is
imported, so that users need not know any of this. A setting already in the environment
wins over these (``MIMALLOC_ALLOW_THP=1`` gives huge pages back).

``AA_JAX_ALLOCATOR=system`` keeps the C library's allocator. Nothing happens off Linux,
inside an already-preloaded process, or when the library is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "AA_JAX_ALLOCATOR"
_RESTARTED = "_AA_JAX_ALLOCATOR_RESTARTED"  # set in the restarted process: never loop
# Keep freed memory for 10 s: the next step's buffers reuse it instead of faulting in
# fresh pages, and memory that is not reused still goes back to the OS.
# No transparent huge pages: each first touch of one made the kernel zero (and perhaps
# compact memory for) 2 MB, which cost the main job 11-18 s of system time.
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "10000", "MIMALLOC_ALLOW_THP": "0"}


def mimalloc_library() -> Path | None:
    """The shared library that the ``cmeel-mimalloc`` wheel installs, if it is there."""
    for entry in sys.path:
        lib = Path(entry or ".") / "cmeel.prefix" / "lib"
        if lib.is_dir():
            found = sorted(lib.glob("libmimalloc.so*"))
            if found:
                return found[0]
    return None


def active() -> str:
    """Which allocator this process runs with: "mimalloc" or "system"."""
    return "mimalloc" if "libmimalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def reexec_with_mimalloc(argv: list[str]) -> None:
    """Replaces this process by ``python argv...`` with mimalloc preloaded, if it should.

    Call it first thing in an entry point, before anything imports JAX. ``argv`` is what
    the new process runs after the interpreter (e.g. ``["-m", "aa_jax.cli", *args]``).
    Returns only when no restart is needed or possible.

    A module (``-m``) runs with ``-P``: the restarted interpreter does not put the
    working directory first on the import path, so a ``json.py`` in the folder the user
    runs ``aa-jax`` in (an adapter folder someone handed them, say) is never imported.
    """
    if (sys.platform != "linux" or os.environ.get(ENV, "mimalloc") == "system"
            or active() == "mimalloc" or os.environ.get(_RESTARTED)):
        return
    lib = mimalloc_library()
    if lib is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in (str(lib), env.get("LD_PRELOAD", "")) if p)
    for key, value in MIMALLOC_SETTINGS.items():
        env.setdefault(key, value)
    env[_RESTARTED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        safe = ["-P", *argv] if argv[:1] == ["-m"] else list(argv)
        os.execve(sys.executable, [sys.executable, *safe], env)
    except OSError:
        return  # could not restart: run on with the system allocator
