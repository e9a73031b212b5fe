r"""The CPU training step, pvl_jax beside PyTorch: time per step and per part.

Usage (from the repository root, on the CPU machine):
  python -m benchmarks.train_step --cpu --patch=32 --features=8,16,32 \
      --dtype=float32 [--batch=2] [--steps=10] [--rounds=5] \
      [--profile_steps=5] [--torch_python=PYTHON_WITH_TORCH]

Two persistent worker processes, each compiled and warmed up once: pvl_jax's
jitted joint training step (`train_step.compiled_train_step`, the recipe
resized by the size flags) and the PyTorch anchor's network of the same
shape (`benchmarks/torch_cpu_anchor.py`: channels-last, float32, AdamW,
oneDNN). They run `--steps` steps in turn, `--rounds` times, so that load on
the machine falls on both alike (the idle one waits on its input); the table
gives each one's median ms per step and pvl_jax's speed relative to PyTorch.

Then one profile of each: pvl_jax's steps traced with jax.profiler (one
event per executed XLA thunk), each thunk put in a part from the compiled
HLO (its operations' source names, convolution shapes); PyTorch's with
torch.profiler (self CPU time per aten operator). Parts: convolutions
(forward; input and kernel gradients, which torch reports together),
normalisation + activation, upsampling, copies and sums around
convolutions (pads, slices, concatenations, layout changes, tap sums),
heads and losses, optimizer. The thunk times add up to more than the wall
time when XLA runs independent thunks at once on the two cores.
"""

from collections import Counter
from collections.abc import Callable
from collections.abc import Sequence
import gzip
import json
from pathlib import Path
import re
import subprocess
import sys
import tempfile

import jax
import numpy as np


ANCHOR_WORKER = Path(__file__).with_name("torch_cpu_anchor.py")
PARTS = ("convolution forward", "convolution input gradient",
         "convolution kernel gradient", "convolution backward (both)",
         "normalisation + activation, forward",
         "normalisation + activation, backward", "upsampling",
         "copies and sums around convolutions", "heads and losses",
         "optimizer", "other")
# Primitives that only move or add data (pvl_jax's copies and tap sums).
_MOVES = {"pad", "slice", "concatenate", "transpose", "copy", "reshape",
          "broadcast_in_dim", "squeeze", "expand_dims", "add", "add_any",
          "dynamic_slice", "select_n", "convert_element_type"}


def _computations(hlo: str) -> dict[str, list[str]]:
  """HLO computation name ("ENTRY" for the entry) -> its instruction lines."""
  computations, current = {}, None
  for line in hlo.splitlines():
    header = re.match(r"^(ENTRY )?%(\S+) .*\{$", line)
    if header:
      current = "ENTRY" if header.group(1) else header.group(2)
      computations[current] = []
    elif current and line.strip().startswith(("%", "ROOT %")):
      computations[current].append(line)
  return computations


def _instruction_ops(line: str, computations: dict[str, list[str]]
                     ) -> list[str]:
  """An instruction's lines, with those of every computation it calls."""
  lines = [line]
  for called in re.findall(r"calls=%([\w.\-]+)", line):
    for inner in computations.get(called, []):
      lines += _instruction_ops(inner, computations)
  return lines


def _convolution_part(line: str, op_name: str) -> str:
  """forward / input gradient / kernel gradient of one convolution line."""
  window = re.search(r"window=\{size=([\dx]+)", line)
  # A kernel gradient convolves the activation with the cotangent: its
  # window is a whole slice (XLA's transpose carries no source name).
  size = [int(s) for s in window.group(1).split("x")] if window else [1]
  if not op_name or min(size) > 3:
    return "convolution kernel gradient"
  if "transpose(" in op_name:
    return "convolution input gradient"
  return "convolution forward"


def jax_part(lines: Sequence[str]) -> str:
  """The part of the step one executed thunk (its HLO lines) belongs to."""
  op_names = [m for line in lines for m in re.findall(r'op_name="([^"]+)"',
                                                       line)]
  text = " ".join(op_names)
  convolutions = [line for line in lines if " convolution(" in line]
  if convolutions:
    names = re.findall(r'op_name="([^"]+)"', convolutions[0])
    if "Upsample" in text:
      return "upsampling"
    if "seg_head" in text or "cls_head" in text:
      return "heads and losses"
    return _convolution_part(convolutions[0], names[0] if names else "")
  if not op_names:
    return "other"
  backward = "transpose(" in text
  if not any("jvp(" in name for name in op_names):
    return "optimizer"  # outside value_and_grad
  if "InstanceNorm" in text or "leaky_relu" in text:
    return ("normalisation + activation, "
            + ("backward" if backward else "forward"))
  if "Upsample" in text:
    return "upsampling"
  if "head" in text or "UNet" not in text:
    return "heads and losses"
  primitives = {name.rsplit("/", 1)[-1] for name in op_names}
  if primitives <= _MOVES or "Conv_0" in text:
    return "copies and sums around convolutions"
  return "other"


def jax_parts_ms(hlo: str, trace_dir: Path, steps: int) -> dict[str, float]:
  """Milliseconds per step of each part, from a jax.profiler trace."""
  computations = _computations(hlo)
  part_of = {}
  for line in computations["ENTRY"]:
    name = re.match(r"\s*(?:ROOT )?%(\S+) =", line)
    if name:
      part_of[name.group(1)] = jax_part(_instruction_ops(line, computations))
  trace = next(trace_dir.rglob("*.trace.json.gz"))
  events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
  parts = Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in part_of:
      parts[part_of[event["name"]]] += event["dur"] / 1000 / steps
  return dict(parts)


