"""The ``aa-jax`` command line: parse, call the library, print. The work is in the library.

    aa-jax train --task rte --method aa --model minilm --train-size 100 --seed 42 --out DIR
    aa-jax train --task rte --method aa --seeds 42,92,111 --out DIR   (DIR/seed-42, ...)
    aa-jax eval DIR
    aa-jax architecture DIR
    aa-jax export DIR --out ADAPTERS_DIR
    aa-jax predict ADAPTERS_DIR --text "a gripping film"
    aa-jax bench --methods baseline,aa --json

A user's mistake ends with one sentence on stderr and exit status 2 (``--debug`` shows
the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aa_jax.errors import UserError, check_writable, storage_error
from aa_jax.flags import (_csv, add_config_flags, add_kind_flags,
                          config_from_args, protocol)


def _debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    from aa_jax import __version__
    from aa_jax.adapters import KINDS
    from aa_jax.bench import bench_names
    from aa_jax.config import PROTOCOLS

    parser = argparse.ArgumentParser(
        prog="aa-jax", description="Adaptable Adapters in JAX: train adapters in a frozen "
        "BERT and learn which layers need one.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"aa-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train and evaluate one method on one task",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    seeds = t.add_mutually_exclusive_group()
    add_config_flags(t, {"seed": seeds})
    add_kind_flags(t)
    seeds.add_argument("--seeds", default=None,
                   help="several seeds trained together as one program, e.g. 42,92,111: "
                   "one run directory per seed (with --out DIR: DIR/seed-<seed>)")
    t.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                   help="the learning rates --lr, --switch-lr, --rational-lr default to "
                   "(default: released for a GLUE task, cpu with --data): " +
                   "; ".join(f"{name}: " + ", ".join(f"{v:g}" for v in rates.values())
                             for name, rates in PROTOCOLS.items()))
    t.add_argument("--out", default=None, help="run directory (default runs/<...>); with "
                   "--seeds, the folder of the seeds' run directories")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _debug_flag(t)

    e = sub.add_parser("eval", help="re-evaluate a run's best epoch (or an export) on dev "
                       "and test")
    e.add_argument("run_dir")
    _moved_data_flags(e)
    _debug_flag(e)

    x = sub.add_parser("export", help="save a finished run's adapters as a folder to share "
                       "(switches resolved: only the selected adapters; safetensors, config, "
                       "model card)")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True, help="a new directory for the adapters")
    _moved_data_flags(x)
    _debug_flag(x)

    m = sub.add_parser("merge", help="fold an adapter folder's LoRA (or IA3) into the base "
                       "weights: a Hugging Face checkpoint folder, with the task head for "
                       "'aa-jax eval DIR/aa_jax'")
    m.add_argument("adapters", help="an 'aa-jax export' folder or a Hub repo id")
    m.add_argument("--out", required=True, help="a new directory for the merged checkpoint")
    m.add_argument("--model", default=None, help="the base model (default: the one the "
                   "folder names)")
    _debug_flag(m)

    pr = sub.add_parser("predict", help="predict labels (or scores) of new text with an "
                        "adapter folder or Hub repo id")
    pr.add_argument("adapters", help="an 'aa-jax export' folder or a Hub repo id")
    pr.add_argument("--text", action="append", help="a text to predict (repeatable)")
    pr.add_argument("--text-pair", action="append",
                    help="its second sentence, for sentence-pair tasks (repeatable)")
    pr.add_argument("--file", help="texts to predict: .jsonl, .json, .csv, .tsv or .parquet "
                    "with the task's text columns (or text, text_pair)")
    pr.add_argument("--out", help="write the predictions here as JSON lines (default: print)")
    pr.add_argument("--model", default=None, help="the base model (default: the one the "
                    "folder names)")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    _debug_flag(pr)

    b = sub.add_parser("bench", help="time the train step and inference of each method")
    b.add_argument("--model", default="minilm")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--length", type=int, default=128)
    b.add_argument("--methods", type=_csv, default=None,
                   help="comma-separated, of: " + ", ".join(bench_names()) +
                   " (default baseline,aa,rational_only,switch_only,last_n; with "
                   "--compile baseline,aa)")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of the frozen backbone")
    b.add_argument("--json", action="store_true", help="one JSON object per method")
    b.add_argument("--compile", action="store_true",
                   help="only set up and compile (train step and inference) and report the "
                   "seconds: init_s, lower_s, compile_s, predict_lower_s, predict_compile_s")
    b.add_argument("--random-weights", action="store_true",
                   help="random backbone weights of the model's shapes (for checkpoints "
                   "that are not installed, e.g. --model bert-large or roberta-base)")
    b.add_argument("--adapter", default="seq_bn", choices=tuple(KINDS),
                   help="the adapter kind")
    b.add_argument("--scan", default="auto", choices=("auto", "on", "off"),
                   help="the encoder's layers as one nn.scan (on) or unrolled (off); auto: "
                   "unrolled on the CPU, scanned elsewhere (the training default)")
    _debug_flag(b)

    v = sub.add_parser("env", help="what aa_jax runs on: versions, JAX's backend and devices")
    _debug_flag(v)

    a = sub.add_parser("architecture", help="show a run's learned architecture (+ PNG)")
    a.add_argument("run_dir")
    a.add_argument("--png", default=None, help="where to write the picture "
                   "(default RUN_DIR/architecture.png)")
    _debug_flag(a)
    return parser


def _seed_list(text: str) -> list[int]:
    """``--seeds``: distinct non-negative integers separated by commas."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts):  # empty entries, signs, words
        raise UserError(f"--seeds must be a comma-separated list of non-negative whole "
                        f"numbers such as 42,92,111, got {text!r}.")
    seeds = [int(p) for p in parts]
    repeated = [s for i, s in enumerate(seeds) if s in seeds[:i]]
    if repeated:
        raise UserError(f"--seeds lists seed {repeated[0]} more than once; list each seed "
                        f"once.")
    return seeds


