"""The one exception type for a user's mistake.

Anything a user can get wrong (a task name, a path, a file's contents, a flag) is reported
as a :class:`UserError` whose message is one sentence naming the problem and the fix. The
command line prints that sentence and exits with status 2; library callers can catch it.
"""


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

