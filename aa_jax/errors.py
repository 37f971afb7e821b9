"""The one exception type for a user's mistake.

Anything a user can get wrong (a task name, a path, a file's contents, a flag) is reported
as a :class:`UserError` whose message is one sentence naming the problem and the fix. The
command line prints that sentence and exits with status 2; library callers can catch it.
"""


class UserError(ValueError):
    """A problem with the user's input, stated as one sentence with the fix."""