def _default_out(config) -> Path:
    task = "custom" if config.data else config.task
    size = "full" if config.train_size is None else config.train_size
    return Path(f"runs/{task}-{config.method}-{Path(config.model).name}-{size}-{config.seed}")


def _result_line(result: dict) -> str:
    test = ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items())
    line = (f"{result['task']} {result['method']} ({result['model']}, "
            f"{result['train_size'] or 'full'} examples, seed {result['seed']}): test {test} "
            f"(best epoch {result['best_epoch']})")
    if "majority" in result:  # results of older versions lack it
        chance = ", ".join(f"{k} {v:.4f}" for k, v in result["majority"].items())
        line += f"; the majority class scores {chance} on the same test set"
    return line


def _announce(args, config):
    """The first line of a run on the user's own data: what it trains on, and how."""
    if not config.data:
        return None

    def say(exp) -> None:
        n = {k: len(v) for k, v in exp.labels.items()}
        sample = "all examples" if config.train_size is None else \
            f"a sample of {config.train_size}"
        print(f"training on {n['train']} examples (dev {n['dev']}, test {n['test']}; "
              f"{sample}), protocol {protocol(args)}: lr {config.learning_rate:g}, "
              f"switch lr {config.switch_learning_rate:g}, rational lr "
              f"{config.rational_learning_rate:g}", flush=True)
    return say


def cmd_train(args) -> int:
    from aa_jax.train import train

    config = config_from_args(args)
    config.validate()
    if args.seeds is not None:
        return _train_seeds(args, config)
    out = Path(args.out or _default_out(config))
    result = train(config, out, progress=not args.no_progress,
                   on_start=_announce(args, config))
    print(_result_line(result))
    print(f"selected layers: {result['selected_layers']}")
    print(f"trainable params {result['trainable_params']:,}; adapter weights "
          f"{result['adapter_weights']:,}; {result['train_seconds']:.1f} s; run: {out}")
    return 0


def _train_seeds(args, config) -> int:
    import dataclasses

    from aa_jax.multi_seed import train_seeds

    configs = [dataclasses.replace(config, seed=seed) for seed in _seed_list(args.seeds)]
    outs = [Path(args.out) / f"seed-{c.seed}" if args.out else _default_out(c)
            for c in configs]
    results = train_seeds(configs, outs, progress=not args.no_progress)
    for result, out in zip(results, outs):
        print(f"{_result_line(result)}; selected layers {result['selected_layers']}; "
              f"run: {out}")
    r = results[0]
    seconds = sum(x["train_seconds"] for x in results) / len(results)
    print(f"trainable params {r['trainable_params']:,} per seed; adapter weights "
          f"{r['adapter_weights']:,}; {seconds:.1f} s per seed")
    return 0


