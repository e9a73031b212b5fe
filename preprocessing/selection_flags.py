"""The command-line flags of a cohort's scan choice (`bids.Selection`).

Shared by the CLIs that read a BIDS cohort (`preprocessing.run`,
`pvl_jax.handfunction.run`), so that they name and explain the choice alike.
Importing this module defines the flags.
"""

from absl import flags

from preprocessing import bids

SESSION = flags.DEFINE_string(
    "session", bids.Selection.session, "Which session of a participant is "
    "used: first, last or a session label.")
RUN = flags.DEFINE_string(
    "run", bids.Selection.run, "Which run is used: first, last or a run "
    "number.")
BIDS_FILTER = flags.DEFINE_string(
    "bids_filter", bids.Selection.entities, "Only scans with these entities, "
    "e.g. acq-3D or acq-3D,rec-norm.")


def given() -> dict[str, str]:
  """The flags set on the command line: flag name (= field name) -> value."""
  return {holder.name: holder.value for holder in (SESSION, RUN, BIDS_FILTER)
          if holder.present}
