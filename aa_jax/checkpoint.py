"""Run directories: atomic files and orbax checkpoints of what trains.

A checkpoint holds only what training changes (levanter's habit): the trainable params,
the optimizer state, the best epoch's trainable params so far, the learned architecture
as JSON and the loop's bookkeeping as JSON. The frozen backbone is reloaded from its own
checkpoint, so a BERT-large run's checkpoints are a few MB.

Orbax writes each step to a temporary folder and renames it when complete, and every
plain file here is written to a temporary file and moved into place with ``os.replace``,
so a reader (or a killed run) never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp

from aa_jax.errors import UserError, storage_errno, storage_error
from aa_jax.params import segments_of, stack_layers, unstack_layers
from aa_jax.selection import from_v1_switch_layout, is_v1_switch, v1_switch_layout

ITEMS = ("params", "opt_state", "best_params", "architecture", "meta")
# Every temporary file's name carries its writer's host and PID (.<name>.w-<host>-<pid>_
# <random>.tmp), so that cleanup can prove the writer gone before it deletes the file.
_HOST = socket.gethostname().replace(".", "_").replace("-", "_")


def write_folder_whole(out: Path, fill, what: str) -> None:
    """A new folder ``out`` that appears complete or not at all: ``fill(tmp)`` writes into
    a folder of this process's own beside it (another writer to the same folder has its
    own), which is then renamed into place. Where ``out`` appeared meanwhile it is left as
    it is, in one sentence naming ``what`` was being written (e.g. "this export")."""
    import errno
    import shutil

    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
        fill(tmp)
        try:
            tmp.rename(out)  # the folder appears whole or not at all
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR) or \
                    out.exists() or out.is_symlink():
                raise UserError(f"{out} appeared while {what} was being written; it was "
                                f"left as it is: choose a new --out directory.") from None
            raise
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, UserError):
            raise
        error = storage_error(out, e)  # named after the folder, not its temporary sibling
        if error is not None:
            raise error from None
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` so that readers see the old file or the new, never half.

    A full, read-only or forbidden file system is a :class:`~aa_jax.errors.StorageError`
    naming ``path``; the temporary file is removed (or, where even that fails, left to
    :func:`remove_stale_temp_files`)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp",
                                   prefix=f".{path.name}.w-{_HOST}-{os.getpid()}_")
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from others
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            _remove_quietly(Path(tmp))
        error = storage_error(path, e) if isinstance(e, OSError) else None
        if error is not None:
            raise error from None
        raise


def _remove_quietly(path: Path) -> None:
    """Cleanup after a failed write: it must never hide the error that made it necessary."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_stale_temp_files(directory: str | Path) -> None:
    """Deletes the temporary files that a killed :func:`write_text_atomic` of this host
    left in ``directory``: only those whose writer's process is gone (the name carries its
    host and PID), never another live writer's."""
    for tmp in Path(directory).glob(".*.w-*.tmp"):
        if tmp.is_file() and _writer_gone(tmp.name):
            _remove_quietly(tmp)