def torch_parts_ms(op_ms: dict[str, float]) -> dict[str, float]:
  """Milliseconds per step of each part, from torch's per-operator times."""
  parts = Counter()
  for op, ms in op_ms.items():
    name = op.removeprefix("aten::")
    if "convolution_backward" in name:
      part = "convolution backward (both)"
    elif "convolution" in name:
      part = "convolution forward"
    elif ("batch_norm" in name or "instance_norm" in name
          or "leaky_relu" in name):
      part = ("normalisation + activation, "
              + ("backward" if "backward" in name else "forward"))
    elif name in ("copy_", "cat", "clone", "fill_", "zero_", "contiguous",
                  "empty", "empty_strided", "as_strided", "view",
                  "reshape", "slice", "select"):
      part = "copies and sums around convolutions"
    elif (op.startswith("Optimizer") or "_foreach" in name
          or name in ("linalg_vector_norm", "addcdiv_", "addcmul_", "lerp_",
                      "sqrt", "add_", "mul_", "div_", "clamp_",
                      "_fused_adamw_")):
      part = "optimizer"
    elif any(key in name for key in ("softmax", "nll_loss", "cross_entropy",
                                     "sigmoid", "binary", "mean", "sum",
                                     "mul", "div", "add", "sub", "eq",
                                     "linear", "addmm", "mm")):
      part = "heads and losses"
    else:
      part = "other"
    parts[part] += ms
  return dict(parts)


def serve(variant: dict, run_steps: Callable[[dict, int], list[float]]
          ) -> None:
  """The pvl_jax worker: steps on request, or a profile of them.

  Args:
    variant: `train_step.compiled_train_step`'s compiled step, state, batch.
    run_steps: `train_step.run_steps`.
  """
  run_steps(variant, 3)
  print(json.dumps({"ready": True, "compile_s": variant["compile_s"]}),
        flush=True)
  for line in sys.stdin:
    command = line.split()
    if command[0] != "profile":
      print(json.dumps(run_steps(variant, int(command[0]))), flush=True)
      continue
    steps = int(command[1])
    with tempfile.TemporaryDirectory() as trace_dir:
      jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
      run_steps(variant, steps)
      jax.profiler.stop_trace()
      parts = jax_parts_ms(variant["step"].as_text(), Path(trace_dir), steps)
    print(json.dumps(parts), flush=True)


class Worker:
  """A timing worker process driven line by line (see serve_jax)."""

  def __init__(self, name: str, argv: Sequence[str]):
    self.name = name
    # The workers' logs are kept out of the tables, shown if one fails.
    self.log = tempfile.TemporaryFile("w+")
    self.process = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=self.log,
                                    text=True)
    self.ready = self._reply()

  def _reply(self):
    for line in self.process.stdout:
      if line.startswith(("{", "[")):
        return json.loads(line)
    self.log.seek(0)
    raise RuntimeError(f"{self.name} worker stopped (exit "
                       f"{self.process.wait()}): {self.log.read()[-500:]}")

  def ask(self, command: str):
    self.process.stdin.write(command + "\n")
    self.process.stdin.flush()
    return self._reply()

  def close(self) -> None:
    self.process.stdin.close()
    self.process.wait()
    self.log.close()


def compare(jax_argv: Sequence[str], torch_argv: Sequence[str],
            title: str, rounds: int, steps: int, profile_steps: int) -> None:
  """Starts both workers, alternates them, prints the two tables.

  Args:
    jax_argv: command of the pvl_jax worker (`serve`).
    torch_argv: command of the PyTorch worker (torch_cpu_anchor.py).
    title: the step's size, for the tables' heading.
    rounds, steps: alternating rounds of `steps` steps each.
    profile_steps: steps in each profile.
  """
  workers = [Worker("pvl_jax", jax_argv)]
  try:
    workers.append(Worker("PyTorch", torch_argv))
  except (RuntimeError, OSError) as e:
    print(f"PyTorch anchor skipped: {e}")
  times = {w.name: [] for w in workers}
  for _ in range(rounds):
    for w in workers:
      times[w.name] += w.ask(str(steps))
  parts = {w.name: w.ask(f"profile {profile_steps}") for w in workers}
  if "PyTorch" in parts:
    parts["PyTorch"] = torch_parts_ms(parts["PyTorch"])
  for w in workers:
    w.close()

  median_ms = {name: 1000 * float(np.median(t)) for name, t in times.items()}
  print(f"train step on the CPU: {title}; {rounds} alternating rounds of "
        f"{steps} steps")
  print("| implementation | ms/step (median) | ms/step (min) | "
        "speed vs PyTorch |")
  print("| --- | --- | --- | --- |")
  reference = median_ms.get("PyTorch")
  for name, t in times.items():
    ratio = f"{reference / median_ms[name]:.2f}x" if reference else "n/a"
    print(f"| {name} | {median_ms[name]:.1f} | {1000 * min(t):.1f} | "
          f"{ratio} |")
  print(f"\nms per step and part ({profile_steps} profiled steps; "
        "thunks running at once both count)")
  names = list(parts)
  print("| part | " + " | ".join(names) + " |")
  print("| --- |" + " --- |" * len(names))
  for part in PARTS:
    if any(part in p for p in parts.values()):
      print(f"| {part} | " + " | ".join(
          f"{parts[n][part]:.1f}" if part in parts[n] else "-"
          for n in names) + " |")
  print("| sum of parts | " + " | ".join(
      f"{sum(parts[n].values()):.1f}" for n in names) + " |")
