"""User-facing errors: one clear sentence saying what is wrong and what to do.

The command-line mains catch `UserError` and print its message instead of a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """A problem with the user's config, flags, data or checkpoint (not a bug)."""


class DatasetError(UserError):
  """A dataset cannot be used as configured (missing, unprepared, wrong features or a
  malformed example); the message says what to do."""
