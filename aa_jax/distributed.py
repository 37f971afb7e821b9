"""Multi-host training: one process per host, every device of every host in one mesh.

A run joins several processes when ``AA_JAX_COORDINATOR`` is set (``host:port`` of
process 0, or ``auto`` where :func:`jax.distributed.initialize` finds the cluster itself,
as on SLURM or Cloud TPU), with ``AA_JAX_NUM_PROCESSES`` and ``AA_JAX_PROCESS_ID``. Each
process runs the same command; each reads the same data, builds the same global batch and
feeds the devices it owns their rows of it, so the run computes what one process with all
the devices computes. Process 0 writes the run's JSON files; the checkpoints are written by
orbax from all processes together, into a directory they share.
"""

from __future__ import annotations

import os

from aa_jax.errors import UserError

ENV = ("AA_JAX_COORDINATOR", "AA_JAX_NUM_PROCESSES", "AA_JAX_PROCESS_ID")


def initialize(environ=os.environ) -> bool:
    """Joins the multi-process run the environment describes, if any; returns whether it
    did. Call it before JAX computes anything."""
    coordinator = environ.get("AA_JAX_COORDINATOR")
    if not coordinator:
        return False
    count = index = None
    if coordinator != "auto":
        try:
            count = int(environ["AA_JAX_NUM_PROCESSES"])
            index = int(environ["AA_JAX_PROCESS_ID"])
        except (KeyError, ValueError):
            raise UserError("AA_JAX_COORDINATOR is set, so AA_JAX_NUM_PROCESSES and "
                            "AA_JAX_PROCESS_ID must be whole numbers too (e.g. 2 and 0)."
                            ) from None
        if not 0 <= index < count:
            raise UserError(f"AA_JAX_PROCESS_ID must be between 0 and AA_JAX_NUM_PROCESSES - 1 "
                            f"({count - 1}), got {index}.")
    import jax

    # The CPU backend needs a collectives implementation to span processes; GPUs and TPUs
    # bring their own and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == "auto":
        jax.distributed.initialize()
        return True
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=count,
                               process_id=index)
    return True


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0, or the only one)."""
    import jax

    return jax.process_index() == 0


def multi_process() -> bool:
    import jax

    return jax.process_count() > 1
