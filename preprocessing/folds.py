"""Assigning participants to cross-validation folds (and a held-out test set).

Three rules:

* by default, folds stratified by label (`stratified_folds`: a fixed
  permutation of the sorted ids dealt round-robin per class); with a `site`
  column each class is dealt site by site, so that every site's
  participants are spread across the folds as evenly as its size allows (a
  two-centre study trains with 5 folds as any other);
* asked for (`data.group_column = "site"`): folds stratified by label and
  grouped by site, so that no site's participants are in two folds
  (scikit-learn's `StratifiedGroupKFold` with a fixed seed); a cohort with
  fewer sites than folds is then an error;
* a `split` column: its `test` participants are a predefined test set, kept
  out of every fold; the others are dealt into folds by one of the rules
  above.

Unlabelled participants are stratified as a class of their own. Folds never
depend on the order of the rows.
"""

from collections.abc import Sequence
import dataclasses
import os
import warnings

import numpy as np
from sklearn import model_selection

from preprocessing import bids
from preprocessing import participants
from preprocessing.io.errors import InputError

# Seed of the permutation that assigns subjects to folds; fixed so that the
# split of a cohort never changes between builds.
FOLD_SEED = 20261124
TEST = "test"
# The values of data.group_column: "" (no grouping) or the site column.
GROUP_COLUMNS = ("", participants.SITE_COLUMN)
# The label a participant without one is stratified as.
_UNLABELLED = -1


@dataclasses.dataclass(frozen=True)
class Assignment:
  """Where each participant goes.

  Attributes:
    folds: participant id -> fold index, or `TEST` (predefined test set).
    rule: how the folds were made, for splits.json and results.json, e.g.
      "stratified by hand_function, grouped by site (StratifiedGroupKFold)".
  """
  folds: dict[str, int | str]
  rule: str


def stratified_folds(subject_ids: list[str], labels: list[int],
                     num_folds: int,
                     sites: list[str | None] | None = None) -> list[int]:
  """Stratified, deterministic fold index per subject.

  Within each class, subjects (sorted by id, then permuted with a fixed seed)
  are dealt round-robin to folds, so each fold gets a near-equal share of
  every class, and the class dealing continues where the previous class
  stopped so fold sizes differ by at most one. With sites, a class is dealt
  one site after another (the permutation's order kept within a site), so
  each site is spread over the folds too; without, the folds are those of
  earlier versions.

  Args:
    subject_ids: unique ids.
    labels: class per subject.
    num_folds: number of folds (>= 2).
    sites: site per subject (None: no site), to balance the folds across.

  Returns:
    Fold index per subject, aligned with `subject_ids`.
  """
  if num_folds < 2:
    raise ValueError(f"num_folds must be >= 2, got {num_folds}")
  if len(subject_ids) < num_folds:
    raise ValueError(f"{len(subject_ids)} subjects cannot fill {num_folds} "
                     "folds")
  rng = np.random.default_rng(FOLD_SEED)
  folds = [0] * len(subject_ids)
  next_fold = 0
  for label in sorted(set(labels)):
    members = sorted((i for i, l in enumerate(labels) if l == label),
                     key=lambda i: subject_ids[i])
    dealt = list(rng.permutation(members))
    if sites is not None:  # a stable sort: the permutation holds per site
      dealt.sort(key=lambda i: sites[i] or "")
    for i in dealt:
      folds[i] = next_fold
      next_fold = (next_fold + 1) % num_folds
  return folds


def site_folds(subject_ids: list[str], labels: list[int], sites: list[str],
               num_folds: int) -> list[int]:
  """Folds stratified by label and grouped by site (StratifiedGroupKFold).

  Args:
    subject_ids: unique ids.
    labels: class per subject.
    sites: site per subject.
    num_folds: number of folds; at most the number of sites.

  Returns:
    Fold index per subject, aligned with `subject_ids`.
  """
  order = sorted(range(len(subject_ids)), key=lambda i: subject_ids[i])
  splitter = model_selection.StratifiedGroupKFold(
      n_splits=num_folds, shuffle=True, random_state=FOLD_SEED)
  folds = [0] * len(subject_ids)
  with warnings.catch_warnings():
    # A class smaller than the number of folds cannot be in every fold; the
    # splitter warns so, which on small cohorts (or few unlabelled subjects)
    # is expected.
    warnings.filterwarnings("ignore", "The least populated class",
                            UserWarning)
    for fold, (_, members) in enumerate(splitter.split(
        np.zeros(len(order)), [labels[i] for i in order],
        [sites[i] for i in order])):
      for position in members:
        folds[order[position]] = fold
  return folds


