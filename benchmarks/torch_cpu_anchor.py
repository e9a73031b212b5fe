"""The PyTorch anchor's network trained on the CPU: a timing worker.

Run by `benchmarks.train_step --cpu` and `benchmarks.step_profile` with a
Python that has torch (`--torch_python`); not meant to be run by hand.

The network is the anchor's own (`../shared/anchors/torch_unet3d.py`: UNet,
dice_ce), built at the benchmarked size: channels-last 3D (oneDNN's fast
layout), float32, AdamW with global-norm clipping at 12 as pvl_jax's
optimizer, deep-supervision weights as pvl_jax's config gives them (a zero
weight skips that output's loss, as in pvl_jax).

Protocol: after warm-up it prints one JSON line {"ready": true, ...}; then
each stdin line "N" runs N steps and prints their wall times (JSON list of
seconds); "profile N" prints milliseconds per aten operator over N steps
(torch.profiler, self CPU time, JSON dict); end of input stops it.
"""

import argparse
import importlib.util
import json
import sys
import time

import torch
import torch.nn.functional as F


def load_anchor(path: str):
  """The anchor script as a module (its UNet and dice_ce)."""
  spec = importlib.util.spec_from_file_location("torch_unet3d", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def make_step(anchor, features: list[int], patch: int, batch: int,
              ds_weights: list[float]):
  """One training step of the anchor's network on fixed random data."""
  torch.manual_seed(0)
  channels_last = torch.channels_last_3d
  model = anchor.UNet(feats=features).to(memory_format=channels_last)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3,
                                weight_decay=1e-4)
  image = torch.randn(batch, 1, patch, patch, patch).to(
      memory_format=channels_last)
  label = (torch.rand(batch, patch, patch, patch) > 0.97).long()
  targets = [label]
  for level in range(1, len(ds_weights)):
    targets.append(F.interpolate(label[:, None].float(),
                                 scale_factor=0.5 ** level,
                                 mode="nearest")[:, 0].long())
  hand_function = torch.randint(0, 2, (batch, 1)).float()

  def step():
    optimizer.zero_grad(set_to_none=True)
    outputs, logit = model(image)
    loss = F.binary_cross_entropy_with_logits(logit, hand_function)
    for weight, output, target in zip(ds_weights, outputs, targets):
      if weight:
        loss = loss + weight * anchor.dice_ce(output, target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
    optimizer.step()

  return step


def op_times_ms(step, steps: int) -> dict[str, float]:
  """Self CPU milliseconds per step of each aten operator."""
  from torch.profiler import ProfilerActivity  # pylint: disable=g-import-not-at-top
  from torch.profiler import profile  # pylint: disable=g-import-not-at-top
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  return {event.key: event.self_cpu_time_total / 1000 / steps
          for event in prof.key_averages()
          if event.self_cpu_time_total > 0}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--anchor", required=True)
  parser.add_argument("--features", required=True)
  parser.add_argument("--patch", type=int, required=True)
  parser.add_argument("--batch", type=int, required=True)
  parser.add_argument("--ds_weights", required=True)
  args = parser.parse_args()
  step = make_step(load_anchor(args.anchor),
                   [int(f) for f in args.features.split(",")], args.patch,
                   args.batch, [float(w) for w in args.ds_weights.split(",")])
  start = time.perf_counter()
  for _ in range(3):
    step()
  print(json.dumps({"ready": True, "warmup_s": time.perf_counter() - start,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__}), flush=True)
  for line in sys.stdin:
    command = line.split()
    if command[0] == "profile":
      print(json.dumps(op_times_ms(step, int(command[1]))), flush=True)
      continue
    times = []
    for _ in range(int(command[0])):
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
  main()
