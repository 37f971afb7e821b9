"""The one exception type for a user's mistake.

Anything a user can get wrong (a task name, a path, a file's contents, a flag) is reported
as a :class:`UserError` whose message is one sentence naming the problem and the fix. The
command line prints that sentence and exits with status 2; library callers can catch it.
"""

import errno
import os


class UserError(ValueError):
    """A problem with the user's input, stated as one sentence with the fix."""


def check_record(data, schema: str, fields, what: str) -> dict:
    """The checks every saved JSON record shares: an object, of ``schema``, known fields.

    Returns a copy of ``data`` without its ``schema`` key (a missing one is taken as
    ``schema``). ``what`` names the record in messages, e.g. "architecture".
    """
    if not isinstance(data, dict):
        raise UserError(f"A {what} must be a JSON object; write it with aa_jax (to_dict) or "
                        f"rerun the command that made it.")
    data = dict(data)
    found = data.pop("schema", schema)
    if found != schema:
        raise UserError(f"Unsupported {what} schema {found!r}; expected {schema!r}.")
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise UserError(f"Unknown {what} field(s) {', '.join(map(repr, unknown))}; allowed: "
                        f"{', '.join(fields)}.")
    return data



class StorageError(UserError):
    """A write the file system refused: a full disk or quota, a read-only or a forbidden
    folder (``errno`` says which). Nothing else a run does can succeed there, so a sweep
    stops on it."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


# errno -> (what happened, the fix); the fix ends the sentence.
_STORAGE = {
    errno.ENOSPC: ("the disk is full", "free some space there (or write somewhere else) and "
                   "run the same command again"),
    errno.EDQUOT: ("the disk quota is used up", "free some space within it (or write "
                   "somewhere else) and run the same command again"),
    errno.EROFS: ("its file system is read-only", "write to a folder on a writable disk "
                  "instead"),
    errno.EACCES: ("permission denied", "make its folder writable or write somewhere else"),
    errno.EPERM: ("permission denied", "make its folder writable or write somewhere else"),
    errno.EFBIG: ("a file would grow past the size this process may write", "raise the "
                  "file size limit (ulimit -f) or write somewhere else and run the same "
                  "command again"),
}
# How the libraries that write for us (orbax through tensorstore) report the same causes.
_STATUS = {"RESOURCE_EXHAUSTED": errno.ENOSPC, "PERMISSION_DENIED": errno.EACCES}


def storage_errno(error: BaseException) -> int | None:
    """The errno of a full, read-only or forbidden file system behind ``error`` (an
    ``OSError`` or a library's wrapper of one, through its causes), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (OSError, StorageError)) and error.errno in _STORAGE:
            return error.errno
        text = str(error)
        for code in _STORAGE:
            if os.strerror(code) in text:
                return code
        for status, code in _STATUS.items():
            if status in text:
                return code
        error = error.__cause__ or error.__context__
    return None


def storage_error(path, error: BaseException) -> StorageError | None:
    """The one sentence for ``error`` raised while writing ``path``, or None when the file
    system is not full, read-only or forbidden (the error is then someone else's)."""
    code = storage_errno(error)
    if code is None:
        return None
    what, fix = _STORAGE[code]
    return StorageError(f"Cannot write {path}: {what}; {fix}.", code)


def check_writable(folder, what: str) -> None:
    """Refuses up front a ``folder`` (created if missing) that cannot take a file, so that
    no work is done whose result could not be kept. ``what`` names it, e.g. "--out"."""
    import tempfile
    from pathlib import Path

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".aa_jax-write-check-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        error = storage_error(folder, e)
        if error is None:
            raise UserError(f"{what} {folder} cannot take files ({e.strerror or e}); "
                            f"choose another folder.") from None
        reason, fix = _STORAGE[error.errno]
        raise StorageError(f"{what} {folder} is not writable ({reason}); {fix}.",
                           error.errno) from None