def _moved_data_flags(p) -> None:
    p.add_argument("--glue-dir", default=None,
                   help="the GLUE folder, where it is no longer where the run found it")
    p.add_argument("--data", type=_csv, default=None,
                   help="the run's own data files, comma-separated, where they moved "
                   "(checked against the SHA-256 the run recorded)")


def cmd_eval(args) -> int:
    from aa_jax.train import evaluate_run

    print(json.dumps(evaluate_run(args.run_dir, glue_dir=args.glue_dir, data=args.data),
                     indent=2))
    return 0


def cmd_architecture(args) -> int:
    from aa_jax.learned import read_learned
    from aa_jax.plots import plot_architecture
    from aa_jax.switch import ADAPTER

    run = Path(args.run_dir)
    learned = read_learned(run)
    png = Path(args.png) if args.png else (run if run.is_dir() else run.parent) / \
        "architecture.png"
    check_writable(png.parent, "The folder of the picture")  # before printing anything
    src = learned.get("source", {})
    print(f"learned on {src.get('task')} / {src.get('train_size')} examples / seed "
          f"{src.get('seed')} / {src.get('model')} ({src.get('method')})")
    print(f"selected layers ({len(learned['selected_layers'])} of {learned['depth']}): "
          f"{learned['selected_layers']}")
    for e in learned.get("layers", []):
        probs = e.get("switch_probs")
        p = f"p(adapter)={probs[ADAPTER]:.3f}" if probs else "no switch"
        rat = " rational" if "rational" in e else ""
        print(f"  layer {e['layer']:2d}: {'selected' if e['selected'] else '-':8s} {p}{rat}")
    plot_architecture(learned, png)
    print(f"wrote {png}")
    return 0


def cmd_export(args) -> int:
    from aa_jax.export import save_adapters

    record = save_adapters(args.out, args.run_dir, glue_dir=args.glue_dir, data=args.data)
    depth = len(record["architecture"]["layers"])
    kept = ("all layers" if record["selected_layers"] is None else
            f"layers {record['selected_layers']} of {depth}, no switches")
    print(f"exported {args.run_dir} to {args.out}: adapters in {kept}")
    return 0


def cmd_env(args) -> int:
    """Versions, JAX's backend and its devices: what a user checks after installing the
    CUDA or TPU extra."""
    import platform

    import flax
    import jax
    import optax

    from aa_jax import __version__

    print(f"aa_jax {__version__}; jax {jax.__version__}, flax {flax.__version__}, optax "
          f"{optax.__version__}; Python {platform.python_version()}")
    print(f"backend: {jax.default_backend()}; {jax.device_count()} device(s) in "
          f"{jax.process_count()} process(es)")
    for device in jax.local_devices():
        print(f"  {device.id}: {device.device_kind} ({device.platform})")
    return 0


def cmd_merge(args) -> int:
    from aa_jax.merging import HEAD_DIR, merge_adapters

    record = merge_adapters(args.adapters, args.out, base_model=args.model)
    merged = record["merged"]
    print(f"merged the {merged['adapter']} adapters of {args.adapters} (layers "
          f"{merged['layers']}) into {merged['base_model']['name']}: a Hugging Face "
          f"checkpoint in {args.out}, its task head for 'aa-jax eval' and 'aa-jax predict' "
          f"in {Path(args.out) / HEAD_DIR}")
    return 0


