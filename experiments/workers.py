"""One sweep in several processes on this machine (``--workers``): shards of cells, or with
``--pin-cpus`` workers that share it run by run, each on its own share of the CPUs."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import numpy as np

from aa_jax.errors import UserError

PIN_ENV = "_AA_JAX_SWEEP_CPUS"  # the CPUs run_workers gives a pinned worker


def cpu_shares(n: int) -> list[list[int]]:
    """This process's CPUs dealt into ``n`` contiguous shares as equal as they can be."""
    if not hasattr(os, "sched_setaffinity"):
        raise UserError("--pin-cpus pins each worker to CPUs of its own, which this system "
                        "does not offer (Linux does); leave --pin-cpus out here.")
    cpus = sorted(os.sched_getaffinity(0))
    if n > len(cpus):
        raise UserError(f"--pin-cpus gives each worker CPUs of its own, but this process "
                        f"may use {len(cpus)} CPUs for {n} workers; ask for at most "
                        f"{len(cpus)} workers.")
    return [[int(c) for c in share] for share in np.array_split(cpus, n)]


def run_workers(args: argparse.Namespace) -> int:
    """Runs shard i/n in each of n child processes and waits for them all; a SIGTERM or
    SIGINT is passed on to them (a killed run resumes at the next start). With
    ``--pin-cpus``, child i runs on its own share of the CPUs and takes the whole sweep
    as worker i/n (:func:`experiments.sweep.run`)."""
    # The children start as this process did: with -P where it was restarted with one
    # (aa_jax.allocator), so that they import the same package from the same place.
    base = [sys.executable, *(["-P"] if sys.flags.safe_path else []), "-m",
            "experiments.sweep", args.sweep, "--together", args.together]
    for flag, value in (("--glue-dir", args.glue_dir), ("--out", args.out),
                        ("--work", args.work), ("--epochs", args.epochs)):
        if value is not None:
            base += [flag, str(value)]
    if args.commit:
        base.append("--commit")
    if args.allow_dirty:
        base.append("--allow-dirty")
    base.append("--worker")  # an interruption is reported once, here
    # One accelerator shared by n processes: none may take most of its memory up front.
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", **os.environ}
    n = args.workers
    interrupted, children = [], []

    def stop(signum, frame):
        interrupted.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.pin_cpus:
            # Each child pins itself first thing (PIN_ENV), before it starts any thread.
            shares, started = cpu_shares(n), f"{time.time():.6f}"
            for i in range(1, n + 1):
                children.append(subprocess.Popen(
                    base + ["--worker-of", f"{i}/{n}", "--started", started],
                    env={**env, PIN_ENV: ",".join(map(str, shares[i - 1]))}))
        else:
            children += [subprocess.Popen(base + ["--shard", f"{i}/{n}"], env=env)
                         for i in range(1, n + 1)]
        codes = [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if signal.SIGINT in interrupted:
        raise KeyboardInterrupt
    # The first child that did not succeed says how the whole ended (killed: 128 + signal).
    return next((c if c > 0 else 128 - c for c in codes if c != 0), 0)


def pin_from_environment() -> None:
    """Pins this process to the CPUs :func:`run_workers` named for it, if it did."""
    cpus = os.environ.pop(PIN_ENV, None)
    if cpus:
        os.sched_setaffinity(0, [int(c) for c in cpus.split(",")])
