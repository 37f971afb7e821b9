"""Speed of the jitted train step and of inference, per method, against this machine's peak.

``aa-jax bench`` runs :func:`run`. For each method it times, after compilation, one
training step (forward, backward through the adapters, clipped Adam) and one inference
batch, as medians over ``repeats`` calls. It counts the floating-point operations of each
program from XLA's cost analysis (which counts them from the operations' shapes; of the
program with the encoder unrolled, since it counts a scan's body once), and divides by the time to give the achieved GFLOP/s. :func:`matmul_peak` measures, in the
same process, the float32 matmul throughput that this machine reaches with the same XLA
backend; the achieved rate over that peak is ``peak_fraction``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from aa_jax.export import static_architecture
from aa_jax.methods import METHODS
from aa_jax.models.layers import scans
from aa_jax.models.loader import load_pretrained, random_pretrained
from aa_jax.params import unstack_layers
from aa_jax.config import TrainConfig
from aa_jax.run_setup import init_params
from aa_jax.step import init_state, make_optimizer, make_predict, make_train_step
from aa_jax.train import device_name

DEFAULT_METHODS = ("baseline", "aa", "rational_only", "switch_only", "last_n")
# Bench-only entries besides the registered methods: an exported AA model (``aa-jax
# export``) whose switches picked the upper half of the layers.
EXTRA_METHODS: dict[str, Callable[[int, list[int]], Any]] = {
    "aa_export": lambda depth, upper: static_architecture(
        METHODS["aa"].architecture(depth), upper),
}


def bench_names() -> tuple[str, ...]:
    """What ``--methods`` accepts: the registered methods and the bench-only entries."""
    return (*METHODS, *EXTRA_METHODS)


def architecture(name: str, depth: int, upper: list[int], **options):
    """The architecture benchmarked as ``name``: ``last_n`` in the upper half of the
    layers, ``aa_focused`` in ``upper``, ``aa_export`` an export that chose ``upper``."""
    if name in EXTRA_METHODS:
        return EXTRA_METHODS[name](depth, upper)
    return METHODS[name].architecture(depth, last_n=depth - depth // 2,
                                      selected_layers=upper, top_k=len(upper), **options)


def _bench_batch(b: int, n: int) -> dict:
    return {"input_ids": jnp.full((b, n), 1000, jnp.int32),
            "attention_mask": jnp.ones((b, n), jnp.int32),
            "labels": jnp.zeros((b,), jnp.int32), "weights": jnp.ones((b,), jnp.float32)}


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` (blocked until its result is ready) after warm-up."""
    for _ in range(warmup):  # compilation, then the allocator's and threads' steady state
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def flop_count(make: Callable[[Any], Callable], model, *args) -> float | None:
    """The floating-point operations of one call of ``make(model)`` on ``args``, from
    XLA's cost analysis of the same program with the encoder unrolled: the analysis
    counts a scan's body once, not once per layer."""
    unrolled = model.clone(scan=False)
    # Lowered from shapes alone for the host's CPU backend, whose analysis every jaxlib
    # has (a GPU plugin's raises NotImplementedError); the count is the program's, not
    # the device's.
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          unstack_layers(args))
    try:
        with jax.default_device(jax.devices("cpu")[0]):
            cost = make(unrolled).lower(*shapes).cost_analysis()
    except Exception:  # a jaxlib without cost analysis
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def matmul_peak(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """GFLOP/s of a ``size`` x ``size`` matmul on the default device (median)."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    return 2 * size**3 / median_seconds(lambda: matmul(a, b), repeats) / 1e9


def run(model: str = "minilm", batch_size: int = 32, length: int = 128,
        methods: tuple[str, ...] = DEFAULT_METHODS, repeats: int = 5,
        pretrained=None, selected_layers: list[int] | None = None,
        dtype: str = "float32", peak: float | None = None,
        on_compiled: Callable[[str, float], None] | None = None,
        scan: bool | None = None, adapter: str = "seq_bn",
        random_weights: bool = False) -> list[dict[str, Any]]:
    """One record per method: times, examples/s, achieved GFLOP/s and peak fraction.

    ``last_n`` puts adapters in the upper half of the layers (3 of 6 for MiniLM);
    ``aa_focused`` in ``selected_layers`` (default: the same upper half), and
    ``aa_export`` is an exported AA model whose switches chose those layers.
    ``on_compiled(method, seconds)`` is called once a method's programs are compiled,
    before they are timed (``compile_s`` in its record). ``scan``: the encoder's
    (:func:`aa_jax.models.layers.scans`; the record's ``scan`` says which ran).
    ``adapter``: the adapter kind; ``random_weights``: a backbone of the model's shapes
    with random weights (:func:`aa_jax.models.loader.random_pretrained`), for checkpoints
    that are not installed.
    """
    pre = pretrained or (random_pretrained(model) if random_weights
                         else load_pretrained(model, tokenizer=False))
    depth = pre.config.num_hidden_layers
    b, n = batch_size, length
    batch = _bench_batch(b, n)
    peak = peak or matmul_peak()
    records = []
    upper = list(selected_layers) if selected_layers else list(range(depth // 2, depth))
    for method in methods:
        arch = architecture(method, depth, upper, adapter=adapter)
        net = pre.family.classifier(pre.config, 2, arch, pooling="pooler",
                                    dtype=jnp.dtype(dtype), scan=scan)
        trainable, frozen = init_params(net, jax.random.key(0), pre.params)
        tx = make_optimizer(TrainConfig(), 1000, trainable)
        state = [init_state(trainable, tx)]
        key = jax.random.key(1)
        train_args, predict_args = (state[0], frozen, batch, key), (trainable, frozen, batch)

        def make_step(m):  # the optimizer's labels follow the model's layout
            own_tx = tx if m is net else make_optimizer(TrainConfig(), 1000,
                                                        unstack_layers(trainable))
            return make_train_step(m, own_tx, regression=False)

        def make_pred(m):
            return make_predict(m, regression=False)

        # Compiled ahead of time, so that timing them compiles nothing again.
        started = time.perf_counter()
        step = make_step(net).lower(*train_args).compile()
        predict = make_pred(net).lower(*predict_args).compile()
        compile_s = time.perf_counter() - started
        if on_compiled:
            on_compiled(method, compile_s)
        train_flops = flop_count(make_step, net, *train_args)
        predict_flops = flop_count(make_pred, net, *predict_args)

        def train_once():
            state[0], metrics = step(state[0], frozen, batch, key)
            return metrics["loss"]

        train_s = median_seconds(train_once, repeats)
        predict_s = median_seconds(lambda: predict(state[0].trainable, frozen, batch), repeats)
        train_gflops = train_flops / train_s / 1e9 if train_flops else None
        predict_gflops = predict_flops / predict_s / 1e9 if predict_flops else None
        records.append({
            "method": method, "model": model, "family": pre.family.model_type,
            "adapter": adapter, "random_weights": random_weights, "dtype": dtype,
            "adapter_layers": list(arch.adapter_layers),
            "trainable_params": sum(x.size for x in jax.tree.leaves(trainable)), "batch_size": b, "length": n,
            "device": device_name(), "scan": scans(scan),
            "compile_s": round(compile_s, 2),
            "train_step_s": round(train_s, 4), "predict_s": round(predict_s, 4),
            "train_examples_per_s": round(b / train_s, 2),
            "predict_examples_per_s": round(b / predict_s, 2),
            "train_gflop": round(train_flops / 1e9, 6) if train_flops else None,
            "predict_gflop": round(predict_flops / 1e9, 6) if predict_flops else None,
            "gflops": round(train_gflops, 3) if train_gflops else None,
            "predict_gflops": round(predict_gflops, 3) if predict_gflops else None,
            "peak_gflops": round(peak, 1),
            "peak_fraction": round(train_gflops / peak, 4) if train_gflops else None,
            "predict_peak_fraction": round(predict_gflops / peak, 3) if predict_gflops else None,
        })
    return records


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`run`'s records, with each method relative to the first."""
    head = (f"{'method':14s} {'train s':>8s} {'ex/s':>7s} {'GFLOP/s':>8s} {'of peak':>8s} "
            f"{'x first':>7s} {'predict s':>9s} {'ex/s':>7s} {'GFLOP/s':>8s} {'of peak':>8s}")
    lines = [head]
    base = records[0] if records else None
    for r in records:
        def pct(v):
            return f"{100 * v:7.1f}%" if v is not None else f"{'-':>8s}"

        def num(v):
            return f"{v:8.1f}" if v is not None else f"{'-':>8s}"

        lines.append(
            f"{r['method']:14s} {r['train_step_s']:8.3f} {r['train_examples_per_s']:7.1f} "
            f"{num(r['gflops'])} {pct(r['peak_fraction'])} "
            f"{r['train_step_s'] / base['train_step_s']:7.2f} {r['predict_s']:9.3f} "
            f"{r['predict_examples_per_s']:7.1f} {num(r['predict_gflops'])} "
            f"{pct(r['predict_peak_fraction'])}")
    return "\n".join(lines)


def compile_times(model: str = "minilm", methods: tuple[str, ...] = ("baseline", "aa"),
                  batch_size: int = 32, length: int = 128, random_weights: bool = False,
                  dtype: str = "float32", selected_layers: list[int] | None = None,
                  adapter: str = "seq_bn", scan: bool | None = None) -> list[dict[str, Any]]:
    """Per method, the seconds to set up and to compile, without running anything.

    ``init_s``: the method's trainable params and the backbone in its layout
    (:func:`aa_jax.run_setup.init_params`); ``lower_s`` / ``compile_s``: tracing and
    lowering, then XLA's compilation, of the jitted train step; ``predict_lower_s`` /
    ``predict_compile_s``: the same for inference. With ``random_weights`` the backbone is
    drawn on the host (:func:`aa_jax.models.loader.random_pretrained`; ``weights_s``),
    so checkpoints that are not installed (``bert-large``, ``roberta-large``) can be
    measured offline.
    """
    started = time.perf_counter()
    pre = (random_pretrained(model) if random_weights
           else load_pretrained(model, tokenizer=False))
    weights_s = time.perf_counter() - started
    depth = pre.config.num_hidden_layers
    upper = list(selected_layers) if selected_layers else list(range(depth // 2, depth))
    batch = _bench_batch(batch_size, length)
    records = []
    for method in methods:
        t = time.perf_counter()
        arch = architecture(method, depth, upper, adapter=adapter)
        net = pre.family.classifier(pre.config, 2, arch, pooling="pooler",
                                    dtype=jnp.dtype(dtype), scan=scan)
        trainable, frozen = init_params(net, jax.random.key(0), pre.params)
        tx = make_optimizer(TrainConfig(), 1000, trainable)
        state = init_state(trainable, tx)
        jax.block_until_ready((state, frozen))
        init_s = time.perf_counter() - t
        times = {}
        for name, fn, args in (
                ("", make_train_step(net, tx, regression=False),
                 (state, frozen, batch, jax.random.key(1))),
                ("predict_", make_predict(net, regression=False), (trainable, frozen, batch))):
            t = time.perf_counter()
            lowered = fn.lower(*args)
            times[f"{name}lower_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            lowered.compile()
            times[f"{name}compile_s"] = round(time.perf_counter() - t, 2)
        records.append({"method": method, "model": model, "dtype": dtype,
                        "random_weights": random_weights, "device": device_name(),
                        "scan": scans(scan),
                        "batch_size": batch_size, "length": length,
                        "adapter_layers": list(arch.adapter_layers),
                        "weights_s": round(weights_s, 2), "init_s": round(init_s, 2),
                        **times})
    return records
