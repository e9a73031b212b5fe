"""The error type for bad user input (files, tables, configs)."""


class InputError(ValueError):
  """Raised when user-supplied input is unusable.

  The message always names the offending file (or config key) and the
  problem, so that a command-line entry point can print it and exit non-zero
  without a traceback.
  """
