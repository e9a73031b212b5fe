"""Helpers shared by the config files (big_vision idiom)."""

import ml_collections


def parse_arg(arg: str | None, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
  """Parses a `key=value,key2,...` config argument against a spec of defaults.

  As in big_vision's `configs/common.py`: `get_config("demo,r=0.3")` with
  spec `demo=False, r=1.0` gives {demo: True, r: 0.3}. Values are converted to
  the type of their default; a bare key sets a boolean to True.

  Args:
    arg: the string after the ':' of `--config=configs/x.py:ARG` (may be None).
    lazy: when True, keys absent from `spec` are kept as strings instead of
      raising.
    **spec: allowed keys and their defaults.

  Returns:
    A ConfigDict with every key of `spec`, overridden by `arg`.

  Raises:
    ValueError: on an unknown key (unless lazy) or an unconvertible value.
  """
  result = ml_collections.ConfigDict(spec)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in spec:
      if not lazy:
        raise ValueError(f"config argument '{key}' is unknown; allowed: "
                         f"{sorted(spec)}")
      result[key] = value
      continue
    default = spec[key]
    if isinstance(default, bool):
      result[key] = (not sep) or value.lower() in ("1", "true", "yes")
    else:
      try:
        result[key] = type(default)(value)
      except ValueError as e:
        raise ValueError(f"config argument '{key}={value}': expected "
                         f"{type(default).__name__}") from e
  return result
