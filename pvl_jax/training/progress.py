"""Training progress on the console: one bar (terminal) or one line per log.

In a terminal a tqdm bar counts the steps and shows the loss, steps/s and
ETA; in a log file (Slurm, a sweep's log.txt) a line every `log_every` steps
says the same. Validation results are one line each either way.
"""

import logging

import tqdm

from preprocessing.io import console

log = logging.getLogger(__name__)


def _minutes(seconds: float) -> str:
  if seconds != seconds or seconds == float("inf"):  # NaN or no rate yet
    return "?"
  return f"{seconds / 60:.1f} min"


class TrainingProgress:
  """Step counter with loss, rate and ETA (context manager)."""

  def __init__(self, start_step: int, num_steps: int, show_cls: bool):
    """Starts the bar (in a terminal).

    Args:
      start_step: steps already done (a resumed run).
      num_steps: the run's last step.
      show_cls: also show the classification loss (r > 0).
    """
    self._num_steps = num_steps
    self._show_cls = show_cls
    self._bar = (tqdm.tqdm(total=num_steps, initial=start_step, unit="step",
                           desc="training", dynamic_ncols=True)
                 if console.is_interactive() else None)

  def __enter__(self) -> "TrainingProgress":
    return self

  def __exit__(self, *exc) -> None:
    if self._bar is not None:
      self._bar.close()

  def step(self) -> None:
    """One training step done."""
    if self._bar is not None:
      self._bar.update()

  def train_summary(self, step: int, summary: dict[str, float]) -> None:
    """The averages of the last `log_every` steps (keys `train/...`)."""
    loss = summary["train/loss"]
    rate = summary["train/steps_per_s"]
    parts = f"loss {loss:.4f} (seg {summary['train/seg_loss']:.4f}"
    if self._show_cls:
      parts += f", cls {summary['train/cls_loss']:.4f}"
    parts += ")"
    if "train/data_wait" in summary:
      parts += f", data wait {100 * summary['train/data_wait']:.0f}%"
    if self._bar is not None:
      self._bar.set_postfix_str(parts, refresh=False)
      return
    eta = (self._num_steps - step) / rate if rate > 0 else float("nan")
    log.info("step %d/%d  %s  %.2f steps/s  ETA %s", step, self._num_steps,
             parts, rate, _minutes(eta))

  def validation(self, step: int, summary: dict[str, float]) -> None:
    """One line with the validation patches' loss and Dice (keys `val/...`)."""
    log.info("step %d validation: loss %.4f, patch Dice %.4f", step,
             summary["val/loss"], summary["val/patch_dice"])
