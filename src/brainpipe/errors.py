"""The one exception type for problems a user can fix (bad input, bad config, bad paths).

The CLI prints its message as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class BrainpipeError(Exception):
    """A user-facing problem. The message names the file or key, the bad value and the fix."""


def reason_kind(reason: str) -> str:
    """The kind of a one-line failure reason, for grouping in summaries.

    Reasons are written "<kind>: <detail>" or "<kind> (<detail>)"; the kind is what comes first.
    """
    for sep in (" (", ":"):
        if sep in reason:
            reason = reason.split(sep, 1)[0]
    return reason.strip()
