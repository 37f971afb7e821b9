"""Which code each result ran: the record a run writes, the sweep's refusal of uncommitted
changes, and the aggregator's refusal of a cell whose runs ran different library code."""

from __future__ import annotations

import json
import subprocess

import pytest

from aa_jax import __version__, provenance
from aa_jax.errors import UserError
from experiments import grid, records, sweep


def git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def commit_file(repo, path, text, message):
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
    git(repo, "add", path)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def checkout(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    commit_file(repo, "uv.lock", "lock 1\n", "lock")
    return repo


def test_a_clean_checkout_is_recorded_with_its_commit_and_trees(checkout):
    first = commit_file(checkout, "aa_jax/model.py", "x = 1\n", "code")
    record = provenance.checkout_record(checkout)
    assert record["version"] == f"aa_jax {__version__}"
    assert record["commit"] == first and record["clean"] is True and "changed" not in record
    assert record["tree"] == {"aa_jax": git(checkout, "rev-parse", "HEAD:aa_jax"),
                              "uv.lock": git(checkout, "rev-parse", "HEAD:uv.lock")}
    # Results a sweep writes are not code; a result commit keeps the trees.
    (checkout / "experiments" / "results" / "s").mkdir(parents=True)
    (checkout / "experiments" / "results" / "s" / "result.json").write_text("{}")
    assert provenance.checkout_record(checkout)["clean"] is True
    later = commit_file(checkout, "experiments/results/s/result.json", "{}", "results")
    assert provenance.checkout_record(checkout)["commit"] == later
    assert provenance.checkout_record(checkout)["tree"] == record["tree"]


def test_uncommitted_code_is_recorded_as_such(checkout):
    commit_file(checkout, "aa_jax/model.py", "x = 1\n", "code")
    (checkout / "aa_jax" / "model.py").write_text("x = 2\n")
    (checkout / "notes.txt").write_text("new")
    record = provenance.checkout_record(checkout)
    assert record["clean"] is False and record["changed"] == ["aa_jax/model.py", "notes.txt"]
    assert "with uncommitted changes" in provenance.describe(record)


def test_outside_a_checkout_only_the_version_is_recorded(tmp_path):
    (tmp_path / "aa_jax").mkdir()
    assert provenance.checkout_record(tmp_path) == {"version": f"aa_jax {__version__}"}


def test_a_checkout_without_a_commit_says_why(tmp_path):
    (tmp_path / "aa_jax").mkdir()
    git(tmp_path, "init", "-q")
    record = provenance.checkout_record(tmp_path)
    assert set(record) == {"version", "git_error"} and record["git_error"]


def test_an_untracked_lock_is_a_change_not_a_lost_record(checkout):
    commit_file(checkout, "aa_jax/model.py", "x = 1\n", "code")
    git(checkout, "rm", "-q", "--cached", "uv.lock")
    git(checkout, "commit", "-q", "-m", "untrack")
    record = provenance.checkout_record(checkout)
    assert set(record["tree"]) == {"aa_jax"} and record["changed"] == ["uv.lock"]


def test_this_process_records_this_checkout():
    record = provenance.code_record()
    if (provenance.ROOT / ".git").exists():
        assert len(record["commit"]) == 40 and "aa_jax" in record["tree"]
        status = subprocess.run(["git", "status", "--porcelain", "--", ".",
                                 ":(exclude)experiments/results"], cwd=provenance.ROOT,
                                capture_output=True, text=True, check=True).stdout
        assert record["clean"] == (status.strip() == "")


def test_a_sweep_refuses_uncommitted_code_unless_told(monkeypatch, tmp_path, capsys):
    dirty = {"version": "aa_jax 9", "commit": "a" * 40, "tree": {}, "clean": False,
             "changed": ["aa_jax/model.py"]}
    monkeypatch.setattr(provenance, "code_record", lambda: dirty)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"base": {"train_size": 24}, "grid": {"seed": [1]}}))
    args = [str(path), "--out", str(tmp_path / "r"), "--work", str(tmp_path / "w")]
    assert sweep.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The checkout has uncommitted changes (aa_jax/model.py)")
    assert "--allow-dirty" in err and err.count("\n") == 1
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()
    sweep.check_clean(allow_dirty=True)  # told: runs (and each result records it)
    monkeypatch.setattr(provenance, "code_record", lambda: {"version": "aa_jax 9"})
    with pytest.raises(UserError, match="it is not a git checkout"):
        sweep.check_clean(allow_dirty=False)
    monkeypatch.setattr(provenance, "code_record",
                        lambda: {"version": "aa_jax 9", "git_error": "bad HEAD"})
    with pytest.raises(UserError, match=r"git could not read its commit \(bad HEAD\)"):
        sweep.check_clean(allow_dirty=False)
    monkeypatch.setattr(provenance, "code_record", lambda: {**dirty, "clean": True})
    sweep.check_clean(allow_dirty=False)