def cmd_predict(args) -> int:
    from aa_jax.export import load_adapters
    from aa_jax.inference import predict, read_texts, write_predictions

    if (args.text is None) == (args.file is None):
        raise UserError("Give the texts to predict with --text (repeatable) or --file, "
                        "one of the two.")
    if args.file is not None and args.text_pair is not None:
        raise UserError("--text-pair goes with --text; a --file gives the second sentences "
                        "in its second text column.")
    if args.out is not None and (Path(args.out).is_dir() or args.out.endswith(os.sep)
                                 or os.path.basename(args.out) in ("", ".", "..")):
        raise UserError(f"--out {args.out} is a folder; give the file to write the "
                        f"predictions to, e.g. {Path(args.out) / 'predictions.jsonl'}.")
    adapters = load_adapters(args.adapters, base_model=args.model)
    if args.out is not None:  # after the folder is checked, so that a refusal creates nothing
        check_writable(Path(args.out).parent, "The folder of --out")
    if args.file is not None:
        texts, pairs = read_texts(args.file, adapters)
    else:
        texts, pairs = args.text, args.text_pair
    predictions = predict(adapters, texts, pairs, batch_size=args.batch_size,
                          progress=args.file is not None and not args.no_progress)
    if args.out is not None:
        write_predictions(args.out, predictions)
        print(f"wrote {len(predictions)} predictions to {args.out}")
    else:
        for p in predictions:
            print(json.dumps(p, allow_nan=False))
    return 0


def cmd_bench(args) -> int:
    from aa_jax import allocator, bench

    default = ("baseline", "aa") if args.compile else bench.DEFAULT_METHODS
    methods = tuple(args.methods or default)
    unknown = [m for m in methods if m not in bench.bench_names()]
    if unknown:
        raise UserError(f"Unknown method(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(bench.bench_names())}.")
    for name in ("batch_size", "length", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer.")
    scan = {"auto": None, "on": True, "off": False}[args.scan]
    if args.compile:
        records = bench.compile_times(args.model, methods, args.batch_size, args.length,
                                      args.random_weights, args.dtype, adapter=args.adapter,
                                      scan=scan)
        for r in records:
            print(json.dumps(r) if args.json else
                  f"{r['method']:14s} init {r['init_s']:6.2f} s  train step: lower "
                  f"{r['lower_s']:6.2f} s, compile {r['compile_s']:6.2f} s  inference: lower "
                  f"{r['predict_lower_s']:6.2f} s, compile {r['predict_compile_s']:6.2f} s")
        return 0
    records = bench.run(args.model, args.batch_size, args.length, methods, args.repeats,
                        dtype=args.dtype, scan=scan, adapter=args.adapter,
                        random_weights=args.random_weights)
    for r in records:
        r["allocator"] = allocator.active()
    if args.json:
        for r in records:
            print(json.dumps(r))
    else:
        r = records[0]
        print(f"{r['device']}, model {r['model']}, batch {r['batch_size']} x {r['length']} "
              f"tokens, median of {args.repeats}; allocator {r['allocator']}; float32 matmul "
              f"peak {r['peak_gflops']:.0f} GFLOP/s (2048^2, same process)")
        print(bench.format_table(records))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": cmd_train, "eval": cmd_eval, "architecture": cmd_architecture,
                "bench": cmd_bench, "export": cmd_export, "predict": cmd_predict,
                "merge": cmd_merge, "env": cmd_env}
    if args.command in ("train", "eval", "bench", "export", "predict"):
        from aa_jax.cache import enable_compilation_cache

        enable_compilation_cache()
    try:
        if args.command == "train":
            from aa_jax.distributed import initialize

            if initialize():
                import jax

                print(f"process {jax.process_index()} of {jax.process_count()}; "
                      f"{jax.device_count()} devices in all", flush=True)
        return commands[args.command](args)
    except Exception as e:
        # A write that a full, read-only or forbidden disk refused, wherever it happened.
        error = e if isinstance(e, UserError) else storage_error(
            getattr(e, "filename", None) or "a file", e)
        if args.debug or error is None:
            raise
        print(f"aa-jax: error: {' '.join(str(error).split())}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt as e:
        print("aa-jax: interrupted; run the same command again to resume.", file=sys.stderr)
        from aa_jax.run_lock import Terminated

        return 143 if isinstance(e, Terminated) else 130  # 128 + SIGTERM or SIGINT


def entry() -> None:
    """The ``aa-jax`` console command: restarts itself with the allocator that suits XLA
    (see :mod:`aa_jax.allocator`), then runs :func:`main`."""
    from aa_jax.allocator import reexec_with_mimalloc

    reexec_with_mimalloc(["-m", "aa_jax.cli", *sys.argv[1:]])
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
