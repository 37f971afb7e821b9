"""The eval and architecture commands, and training on a user's own files."""

import csv
import json
import os
import subprocess
import sys

import jax
import pytest

from aa_jax import cli


def test_eval_reproduces_the_stored_result(aa_run, capsys):
    capsys.readouterr()
    assert cli.main(["eval", str(aa_run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    result = json.loads((aa_run / "result.json").read_text())
    assert metrics["test"] == result["test"]
    assert metrics["dev"] == result["dev"]


def test_architecture_prints_and_draws(aa_run, tmp_path, capsys):
    png = tmp_path / "arch.png"
    assert cli.main(["architecture", str(aa_run), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    learned = json.loads((aa_run / "architecture.json").read_text())
    assert f"selected layers ({len(learned['selected_layers'])} of 2)" in out
    assert "p(adapter)=" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(learned["layers"]) == 2
    for layer in learned["layers"]:
        assert len(layer["rational"]["numerator"]) == 6
        assert len(layer["rational"]["denominator"]) == 4
        assert abs(sum(layer["switch_probs"]) - 1) < 1e-6
    assert learned["source"]["task"] == "rte" and learned["source"]["seed"] == 42


@pytest.mark.parametrize("regression", [False, True])
def test_train_on_own_csv_files(tmp_path, tiny_checkpoint, regression, capsys):
    words = ["good", "bad", "fine", "poor", "great", "awful"]
    for name, n in (("train.csv", 40), ("test.csv", 12)):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["premise", "hypothesis", "gold"])
            for i in range(n):
                label = (i % 5) * 0.75 if regression else ("yes" if i % 2 else "no")
                w.writerow([f"the film was {words[i % 6]}", f"it is {words[(i + 1) % 6]}",
                            label])
    out = tmp_path / "run"
    code = cli.main(["train", "--model", str(tiny_checkpoint), "--data",
                     f"{tmp_path / 'train.csv'},{tmp_path / 'test.csv'}",
                     "--text-columns", "premise,hypothesis", "--label-column", "gold",
                     "--method", "baseline", "--train-size", "32", "--epochs", "1",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert set(result["test"]) == ({"pearson", "spearman"} if regression else {"accuracy"})
    assert result["examples"] == {"train": 24, "dev": 8, "test": 12}
    assert result["train_seconds"] > 0 and result["setup_and_test_seconds"] > 0


BENCH_ARGS = ["bench", "--methods", "baseline,aa", "--batch-size", "2", "--length", "16",
              "--repeats", "1", "--json"]


@pytest.mark.slow
@pytest.mark.parametrize("scan, scanned", [("auto", jax.default_backend() != "cpu"),
                                           ("on", True)])
def test_bench_prints_one_json_record_per_method(tiny_checkpoint, capsys, scan, scanned):
    assert cli.main([*BENCH_ARGS, "--model", str(tiny_checkpoint), "--scan", scan]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["method"] for r in records] == ["baseline", "aa"]
    for r in records:
        assert r["scan"] is scanned
        assert r["train_step_s"] > 0 and r["predict_s"] > 0
        assert r["gflops"] > 0 and r["peak_gflops"] > 0
        assert r["peak_fraction"] == pytest.approx(r["gflops"] / r["peak_gflops"], abs=1e-3)
        assert r["train_gflop"] > r["predict_gflop"] > 0  # a step also runs the backward


def test_bench_refuses_an_unknown_method(tiny_checkpoint, capsys):
    assert cli.main(["bench", "--model", str(tiny_checkpoint), "--methods", "fast"]) == 2
    assert "Unknown method(s) fast" in capsys.readouterr().err


@pytest.mark.slow  # two whole processes, each paying JAX's start-up and compilation
@pytest.mark.skipif(sys.platform != "linux", reason="the allocator restart is for Linux")
@pytest.mark.parametrize("setting, want", [(None, "mimalloc"), ("system", "system")])
def test_the_command_restarts_with_mimalloc_unless_told_not_to(tiny_checkpoint, setting, want):
    from aa_jax.allocator import mimalloc_library

    if mimalloc_library() is None:
        pytest.skip("cmeel-mimalloc is not installed")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "AA_JAX_ALLOCATOR", "_AA_JAX_ALLOCATOR_RESTARTED")}
    if setting:
        env["AA_JAX_ALLOCATOR"] = setting
    args = [*BENCH_ARGS, "--methods", "baseline", "--model", str(tiny_checkpoint)]
    code = f"import sys; sys.argv = ['aa-jax', *{args!r}]; from aa_jax.cli import entry; entry()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1])["allocator"] == want


class _Restarted(Exception):
    pass


@pytest.mark.parametrize("user_thp, want_thp", [(None, "0"), ("1", "1")])
def test_the_restart_preloads_mimalloc_with_its_settings(monkeypatch, tmp_path, user_thp,
                                                          want_thp):
    """The restarted process gets mimalloc preloaded, freed memory kept for 10 s and no
    transparent huge pages; a setting the user already made wins."""
    from aa_jax import allocator

    lib = tmp_path / "libmimalloc.so.2"
    seen = {}

    def execve(path, argv, env):
        seen.update(path=path, argv=argv, env=env)
        raise _Restarted

    monkeypatch.setattr(allocator, "mimalloc_library", lambda: lib)
    monkeypatch.setattr(allocator.os, "execve", execve)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    for name in ("LD_PRELOAD", allocator.ENV, allocator._RESTARTED, "MIMALLOC_PURGE_DELAY",
                 "MIMALLOC_ALLOW_THP"):
        monkeypatch.delenv(name, raising=False)
    if user_thp is not None:
        monkeypatch.setenv("MIMALLOC_ALLOW_THP", user_thp)
    with pytest.raises(_Restarted):
        allocator.reexec_with_mimalloc(["-m", "aa_jax.cli", "train"])
    env = seen["env"]
    assert seen["argv"] == [sys.executable, "-P", "-m", "aa_jax.cli", "train"]
    assert env["LD_PRELOAD"].split()[0] == str(lib)
    assert env["MIMALLOC_PURGE_DELAY"] == "10000"
    assert env["MIMALLOC_ALLOW_THP"] == want_thp
    assert env[allocator._RESTARTED] == "1"


@pytest.mark.parametrize("argv, want", [
    ([], (1e-4, 0.05, 0.01)),
    (["--protocol", "cpu"], (3e-3, 0.15, 0.03)),
    (["--protocol", "cpu-v1"], (3e-3, 1.5, 0.3)),
    (["--protocol", "cpu", "--switch-lr", "0.5"], (3e-3, 0.5, 0.03)),
])
def test_the_protocol_sets_the_learning_rates_that_no_flag_gives(argv, want):
    """The CPU protocol's switch rate is the switch-rate rule's 0.15 (rationals at 1/5 of
    it); cpu-v1 keeps the first version's released ratios; a flag given wins."""
    args = cli.build_parser().parse_args(["train", "--task", "sst2", *argv])
    config = cli.config_from_args(args)
    assert (config.learning_rate, config.switch_learning_rate,
            config.rational_learning_rate) == want