def _writer_gone(name: str) -> bool:
    """Whether the process that wrote temporary file ``name`` has ended (on this host)."""
    marks = [part for part in name.split(".") if part.startswith("w-")]
    try:
        _, host, pid = marks[-1].split("-", 2)
        pid = int(pid.split("_", 1)[0])
    except (IndexError, ValueError):
        return False
    if host != _HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but is someone else's
        return False
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """Reads a JSON file, or explains in one sentence why it cannot."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; is this an aa_jax run directory?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{path} ({what}) is not valid JSON; delete the run directory and "
                        f"train again.") from None
    except OSError as e:
        raise UserError(f"{path} ({what}) could not be read ({e.strerror or e}); check its "
                        f"permissions.") from None


def is_complete(run_dir: str | Path) -> bool:
    """Whether a run finished: its result.json exists and is a whole JSON result.

    result.json is written last and atomically, so a run that was interrupted, or is
    still running, is never counted as done.
    """
    try:
        result = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(result, dict) and "test" in result


def refuse_links(directory: str | Path) -> None:
    """Refuses, in one sentence, a checkpoint folder that is a symbolic link or holds one
    (an epoch, or an unfinished save): orbax would read through it, and delete what it
    points to when the epoch ages out."""
    directory = Path(directory)
    found = [directory] if directory.is_symlink() else []
    if not found and directory.is_dir():
        found = sorted(p for p in directory.iterdir() if p.is_symlink())
    if found:
        raise UserError(f"{found[0]} is a symbolic link, which aa_jax does not follow in a "
                        f"run's checkpoints; remove it (the run resumes from its other "
                        f"checkpoints or starts again).")


def manager(directory: str | Path, max_to_keep: int = 2,
            read_only: bool = False) -> ocp.CheckpointManager:
    """An orbax CheckpointManager over ``directory`` keeping the last ``max_to_keep`` epochs.

    ``read_only`` (evaluation) never creates the directory or writes anything. A folder
    that is or holds a symbolic link is refused (:func:`refuse_links`).
    """
    refuse_links(directory)
    if read_only:  # (save_interval_steps=0 is what read_only means; said, orbax says nothing)
        options = ocp.CheckpointManagerOptions(create=False, read_only=True,
                                               save_interval_steps=0,
                                               enable_async_checkpointing=False)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
    handlers = {name: (ocp.JsonCheckpointHandler() if name in ("architecture", "meta")
                        else ocp.StandardCheckpointHandler()) for name in ITEMS}
    # Orbax warns that a read-only manager is read-only; that is what was asked for.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if read_only:
        absl_logger.setLevel(logging.ERROR)
    try:
        return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                     item_handlers=handlers)
    finally:
        absl_logger.setLevel(level)


@contextlib.contextmanager
def closing(managers: list[ocp.CheckpointManager]) -> Iterator[None]:
    """Closes ``managers`` however the block ends (an error, Ctrl-C, SIGTERM raised by
    :func:`aa_jax.run_lock.sigterm_raises`), each after its saves have finished, so that no
    orbax thread outlives the run. When the block failed, a failure to close is not
    allowed to hide its error; otherwise the first one is raised, after all are closed."""
    try:
        yield
    except BaseException:
        _close_all(managers)
        raise
    error = _close_all(managers)
    if error is not None:
        raise error


def _close_all(managers: list[ocp.CheckpointManager]) -> Exception | None:
    first = None
    for mgr in managers:
        try:
            mgr.wait_until_finished()
            mgr.close()
        except Exception as e:  # noqa: BLE001 - the others are closed all the same
            first = first or e
    return first


def save(mgr: ocp.CheckpointManager, epoch: int, params, opt_state, best_params,
         architecture: dict, meta: dict) -> None:
    """Saves an epoch; parameter trees (and the optimizer state's) are stored per layer
    (:func:`aa_jax.params.unstack_layers`), whatever layout the model runs in.

    A full, read-only or forbidden disk is a :class:`~aa_jax.errors.StorageError` naming
    the epoch's folder, and orbax's unfinished temporary folder of it is removed."""
    quiet_background_failures()
    threads = set(threading.enumerate())
    try:
        with abandoned_coroutines_ignored():
            mgr.save(epoch, args=ocp.args.Composite(
                params=ocp.args.StandardSave(unstack_layers(params)),
                opt_state=ocp.args.StandardSave(unstack_layers(opt_state)),
                best_params=ocp.args.StandardSave(unstack_layers(best_params)),
                architecture=ocp.args.JsonSave(architecture),
                meta=ocp.args.JsonSave(meta)))
            mgr.wait_until_finished()
    except Exception as e:
        error = storage_error(Path(mgr.directory) / str(epoch), e)
        if error is None:
            raise
        for thread in set(threading.enumerate()) - threads:  # orbax's, still writing
            try:
                thread.join(timeout=30)
            except Exception:  # noqa: BLE001 - orbax's join re-raises the thread's error
                pass
        remove_unfinished_saves(mgr.directory)
        raise error from None


def _is_background_failure(error: BaseException) -> bool:
    """What orbax's threads report after a save or restore failed: the same full, read-only
    or damaged file again, or tensorstore answering an event loop already closed."""
    return (storage_errno(error) is not None
            or (isinstance(error, RuntimeError) and "Event loop is closed" in str(error))
            or isinstance(error, ValueError) and "orbax-checkpoint-tmp" in str(error))


def quiet_background_failures() -> None:
    """When a save or restore fails (and its one sentence is on its way), orbax's threads
    and tensorstore's callbacks keep failing for a while, each with a traceback: those,
    and only those, are silenced where they are printed (from the first save or restore
    on: they begin before the call returns). They reach stderr four ways: an uncaught
    error of a thread (``threading.excepthook``), a callback's error (``sys.excepthook``),
    an error nothing can raise, such as tensorstore's callback into an event loop orbax
    has closed or a coroutine of that loop collected unfinished
    (``sys.unraisablehook``), and the event loop's "Task exception was never retrieved"
    and absl's "raised an exception" (logging)."""
    if getattr(sys.excepthook, "aa_jax_quiet", False):
        return
    previous_sys, previous_thread = sys.excepthook, threading.excepthook
    previous_unraisable = sys.unraisablehook

    def sys_hook(kind, error, tb):
        if threading.current_thread() is threading.main_thread() or \
                not _is_background_failure(error):
            previous_sys(kind, error, tb)

    def thread_hook(args):
        if not _is_background_failure(args.exc_value):
            previous_thread(args)

    def unraisable_hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)  # an unfinished coroutine
        if not (_is_background_failure(unraisable.exc_value)
                or code is not None and "orbax" in code.co_filename):
            previous_unraisable(unraisable)

    class Filter(logging.Filter):
        def filter(self, record):
            if record.exc_info and record.exc_info[1] is not None and \
                    _is_background_failure(record.exc_info[1]):
                return False
            text = record.getMessage()
            return not ("raised an exception" in text or "Event loop is closed" in text)

    sys_hook.aa_jax_quiet = True
    sys.excepthook, threading.excepthook = sys_hook, thread_hook
    sys.unraisablehook = unraisable_hook
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(Filter())