def _mixed(tmp_path, checkout, commits: dict[int, str], **spec):
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"base": {"train_size": 100, "task": "rte"},
                                "grid": {"seed": list(commits), "method": ["aa"]}, **spec}))
    s = grid.Sweep.load(path, results=tmp_path / "r")
    done = {}
    for seed, commit in commits.items():
        tree = {"aa_jax": git(checkout, "rev-parse", f"{commit}:aa_jax")}
        done[f"rte-aa-100-{seed}"] = {"test": {"accuracy": 0.5}, "select_metric": "accuracy",
                                      "code": {"version": "aa_jax 9", "commit": commit,
                                               "tree": tree, "clean": True}}
    return s, done


def test_the_aggregator_refuses_a_cell_that_mixes_library_code(tmp_path, checkout):
    first = commit_file(checkout, "aa_jax/model.py", "x = 1\n", "code")
    results = commit_file(checkout, "experiments/results/s/a.json", "{}", "results")
    changed = commit_file(checkout, "aa_jax/model.py", "x = 2\n", "change")
    # Two commits apart only by results: one cell.
    s, done = _mixed(tmp_path, checkout, {42: first, 92: results})
    records.check_commits(s, done, checkout)
    # A commit between them changed aa_jax/: refused, naming it.
    s, done = _mixed(tmp_path, checkout, {42: first, 92: results, 111: changed})
    with pytest.raises(UserError, match=f"rte at 100 pools runs of commits {first[:12]} and "
                       f"{changed[:12]}, between which 1 commit.*{changed[:12]}"):
        records.check_commits(s, done, checkout)
    # Unless the sweep states that commit changes nothing numerical.
    s, done = _mixed(tmp_path, checkout, {42: first, 111: changed},
                     same_numerics=[changed[:12]])
    records.check_commits(s, done, checkout)
    # Labels compared at one task and size are one code too: a baseline on the changed
    # commit against AA on the first is refused.
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"base": {"train_size": 100, "task": "rte"},
                                "grid": {"seed": [42], "method": ["aa", "baseline"]}}))
    two = grid.Sweep.load(path, results=tmp_path / "r2")
    _, one = _mixed(tmp_path, checkout, {42: first})
    _, other = _mixed(tmp_path, checkout, {42: changed})
    pair = {"rte-aa-100-42": one["rte-aa-100-42"],
            "rte-baseline-100-42": other["rte-aa-100-42"]}
    with pytest.raises(UserError, match="rte at 100 pools runs of commits"):
        records.check_commits(two, pair, checkout)
    # A recorded commit goes to git only as a full hexadecimal id: no option smuggled in.
    s, done = _mixed(tmp_path, checkout, {42: first, 111: changed})
    done["rte-aa-100-111"]["code"]["commit"] = f"--output={tmp_path / 'written'}"
    with pytest.raises(UserError, match="is not a full git commit id"):
        records.check_commits(s, done, checkout)
    assert not list(tmp_path.glob("written*"))
    s, done = _mixed(tmp_path, checkout, {42: first, 111: changed}, same_numerics=["a"])
    with pytest.raises(UserError, match="at least 7 hexadecimal digits"):
        records.check_commits(s, done, checkout)
    # A commit this history lacks is named, not guessed at.
    s, done = _mixed(tmp_path, checkout, {42: first, 111: changed})
    done["rte-aa-100-111"]["code"]["commit"] = "f" * 40
    with pytest.raises(UserError, match="does not hold both"):
        records.check_commits(s, done, checkout)


def test_a_published_config_holds_no_path_of_the_machine_that_ran_it(tmp_path):
    from experiments import publish

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"base": {"train_size": 24}, "grid": {"seed": [1]}}))
    s = grid.Sweep.load(path, results=tmp_path / "r")
    text = json.dumps({"task": "rte", "resolved": {"glue_dir_abs": "/home/me/glue",
                                                   "data_abs": ["/home/me/x.csv"],
                                                   "glue_sha256": "ab"}})
    published = json.loads(publish.published_config(s, text))
    assert published["resolved"] == {"glue_sha256": "ab"}
