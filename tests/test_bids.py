"""Tests for preprocessing.bids: cohort discovery, participants.tsv checks."""

from pathlib import Path
import shutil

import numpy as np
import pytest

from preprocessing import bids
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from tests import own_data

GOOD_TSV = ("participant_id\tage\thand_function\n"
            "sub-003\t7\t1\n"
            "sub-001\t6\t0\n"
            "sub-002\t9\t1\n")


def _write_volume(path: Path) -> None:
  nifti.save_nifti(np.zeros((4, 4, 4)), np.eye(4), path, np.uint8)


def _make_cohort(root: Path, tsv: str = GOOD_TSV,
                 modalities: tuple[str, ...] = ("FLAIR",),
                 brain_masks: tuple[str, ...] = ("sub-001", "sub-002")
                 ) -> Path:
  """A cohort of 4x4x4 volumes for every participant listed in `tsv`."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "participants.tsv").write_text(tsv, encoding="utf-8")
  ids = [line.split("\t")[0] for line in tsv.splitlines()[1:]]
  for pid in ids:
    for modality in modalities:
      _write_volume(root / pid / "anat" / f"{pid}_{modality}.nii.gz")
    _write_volume(root / "derivatives" / "lesions" / pid / "anat"
                  / f"{pid}_label-lesion_mask.nii.gz")
    if pid in brain_masks:
      _write_volume(root / "derivatives" / "synthetic" / pid / "anat"
                    / f"{pid}_desc-brain_mask.nii.gz")
  return root


def _tsv(tmp_path: Path, content: str | bytes) -> Path:
  path = tmp_path / "participants.tsv"
  if isinstance(content, str):
    content = content.encode("utf-8")
  path.write_bytes(content)
  return path


def _error(function, *args, **kwargs) -> str:
  with pytest.raises(InputError) as info:
    function(*args, **kwargs)
  return str(info.value)


def test_good_cohort_sorted(tmp_path):
  root = _make_cohort(tmp_path / "cohort", modalities=("FLAIR", "T1w"))
  subjects = bids.load_cohort(root, modalities=("FLAIR", "T1w"))
  assert [s.participant_id for s in subjects] == ["sub-001", "sub-002",
                                                  "sub-003"]
  assert [s.hand_function for s in subjects] == [0, 1, 1]
  first = subjects[0]
  assert first.image_paths == {
      "FLAIR": root / "sub-001" / "anat" / "sub-001_FLAIR.nii.gz",
      "T1w": root / "sub-001" / "anat" / "sub-001_T1w.nii.gz"}
  assert first.lesion_mask_path == (
      root / "derivatives" / "lesions" / "sub-001" / "anat"
      / "sub-001_label-lesion_mask.nii.gz")
  assert first.brain_mask_path == (
      root / "derivatives" / "synthetic" / "sub-001" / "anat"
      / "sub-001_desc-brain_mask.nii.gz")
  assert subjects[2].brain_mask_path is None
  for subject in subjects:
    assert all(p.is_file() for p in subject.image_paths.values())
    assert subject.lesion_mask_path.is_file()


def test_brain_mask_in_anat_preferred(tmp_path):
  """Preprocessed datasets keep the brain mask beside the scan."""
  root = _make_cohort(tmp_path / "cohort")
  in_anat = root / "sub-001" / "anat" / "sub-001_desc-brain_mask.nii.gz"
  _write_volume(in_anat)
  _write_volume(root / "sub-003" / "anat" / "sub-003_desc-brain_mask.nii")
  subjects = bids.load_cohort(root)
  assert subjects[0].brain_mask_path == in_anat
  assert subjects[1].brain_mask_path == (
      root / "derivatives" / "synthetic" / "sub-002" / "anat"
      / "sub-002_desc-brain_mask.nii.gz")
  assert subjects[2].brain_mask_path.name == "sub-003_desc-brain_mask.nii"


def test_uncompressed_nii_found(tmp_path):
  root = _make_cohort(tmp_path / "cohort")
  gz = root / "sub-002" / "anat" / "sub-002_FLAIR.nii.gz"
  gz.rename(gz.with_name("sub-002_FLAIR.nii"))
  subjects = bids.load_cohort(root)
  assert subjects[1].image_paths["FLAIR"].name == "sub-002_FLAIR.nii"


def test_both_nii_and_nii_gz_is_ambiguous(tmp_path):
  root = _make_cohort(tmp_path / "cohort")
  _write_volume(root / "sub-002" / "anat" / "sub-002_FLAIR.nii")
  message = _error(bids.load_cohort, root)
  assert message == (f"{root / 'sub-002'}: FLAIR: the session and run rules "
                     "match 2 scans: sub-002_FLAIR.nii, sub-002_FLAIR.nii.gz;"
                     " choose one with data.bids_filter (--bids_filter, e.g. "
                     "acq-<label>), data.session or data.run")


def test_read_participants_file_order(tmp_path):
  labels = bids.read_participants(_tsv(tmp_path, GOOD_TSV))
  assert list(labels.items()) == [("sub-003", 1), ("sub-001", 0),
                                  ("sub-002", 1)]


def test_read_participants_other_label_column_and_bom(tmp_path):
  path = _tsv(tmp_path, "\ufeffoutcome\tparticipant_id\r\n1\tsub-A1\r\n\r\n")
  assert bids.read_participants(path, label_column="outcome") == {"sub-A1": 1}


def test_participants_missing(tmp_path):
  path = tmp_path / "participants.tsv"
  assert _error(bids.read_participants, path) == f"{path}: file not found"


@pytest.mark.parametrize("content, words", [
    ("", ["no participants", "empty"]),
    ("participant_id\thand_function\n", ["no participants", "only a header"]),
    ("subject\thand_function\nsub-01\t1\n",
     ["line 1", "no 'participant_id' column", "'subject', 'hand_function'"]),
    ("participant_id\tgroup\nsub-01\t1\n",
     ["line 1", "no 'hand_function' column", "'participant_id', 'group'"]),
    ("participant_id\thand_function\tsplit\nsub-01\t1\tval\n",
     ["line 2", "split is 'val', must be train or test"]),
    ("participant_id\thand_function\tsite\nsub-01\t1\tA\nsub-02\t0\tn/a\n",
     ["line 3", "missing site value"]),
    ("participant_id hand_function\nsub-01 1\n",
     ["no 'participant_id' column", "tab-separated"]),
    ("participant_id\thand_function\nsub-01\t1\tx\n",
     ["line 2", "3 fields", "header has 2"]),
    ("participant_id\thand_function\nsub-01\t1\nsub-02\t0\nsub-01\t1\n"
     "sub-02\t0\n",
     ["duplicate", "sub-01 (lines 2, 4)", "sub-02 (lines 3, 5)"]),
])
def test_participants_table_defects(tmp_path, content, words):
  path = _tsv(tmp_path, content)
  message = _error(bids.read_participants, path)
  assert message.startswith(f"{path}: ")
  for word in words:
    assert word in message, message


@pytest.mark.parametrize("participant_id", [
    "../x", "sub-01/..", "sub-01/x", "sub-01.x", "sub-", "01", "SUB-01",
    "sub-0 1", "sub-ü1"])
def test_invalid_participant_ids(tmp_path, participant_id):
  path = _tsv(tmp_path, "participant_id\thand_function\n"
                        f"sub-00\t0\n{participant_id}\t1\n")
  message = _error(bids.read_participants, path)
  assert message.startswith(f"{path}: line 3: participant_id ")
  assert repr(participant_id) in message and "not of the form" in message


def test_empty_participant_id(tmp_path):
  path = _tsv(tmp_path, "participant_id\thand_function\n\t1\n")
  message = _error(bids.read_participants, path)
  assert message == (f"{path}: line 2: participant_id '' is not of the form "
                     "sub-<label> (label: letters and digits only)")


@pytest.mark.parametrize("value", ["2", "yes", "nan", "0.5", "1.0", "-1"])
def test_non_binary_labels(tmp_path, value):
  path = _tsv(tmp_path, f"participant_id\thand_function\nsub-01\t{value}\n")
  message = _error(bids.read_participants, path)
  assert message == (f"{path}: line 2: hand_function is {value!r}, must be "
                     "0, 1 or n/a")


@pytest.mark.parametrize("value", ["", "n/a"])
def test_missing_labels_are_unlabelled(tmp_path, value):
  path = _tsv(tmp_path, "participant_id\thand_function\nsub-01\t0\n"
                        f"sub-02\t{value}\n")
  assert bids.read_participants(path) == {"sub-01": 0, "sub-02": None}


def test_latin1_participants(tmp_path):
  content = "participant_id\thand_function\tsite\nsub-01\t1\tKöln\n"
  path = _tsv(tmp_path, content.encode("latin-1"))
  before = path.read_bytes()
  message = _error(bids.read_participants, path)
  assert message.startswith(f"{path}: line 2: not UTF-8")
  assert "0xf6" in message and "re-save the file as UTF-8" in message
  assert path.read_bytes() == before


def test_cohort_dir_missing(tmp_path):
  root = tmp_path / "nowhere"
  message = _error(bids.load_cohort, root)
  assert message == f"{root}: BIDS cohort directory not found"


def test_cohort_participants_defect_propagates(tmp_path):
  root = _make_cohort(tmp_path / "cohort",
                      tsv="participant_id\thand_function\nsub-01\tyes\n")
  message = _error(bids.load_cohort, root)
  assert message.startswith(f"{root / 'participants.tsv'}: line 2")


def test_missing_scan(tmp_path):
  root = _make_cohort(tmp_path / "cohort", modalities=("FLAIR", "T1w"))
  (root / "sub-002" / "anat" / "sub-002_T1w.nii.gz").unlink()
  message = _error(bids.load_cohort, root, modalities=("FLAIR", "T1w"))
  assert message == (f"{root / 'sub-002'}: sub-002 has no T1w scan (file not "
                     "found)")


def test_scan_folder_without_row(tmp_path):
  root = _make_cohort(tmp_path / "cohort")
  _write_volume(root / "sub-004" / "anat" / "sub-004_FLAIR.nii.gz")
  _write_volume(root / "sub-005" / "anat" / "sub-005_FLAIR.nii.gz")
  message = _error(bids.load_cohort, root)
  assert message == (f"{root / 'participants.tsv'}: no row for sub-004, "
                     f"sub-005 (found in {root})")


def test_mask_without_row(tmp_path):
  root = _make_cohort(tmp_path / "cohort")
  lesions = root / "derivatives" / "lesions"
  _write_volume(lesions / "sub-009" / "anat"
                / "sub-009_label-lesion_mask.nii.gz")
  message = _error(bids.load_cohort, root)
  assert message == (f"{root / 'participants.tsv'}: no row for sub-009 "
                     f"(found in {lesions})")


def test_missing_lesion_mask(tmp_path):
  root = _make_cohort(tmp_path / "cohort")
  (root / "derivatives" / "lesions" / "sub-003" / "anat"
   / "sub-003_label-lesion_mask.nii.gz").unlink()
  message = _error(bids.load_cohort, root)
  scan = root / "sub-003" / "anat" / "sub-003_FLAIR.nii.gz"
  assert message == (f"{scan}: sub-003 has no lesion mask for this scan (file"
                     " not found; lesion masks of sub-003: none)")


# A lab's study: sessions, runs, n/a labels, sites (tests/own_data.py).


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  return own_data.write_study(tmp_path_factory.mktemp("study") / "study")


def _copy(study, tmp_path):
  return Path(shutil.copytree(study, tmp_path / "study"))


def _by_id(subjects):
  return {s.participant_id: s for s in subjects}


def test_study_defaults_first_session_last_run(study):
  subjects = _by_id(bids.load_cohort(study, modalities=("FLAIR", "T1w")))
  assert len(subjects) == own_data.NUM_SUBJECTS
  two = subjects["sub-002"]
  assert two.session == "01"
  assert two.image_paths["T1w"] == (study / "sub-002" / "ses-01" / "anat"
                                    / "sub-002_ses-01_T1w.nii.gz")
  assert two.lesion_mask_path.name == "sub-002_ses-01_label-lesion_mask.nii.gz"
  runs = subjects[own_data.TWO_RUNS]
  assert runs.image_paths["FLAIR"].name == "sub-005_ses-01_run-2_FLAIR.nii.gz"
  assert runs.image_paths["T1w"].name == "sub-005_ses-01_run-2_T1w.nii.gz"
  assert runs.lesion_mask_path.name == (
      "sub-005_ses-01_run-2_label-lesion_mask.nii.gz")
  assert [s.hand_function for s in subjects.values()
          if s.participant_id in own_data.UNLABELLED] == [None] * 3
  assert subjects["sub-015"].site == "F" and subjects["sub-015"].split is None
  assert all(s.brain_mask_path is None for s in subjects.values())


def test_study_last_session(study):
  subjects = _by_id(bids.load_cohort(
      study, selection=bids.Selection(session="last")))
  for pid in own_data.TWO_SESSIONS:
    assert subjects[pid].session == "02"
    assert subjects[pid].lesion_mask_path.name == (
        f"{pid}_ses-02_label-lesion_mask.nii.gz")
  assert subjects["sub-001"].session == "01"


def test_session_rule_matching_no_scan(study):
  message = _error(bids.load_cohort, study,
                   selection=bids.Selection(session="02"))
  assert message == (f"{study / 'sub-001'}: FLAIR: session rule (data.session,"
                     " --session) '02' matches no scan (found: 01)")


def test_run_whose_scan_has_no_mask(study):
  message = _error(bids.load_cohort, study, selection=bids.Selection(run="1"))
  scan = (study / "sub-005" / "ses-01" / "anat"
          / "sub-005_ses-01_run-1_FLAIR.nii.gz")
  assert message.startswith(f"{scan}: sub-005 has no lesion mask for this "
                            "scan (file not found; lesion masks of sub-005: "
                            "sub-005_ses-01_run-2_label-lesion_mask.nii.gz)")


def test_run_rule_matching_no_scan(study):
  message = _error(bids.load_cohort, study, selection=bids.Selection(run="3"))
  assert message == (f"{study / 'sub-005'}: FLAIR: run rule (data.run, --run) "
                     "'3' matches no scan (found: 1, 2)")


def test_two_acquisitions_need_a_filter(study, tmp_path):
  root = _copy(study, tmp_path)
  anat = root / "sub-003" / "ses-01" / "anat"
  _write_volume(anat / "sub-003_ses-01_acq-2D_FLAIR.nii.gz")
  message = _error(bids.load_cohort, root)
  assert message == (
      f"{root / 'sub-003'}: FLAIR: the session and run rules match 2 scans: "
      "sub-003_ses-01_FLAIR.nii.gz, sub-003_ses-01_acq-2D_FLAIR.nii.gz; choose"
      " one with data.bids_filter (--bids_filter, e.g. acq-<label>), "
      "data.session or data.run")
  # With an acq-2D scan for everyone, the filter picks those; the masks name
  # no acquisition, so they cover the filtered scans as well.
  for subject in bids.load_cohort(study):
    scan = subject.image_paths["FLAIR"]
    copy = (root / scan.relative_to(study)).with_name(
        scan.name.replace("_FLAIR", "_acq-2D_FLAIR").replace(
            "_run-2_acq-2D", "_acq-2D_run-2"))
    _write_volume(copy)
  chosen = _by_id(bids.load_cohort(
      root, selection=bids.Selection(entities="acq-2D")))
  assert chosen["sub-003"].image_paths["FLAIR"].name == (
      "sub-003_ses-01_acq-2D_FLAIR.nii.gz")
  assert chosen["sub-005"].image_paths["FLAIR"].name == (
      "sub-005_ses-01_acq-2D_run-2_FLAIR.nii.gz")
  assert chosen["sub-003"].lesion_mask_path.name == (
      "sub-003_ses-01_label-lesion_mask.nii.gz")


def test_filter_matching_no_scan(study):
  message = _error(bids.load_cohort, study,
                   selection=bids.Selection(entities="acq-3D"))
  assert message == (f"{study / 'sub-001'}: sub-001 has no FLAIR scan with "
                     "acq-3D (data.bids_filter, --bids_filter) (file not "
                     "found)")


def test_mask_matching_no_scan(study, tmp_path):
  root = _copy(study, tmp_path)
  mask = (root / "derivatives" / "lesions" / "sub-003" / "ses-04" / "anat"
          / "sub-003_ses-04_label-lesion_mask.nii.gz")
  _write_volume(mask)
  message = _error(bids.load_cohort, root)
  assert message == (
      f"{mask}: matches no scan of sub-003 (its entities: session=04; scans: "
      "sub-003_ses-01_FLAIR.nii.gz, sub-003_ses-01_T1w.nii.gz)")


@pytest.mark.parametrize("session, run, entities, words", [
    ("", "last", "", ["session rule", "is empty"]),
    ("first", "second", "", ["run rule 'second'", "first, last or a run"]),
    ("first", "last", "acq3D", ["entity filter 'acq3D'", "<entity>-<value>"]),
    ("first", "last", "ses-01", ["entity filter 'ses-01'", "other than sub"]),
])
def test_malformed_rules(study, session, run, entities, words):
  message = _error(bids.load_cohort, study,
                   selection=bids.Selection(session, run, entities))
  for word in words:
    assert word in message, message


def test_labels_from_a_phenotype_table(study, tmp_path):
  table = tmp_path / "hand.tsv"
  table.write_text("participant_id\tmanual_ability\n"
                   "sub-001\t1\nsub-002\tn/a\n")
  subjects = _by_id(bids.load_cohort(study, label_column="manual_ability",
                                     phenotype=table))
  assert subjects["sub-001"].hand_function == 1
  # Missing from the table, or n/a there: unlabelled.
  assert subjects["sub-002"].hand_function is None
  assert subjects["sub-003"].hand_function is None
  table.write_text("participant_id\tmanual_ability\nsub-099\t1\n")
  message = _error(bids.load_cohort, study, label_column="manual_ability",
                   phenotype=table)
  assert message == (f"{table}: participant(s) sub-099 are not in "
                     f"{study / 'participants.tsv'}")


def test_label_column_optional_only_when_asked(study):
  message = _error(bids.load_cohort, study, label_column="grip")
  assert "no 'grip' column" in message
  subjects = bids.load_cohort(study, label_column="grip",
                              require_label_column=False)
  assert {s.hand_function for s in subjects} == {None}


def _fmriprep_tree(root: Path) -> Path:
  """An fMRIPrep-like derivatives folder beside derivatives/lesions.

  sub-001: a template-space brain mask, a session-less one (fMRIPrep's
  average over sessions) and one of ses-01 on another grid; sub-003: a
  brain mask of ses-01 on its scan's grid (the one usable mask); sub-099:
  a participant the study's table does not list; plus a preprocessed T1w, a
  segmentation and a report figure, as fMRIPrep writes them.
  """
  prep = root / "derivatives" / "fmriprep"
  prep.mkdir(parents=True)
  (prep / "dataset_description.json").write_text(
      '{"Name": "fMRIPrep", "BIDSVersion": "1.9.0", "DatasetType": '
      '"derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}')
  anat = prep / "sub-001" / "anat"
  _write_volume(anat / "sub-001_space-MNI152NLin2009cAsym_desc-brain_mask"
                ".nii.gz")
  _write_volume(anat / "sub-001_desc-brain_mask.nii.gz")
  _write_volume(anat / "sub-001_desc-preproc_T1w.nii.gz")
  _write_volume(anat / "sub-001_dseg.nii.gz")
  _write_volume(prep / "sub-001" / "ses-01" / "anat"
                / "sub-001_ses-01_desc-brain_mask.nii.gz")
  _write_volume(prep / "sub-099" / "anat" / "sub-099_desc-brain_mask.nii.gz")
  (prep / "sub-001" / "figures").mkdir()
  (prep / "sub-001" / "figures" / "sub-001_desc-brain_mask.svg").write_text(
      "<svg/>")
  scan = root / "sub-003" / "ses-01" / "anat" / "sub-003_ses-01_FLAIR.nii.gz"
  data, affine = nifti.load_volume(scan)
  nifti.save_nifti((data > 0).astype(np.uint8), affine,
                   prep / "sub-003" / "ses-01" / "anat"
                   / "sub-003_ses-01_desc-brain_mask.nii.gz", np.uint8)
  return prep


def test_other_pipelines_derivatives_are_left_alone(study, tmp_path, caplog):
  root = _copy(study, tmp_path)
  prep = _fmriprep_tree(root)
  with caplog.at_level("INFO", logger="preprocessing.bids_index"):
    subjects = _by_id(bids.load_cohort(root, modalities=("FLAIR", "T1w")))
  assert len(subjects) == own_data.NUM_SUBJECTS
  assert subjects["sub-001"].brain_mask_path is None
  assert subjects["sub-003"].brain_mask_path == (
      prep / "sub-003" / "ses-01" / "anat"
      / "sub-003_ses-01_desc-brain_mask.nii.gz")
  assert all(s.brain_mask_path is None for pid, s in subjects.items()
             if pid != "sub-003")
  # The preprocessed T1w of another pipeline is not a scan.
  assert subjects["sub-001"].image_paths["T1w"].parent == (
      root / "sub-001" / "ses-01" / "anat")
  lines = [r.getMessage() for r in caplog.records
           if "brain masks left out" in r.getMessage()]
  assert lines == [
      "brain masks left out: 1 in another space (derivatives/fmriprep), "
      "1 on another grid than its scan (derivatives/fmriprep), "
      "1 session-less in a sessioned dataset (derivatives/fmriprep)"]


def test_lesion_mask_of_no_scan_still_stops(study, tmp_path):
  """Only the lesion masks, the study's own, must each cover a scan."""
  root = _copy(study, tmp_path)
  _fmriprep_tree(root)
  mask = (root / "derivatives" / "lesions" / "sub-001" / "anat"
          / "sub-001_space-MNI152NLin2009cAsym_label-lesion_mask.nii.gz")
  _write_volume(mask)
  assert _error(bids.load_cohort, root).startswith(
      f"{mask}: matches no scan of sub-001")


def test_select_scans_needs_no_table_or_masks(study, tmp_path):
  root = _copy(study, tmp_path)
  (root / "participants.tsv").unlink()
  shutil.rmtree(root / "derivatives")
  chosen = bids.select_scans(root, selection=bids.Selection(session="last"))
  assert [c.participant_id for c in chosen] == [
      f"sub-{i:03d}" for i in range(1, own_data.NUM_SUBJECTS + 1)]
  by_id = {c.participant_id: c for c in chosen}
  assert by_id["sub-002"].session == "02"
  assert by_id["sub-002"].image_paths["FLAIR"].name == (
      "sub-002_ses-02_FLAIR.nii.gz")
  assert by_id[own_data.TWO_RUNS].image_paths["FLAIR"].name == (
      "sub-005_ses-01_run-2_FLAIR.nii.gz")
  assert _error(bids.select_scans, root,
                selection=bids.Selection(entities="acq-3D")) == (
      f"{root}: no FLAIR scan in the BIDS folder with acq-3D (--bids_filter)"
      " (looked for sub-*/[ses-*/]anat/sub-*_FLAIR.nii[.gz])")