@contextlib.contextmanager
def abandoned_coroutines_ignored() -> Iterator[None]:
    """Around an orbax save or restore: when it fails or is interrupted, orbax leaves
    coroutines it created but never started (e.g. its serializer's ``write_fragment``), and
    Python warns of each when it is collected, often at exit ("coroutine ... was never
    awaited"), after the run's one sentence. From such a failure on, those warnings are
    ignored for the rest of the process, whichever code's coroutine they name (the warning
    carries only its name)."""
    try:
        yield
    except BaseException:
        warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited",
                                category=RuntimeWarning)
        raise


def remove_unfinished_saves(directory: str | Path) -> None:
    """Deletes orbax's temporary folders of saves that never completed (a completed save
    is renamed to its epoch's number). Only for the one process that writes here."""
    refuse_links(directory)
    for tmp in Path(directory).glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """{path: shape} of a tree of arrays or of orbax array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def _check_fits(mgr: ocp.CheckpointManager, epoch: int, expected: dict[str, Any]) -> None:
    """Raises the "does not fit" sentence only when a stored item really has other
    parameters (names or shapes) than this model and method; other problems pass."""
    try:
        metadata = mgr.item_metadata(epoch)
        stored = {name: metadata[name] for name in expected}
    except Exception:  # unreadable metadata: let the restore itself report what is wrong
        return
    if any(tree is None for tree in stored.values()):
        return
    for name, like in expected.items():
        got, want = _shapes(stored[name]), _shapes(like)
        if name == "opt_state":  # orbax stores optax's tuples as its own containers
            got, want = sorted(got.values()), sorted(want.values())
        if got != want:
            raise UserError(f"The checkpoint in {mgr.directory} does not fit this model and "
                            f"method (its {name} hold other parameters); use a new --out "
                            f"directory.")


def _restore_failed(directory, epoch: int, e: Exception, older: int = 0) -> UserError:
    """The sentence for a checkpoint that could not be restored; ``older``: how many older
    epochs could not be restored either (there is then nothing to resume from)."""
    detail = " ".join(str(e).split())[:200]
    fix = ("if it is damaged, delete that epoch's folder to resume from the one before, or "
           "use a new --out directory" if not older else
           f"nor could the {older} older one{'s' if older > 1 else ''} kept there; use a "
           f"new --out directory")
    return UserError(f"The checkpoint of epoch {epoch} in {directory} could not be restored "
                     f"({type(e).__name__}: {detail}); {fix}.")


def restore(mgr: ocp.CheckpointManager, params_like, opt_state_like,
            epoch: int | None = None) -> dict[str, Any]:
    """Restores the given epoch, or the newest intact one, into the structure of the
    ``*_like`` trees.

    Without ``epoch`` the epochs are tried newest first: a damaged one (a truncated or
    garbled file) is skipped with one line on stderr, and once an older one has been
    restored the damaged ones are deleted, so that training saves those epochs again.
    Only when no epoch can be restored is the newest one's failure raised (and nothing
    deleted). A checkpoint of another model or method is refused with one sentence.
    """
    segments = segments_of(params_like)
    params_like, opt_state_like = unstack_layers(params_like), unstack_layers(opt_state_like)
    expected = {"params": params_like, "opt_state": opt_state_like,
                "best_params": params_like}
    args = ocp.args.Composite(params=ocp.args.StandardRestore(params_like),
                              opt_state=ocp.args.StandardRestore(opt_state_like),
                              best_params=ocp.args.StandardRestore(params_like),
                              architecture=ocp.args.JsonRestore(),
                              meta=ocp.args.JsonRestore())
    epochs = [epoch] if epoch is not None else sorted(mgr.all_steps(), reverse=True)
    if not epochs:
        raise UserError(f"{mgr.directory} holds no checkpoint to resume from.")
    damaged: list[tuple[int, Exception]] = []
    out = None
    for candidate in epochs:
        if _v1_switches(mgr, candidate, "params"):
            raise UserError(f"The checkpoint in {mgr.directory} was written by aa_jax 0.3, "
                            f"whose switches lived in their layers; it cannot resume "
                            f"training, but 'aa-jax eval' and 'aa-jax export' read it "
                            f"(converted), or finish the run with aa_jax 0.3.")
        _check_fits(mgr, candidate, expected)
        quiet_background_failures()
        try:
            with abandoned_coroutines_ignored():
                out = mgr.restore(candidate, args=args)
        except Exception as e:
            damaged.append((candidate, e))
            continue
        _drop_damaged(mgr, damaged, candidate)
        break
    if out is None:
        newest, error = damaged[0]
        raise _restore_failed(mgr.directory, newest, error, len(damaged) - 1) from None
    return {k: stack_layers(v, segments) if k in ("params", "opt_state", "best_params")
            else v for k, v in out.items()}


def _drop_damaged(mgr: ocp.CheckpointManager, damaged: list[tuple[int, Exception]],
                  restored: int) -> None:
    """Deletes the damaged epochs newer than ``restored`` (orbax would refuse to save
    those epochs again over them), one line on stderr each."""
    for epoch, e in damaged:
        detail = " ".join(str(e).split())[:200]
        mgr.delete(epoch)
        if jax.process_index() == 0:
            print(f"aa-jax: the checkpoint of epoch {epoch} in {mgr.directory} could not "
                  f"be restored ({type(e).__name__}: {detail}); deleted it and resuming "
                  f"from epoch {restored}.", file=sys.stderr, flush=True)


def restore_params(directory: str | Path, params_like, which: str = "best_params"):
    """Only the trainable params of the latest checkpoint (for evaluation; writes nothing)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory} holds no checkpoint; train first or pass a complete "
                        f"run directory.")
    segments = segments_of(params_like)
    params_like = unstack_layers(params_like)
    mgr = manager(directory, read_only=True)
    try:
        epoch = mgr.latest_step()
        if epoch is None:
            raise UserError(f"{directory} holds no checkpoint; train first or pass a complete "
                            f"run directory.")
        v1 = _v1_switches(mgr, epoch, which)
        target = v1_switch_layout(params_like, v1) if v1 else params_like
        _check_fits(mgr, epoch, {which: target})
        try:
            with abandoned_coroutines_ignored():
                out = mgr.restore(epoch, args=ocp.args.Composite(
                    **{which: ocp.args.StandardRestore(target)},
                    meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise _restore_failed(directory, epoch, e) from None
    finally:
        mgr.close()
    params = from_v1_switch_layout(out[which], params_like) if v1 else out[which]
    return stack_layers(params, segments), out["meta"]


def _v1_switches(mgr, epoch: int, which: str) -> list[tuple[str, ...]]:
    """The per-layer switch logits of a checkpoint written by aa_jax 0.3 (before the
    selection held them all), or [] (a current checkpoint, or unreadable metadata)."""
    try:
        leaves = jax.tree_util.tree_flatten_with_path(mgr.item_metadata(epoch)[which])[0]
    except Exception:
        return []
    paths = [tuple(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]
    return [p for p in paths if is_v1_switch(p)]