def assign(rows: Sequence[bids.Subject], num_folds: int, label_column: str,
           tsv: str | os.PathLike, group_column: str = "") -> Assignment:
  """Folds (and the predefined test set) of a cohort's participants.

  Args:
    rows: the participants (`bids.load_cohort`).
    num_folds: folds the non-test participants are dealt into.
    label_column: the label's name, for the rule's wording.
    tsv: participants.tsv, named in errors.
    group_column: "site": folds grouped by site; "": not grouped (see the
      module docstring).

  Returns:
    The assignment and its rule.

  Raises:
    InputError: an unknown `group_column`; naming `tsv`: a predefined test
      set with no participant left to train on, no site column or fewer
      sites than folds when grouping by site, fewer participants than
      folds, or an empty fold.
  """
  if group_column not in GROUP_COLUMNS:
    raise InputError(f"data.group_column: {group_column!r} is not "
                     f"{' or '.join(map(repr, GROUP_COLUMNS))}")
  has_split = any(r.split is not None for r in rows)
  has_site = any(r.site is not None for r in rows)
  if group_column and not has_site:
    raise InputError(f"{tsv}: no {participants.SITE_COLUMN} column to group "
                     "the folds by (data.group_column = "
                     f"{group_column!r}); set data.group_column to \"\" or "
                     "add the column")
  test = [r for r in rows if r.split == TEST]
  pool = [r for r in rows if r.split != TEST]
  if has_split and not test:
    raise InputError(f"{tsv}: the {participants.SPLIT_COLUMN} column marks "
                     "no participant as test")
  if not pool:
    raise InputError(f"{tsv}: the {participants.SPLIT_COLUMN} column puts "
                     f"all {len(test)} participants in the test set; none is"
                     " left to train on")
  ids = [r.participant_id for r in pool]
  labels = [_UNLABELLED if r.hand_function is None else r.hand_function
            for r in pool]
  where = "the participants outside the predefined test set" if has_split \
      else "the participants"
  if group_column:
    sites = sorted({r.site for r in pool})
    if len(sites) < num_folds:
      raise InputError(
          f"{tsv}: {len(sites)} sites ({', '.join(sites)}) among {where} "
          f"cannot fill {num_folds} site-grouped folds; set data.num_folds "
          f"to at most {len(sites)} or merge sites in the "
          f"{participants.SITE_COLUMN} column")
    fold_of = site_folds(ids, labels, [r.site for r in pool], num_folds)
    rule = (f"stratified by {label_column}, grouped by site "
            "(StratifiedGroupKFold, data.group_column = 'site')")
  else:
    if len(ids) < num_folds:
      raise InputError(f"{tsv}: {len(ids)} of {where} cannot fill "
                       f"{num_folds} folds; set data.num_folds lower")
    fold_of = stratified_folds(ids, labels, num_folds,
                               [r.site for r in pool] if has_site else None)
    rule = f"stratified by {label_column}" + (
        ", balanced across sites (not grouped: data.group_column = '')"
        if has_site else "")
  empty = sorted(set(range(num_folds)) - set(fold_of))
  if empty:
    raise InputError(f"{tsv}: fold(s) {', '.join(map(str, empty))} of "
                     f"{num_folds} got no participant; set data.num_folds "
                     "lower")
  folds: dict[str, int | str] = dict(zip(ids, fold_of))
  folds.update((r.participant_id, TEST) for r in test)
  if has_split:
    rule = (f"predefined test set ({participants.SPLIT_COLUMN} column, "
            f"{len(test)} participants); the others in {num_folds} folds "
            + rule)
  else:
    rule = f"{num_folds} folds " + rule
  return Assignment(folds=folds, rule=rule)
