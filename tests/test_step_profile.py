"""benchmarks.step_profile: the CPU step's time by part, for both frameworks."""

from pathlib import Path

from absl.testing import flagsaver
import jax
import pytest

from benchmarks import step_profile
from benchmarks import train_step


@pytest.fixture(name="tiny_step")
def fixture_tiny_step():
  # Set, not parsed: other test modules' required flags stay untouched.
  with flagsaver.flagsaver(patch=8, features=["4", "8"], batch=2,
                           dtype="float32"):
    model, config = train_step.model_and_config()
    yield train_step.compiled_train_step(model, config)


def test_jax_profile_puts_the_step_in_its_parts(tiny_step, tmp_path: Path):
  train_step.run_steps(tiny_step, 1)
  jax.profiler.start_trace(str(tmp_path), create_perfetto_trace=True)
  train_step.run_steps(tiny_step, 2)
  jax.profiler.stop_trace()
  parts = step_profile.jax_parts_ms(tiny_step["step"].as_text(), tmp_path, 2)
  assert set(parts) <= set(step_profile.PARTS)
  # Every convolution role and the norm of a U-Net step is found.
  for part in ("convolution forward", "convolution input gradient",
               "convolution kernel gradient",
               "normalisation + activation, forward",
               "normalisation + activation, backward", "optimizer"):
    assert parts.get(part, 0) > 0, (part, parts)


def test_torch_operators_map_to_the_same_parts():
  parts = step_profile.torch_parts_ms({
      "aten::mkldnn_convolution": 10.0, "aten::convolution_backward": 30.0,
      "aten::native_batch_norm": 2.0, "aten::leaky_relu_backward": 1.0,
      "aten::cat": 0.5, "aten::copy_": 0.5, "Optimizer.step#AdamW.step": 3.0,
      "aten::addcdiv_": 1.0, "aten::_log_softmax": 0.25,
      "aten::something_new": 0.125})
  assert parts == {
      "convolution forward": 10.0, "convolution backward (both)": 30.0,
      "normalisation + activation, forward": 2.0,
      "normalisation + activation, backward": 1.0,
      "copies and sums around convolutions": 1.0, "optimizer": 4.0,
      "heads and losses": 0.25, "other": 0.125}
