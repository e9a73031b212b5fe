"""Hostile inputs through the real entry points: a clear error and nothing else.

Each case breaks one thing -- a NIfTI file or participants.tsv in a copy of
the tiny cohort, a config value, or an already built TFDS cache -- and runs
what a user runs: `train.prepare_run` in-process (everything `pvl_jax.main`
does before training; a subprocess costs ~10 s of imports per case) and, for
a subset, the `pvl_jax.main` CLI in a subprocess. Every case must end in an
`InputError` (CLI: one `error: ...` line on stderr, exit status 2, no
traceback) whose message names the file or config key and the problem, leave
no partial output (no results.json, checkpoints or logs; for a broken cohort
no finished TFDS build and no `incomplete.*` directory) and leave every file
of the raw cohort byte-for-byte unchanged.

The loaders' own unit tests (test_nifti.py, test_bids.py) cover more
variants of each defect at the function level; this corpus checks that the
errors survive the whole path to the user.
"""

import dataclasses
import gzip
import hashlib
import io
from pathlib import Path
import shutil
import subprocess
import sys
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from preprocessing.io.errors import InputError
from pvl_jax.training import train
from tests.conftest import TINY_AFFINE, TINY_SHAPE
from tests.test_train import tiny_config

SUBJECT = "sub-003"
FLAIR = Path(SUBJECT, "anat", f"{SUBJECT}_FLAIR.nii.gz")
LESION = Path("derivatives", "lesions", SUBJECT, "anat",
              f"{SUBJECT}_label-lesion_mask.nii.gz")
TSV = Path("participants.tsv")


def _nifti_gz(data: np.ndarray, affine: np.ndarray = TINY_AFFINE,
              **header_fields) -> bytes:
  """A .nii.gz with raw header fields overwritten after serialising.

  Patching the serialised header writes values nibabel would refuse or fix.
  """
  raw = bytearray(nib.Nifti1Image(data, affine).to_bytes())
  header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
  for name, value in header_fields.items():
    header[name] = value
  raw[:348] = header.binaryblock
  return gzip.compress(bytes(raw), mtime=0)


def _image(cohort: Path) -> np.ndarray:
  return np.asarray(nib.load(cohort / FLAIR).dataobj, dtype=np.float32)


def _replace(path: Path, payload: bytes) -> None:
  path.write_bytes(payload)


def _patch_flair(**header_fields) -> Callable[[Path], None]:
  def mutate(cohort: Path) -> None:
    _replace(cohort / FLAIR, _nifti_gz(_image(cohort), **header_fields))
  return mutate


def _flair_data(make: Callable[[np.ndarray], np.ndarray]
                ) -> Callable[[Path], None]:
  def mutate(cohort: Path) -> None:
    _replace(cohort / FLAIR, _nifti_gz(make(_image(cohort))))
  return mutate


def _truncate_gzip(cohort: Path) -> None:
  raw = (cohort / FLAIR).read_bytes()
  _replace(cohort / FLAIR, raw[:len(raw) // 2])


def _uncompressed_named_gz(cohort: Path) -> None:
  _replace(cohort / FLAIR, gzip.decompress((cohort / FLAIR).read_bytes()))


def _wrong_magic(cohort: Path) -> None:
  raw = bytearray(gzip.decompress((cohort / FLAIR).read_bytes()))
  raw[344:348] = b"ni1\x00"  # the .hdr/.img pair magic
  _replace(cohort / FLAIR, gzip.compress(bytes(raw), mtime=0))


def _corrupt_extension(cohort: Path) -> None:
  # A header extension whose size field runs past the space before the voxel
  # data (the kind of file the atheris fuzzer found crashing the loader).
  raw = gzip.decompress(_nifti_gz(_image(cohort), vox_offset=368))
  extension = (10**6).to_bytes(4, "little") + (6).to_bytes(4, "little")
  raw = raw[:348] + b"\x01\x00\x00\x00" + extension + bytes(8) + raw[352:]
  _replace(cohort / FLAIR, gzip.compress(raw, mtime=0))


def _rgb(cohort: Path) -> None:
  rgb = np.zeros(TINY_SHAPE, [("R", "u1"), ("G", "u1"), ("B", "u1")])
  _replace(cohort / FLAIR, _nifti_gz(rgb))


def _with_nan(image: np.ndarray) -> np.ndarray:
  image[5, 6, 7] = np.nan
  return image


def _lesion(cohort: Path) -> np.ndarray:
  return np.asarray(nib.load(cohort / LESION).dataobj)


def _mask_shape_mismatch(cohort: Path) -> None:
  _replace(cohort / LESION, _nifti_gz(_lesion(cohort)[:, :, :20]))


def _mask_affine_mismatch(cohort: Path) -> None:
  shifted = TINY_AFFINE.copy()
  shifted[:3, 3] += 5.0
  _replace(cohort / LESION, _nifti_gz(_lesion(cohort), shifted))


def _non_binary_mask(cohort: Path) -> None:
  _replace(cohort / LESION, _nifti_gz(_lesion(cohort) * 2))


def _edit_tsv(edit: Callable[[str], str]) -> Callable[[Path], None]:
  def mutate(cohort: Path) -> None:
    (cohort / TSV).write_text(edit((cohort / TSV).read_text()))
  return mutate


def _latin1_tsv(cohort: Path) -> None:
  lines = (cohort / TSV).read_text().splitlines()
  lines[0] += "\tsite"
  lines[1:] = [f"{line}\tKöln" for line in lines[1:]]
  (cohort / TSV).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def _drop_row(subject: str) -> Callable[[str], str]:
  return lambda text: "".join(line for line in text.splitlines(True)
                              if not line.startswith(subject))


@dataclasses.dataclass(frozen=True)
class Case:
  """A broken cohort: how to break it, what the error must say.

  Attributes:
    name: test id.
    mutate: breaks a copy of the tiny cohort in place.
    names: the file (relative to the cohort) the message must start with.
    words: what else the message must contain.
  """
  name: str
  mutate: Callable[[Path], None]
  names: Path
  words: tuple[str, ...]


COHORT_CASES = [
    # NIfTI files.
    Case("truncated_gzip", _truncate_gzip, FLAIR, ("truncated gzip",)),
    Case("uncompressed_named_nii_gz", _uncompressed_named_gz, FLAIR,
         ("not gzip-compressed",)),
    Case("empty_file", lambda c: _replace(c / FLAIR, b""), FLAIR,
         ("not gzip-compressed",)),
    Case("gzip_of_text", lambda c: _replace(c / FLAIR, gzip.compress(
        b"participant_id\thand_function\n" * 20)), FLAIR,
         ("not a NIfTI file",)),
    Case("wrong_magic", _wrong_magic, FLAIR, (".hdr/.img pair",)),
    Case("bad_magic", _patch_flair(magic=b"xyz"), FLAIR, ("bad magic",)),
    Case("absurd_dims", _patch_flair(dim=[3, 32767, 32767, 32767, 1, 1, 1,
                                          1]), FLAIR, ("absurd dimensions",)),
    Case("negative_dim", _patch_flair(dim=[3, 28, -32, 24, 1, 1, 1, 1]), FLAIR,
         ("non-positive dimension",)),
    Case("zero_pixdim", _patch_flair(pixdim=[1, 2, 0, 2, 1, 1, 1, 1]), FLAIR,
         ("invalid voxel sizes", "positive")),
    Case("negative_pixdim", _patch_flair(pixdim=[1, -2, 2, 2, 1, 1, 1, 1]),
         FLAIR, ("invalid voxel sizes", "positive")),
    Case("nan_affine", _patch_flair(srow_y=[0, np.nan, 0, 0]), FLAIR,
         ("affine", "non-finite")),
    Case("singular_affine", _patch_flair(srow_z=[0, 0, 0, 0]), FLAIR,
         ("affine", "singular")),
    Case("nan_vox_offset", _patch_flair(vox_offset=np.nan), FLAIR,
         ("vox_offset",)),
    Case("corrupt_header_extension", _corrupt_extension, FLAIR,
         ("corrupt NIfTI header",)),
    Case("5d_data", _flair_data(lambda x: np.stack([x, x], -1)[..., None, :]),
         FLAIR, ("expected a 3D image", "5D")),
    Case("4d_time_series", _flair_data(lambda x: np.stack([x, x], -1)), FLAIR,
         ("expected a 3D image", "4D")),
    Case("rgb_dtype", _rgb, FLAIR, ("not a real number type",)),
    Case("complex_dtype", _flair_data(lambda x: x.astype(np.complex64)), FLAIR,
         ("complex64", "not a real number type")),
    Case("nan_voxels", _flair_data(_with_nan), FLAIR, ("1 NaN",)),
    Case("mask_shape_mismatch", _mask_shape_mismatch, LESION,
         ("shape (28, 32, 20) differs", str(FLAIR.name))),
    Case("mask_affine_mismatch", _mask_affine_mismatch, LESION,
         ("affine differs", "5 mm", str(FLAIR.name))),
    Case("non_binary_mask", _non_binary_mask, LESION,
         ("values other than 0, 1", "e.g. 2", "data.ignore_label")),
    Case("missing_lesion_mask", lambda c: (c / LESION).unlink(), FLAIR,
         (SUBJECT, "no lesion mask", "not found")),
    # participants.tsv.
    Case("tsv_latin1", _latin1_tsv, TSV, ("line 2: not UTF-8", "0xf6")),
    Case("tsv_missing_column",
         _edit_tsv(lambda t: t.replace("hand_function", "hand")), TSV,
         ("no 'hand_function' column",)),
    Case("tsv_comma_separated", _edit_tsv(lambda t: t.replace("\t", ",")), TSV,
         ("no 'participant_id' column", "tab-separated")),
    Case("tsv_duplicate_id", _edit_tsv(lambda t: t + "sub-003\t1\n"), TSV,
         ("duplicate participant ids", "sub-003 (lines 4, 12)")),
    Case("tsv_path_like_id",
         _edit_tsv(lambda t: t.replace("sub-010\t", "../x\t")), TSV,
         ("line 11", "'../x'", "not of the form sub-<label>")),
    Case("tsv_non_binary_label",
         _edit_tsv(lambda t: t.replace("sub-006\t0", "sub-006\t2")), TSV,
         ("line 7", "hand_function is '2', must be 0, 1 or n/a")),
    Case("tsv_empty", _edit_tsv(lambda t: ""), TSV, ("no participants",)),
    Case("tsv_missing", lambda c: (c / TSV).unlink(), TSV, ("file not found",)),
    Case("scan_without_row", _edit_tsv(_drop_row("sub-010")), TSV,
         ("no row for sub-010",)),
    Case("row_without_scan", _edit_tsv(lambda t: t + "sub-099\t0\n"),
         Path("sub-099"), ("sub-099", "FLAIR", "not found")),
]


def _hashes(root: Path) -> dict[str, str]:
  """sha256 of every file under `root`, by relative path."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_no_run_outputs(workdir: Path) -> None:
  """The disk checks may have created the workdir; nothing may be in it."""
  left = sorted(p.name for p in workdir.iterdir()) if workdir.exists() else []
  assert not left, f"partial output in {workdir}: {left}"


def _assert_no_tfds_build(cache: Path, finished_allowed: bool = False) -> None:
  """No incomplete TFDS directory; no finished build unless allowed."""
  incomplete = [str(p) for p in cache.rglob("incomplete.*")]
  assert not incomplete, incomplete
  if not finished_allowed:
    finished = [str(p) for p in cache.rglob("dataset_info.json")]
    assert not finished, finished


@pytest.fixture
def cohort(tiny_cohort, tmp_path) -> Path:
  """A private copy of the tiny cohort, free to break."""
  return Path(shutil.copytree(tiny_cohort, tmp_path / "cohort"))


def _prepare_error(config, workdir: Path) -> str:
  with pytest.raises(InputError) as info:
    train.prepare_run(config, workdir)
  return str(info.value)


@pytest.mark.parametrize("case", COHORT_CASES, ids=lambda c: c.name)
def test_broken_cohort(case, cohort, tmp_path):
  case.mutate(cohort)
  before = _hashes(cohort)
  cache, workdir = tmp_path / "cache", tmp_path / "run"
  message = _prepare_error(tiny_config(cohort, cache), workdir)
  assert message.startswith(f"{cohort / case.names}: "), message
  for word in case.words:
    assert word in message, message
  assert _hashes(cohort) == before
  _assert_no_run_outputs(workdir)
  _assert_no_tfds_build(cache)


CONFIG_CASES = [
    ("r", -1.0, "config.r: must be >= 0"),
    ("batch_size", 0, "config.batch_size: must be >= 1"),
    ("num_steps", 0, "config.num_steps: must be >= 1"),
    ("data.fold", 7, "config.data.fold: must be in [0, 5)"),
    ("data.num_folds", 2, "config.data.num_folds: needs >= 3 folds"),
    ("data.foreground_fraction", 1.5, "config.data.foreground_fraction"),
    ("data.num_workers", -1, "config.data.num_workers: must be >= 0"),
    ("data.patch_size", (15, 16, 16), "divisible by the network's total "
     "stride"),
    ("data.patch_size", (16, 16, 16, 16), "config.data.patch_size: needs 2"),
    ("model.compute_dtype", "float8", "config.model.compute_dtype"),
    ("inference.overlap", 1.0, "config.inference.overlap: must be in [0, 1)"),
    ("nonfinite", "ignore", "config.nonfinite: must be 'stop' or 'skip'"),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate"),
]


@pytest.mark.parametrize("key, value, words", CONFIG_CASES,
                         ids=[f"{k}={v}" for k, v, _ in CONFIG_CASES])
def test_out_of_range_config(key, value, words, cohort, tmp_path):
  config = tiny_config(cohort, tmp_path / "cache")
  parent, _, field = key.rpartition(".")
  (config[parent] if parent else config)[field] = value
  before = _hashes(cohort)
  message = _prepare_error(config, tmp_path / "run")
  assert words in message, message
  assert _hashes(cohort) == before
  _assert_no_run_outputs(tmp_path / "run")
  # Rejected before any data work: nothing was built.
  _assert_no_tfds_build(tmp_path / "cache")


def test_modality_missing_from_cohort(cohort, tmp_path):
  config = tiny_config(cohort, tmp_path / "cache")
  config.data.modalities = ("FLAIR", "T1w")
  message = _prepare_error(config, tmp_path / "run")
  assert message.startswith(f"{cohort / 'sub-001'}: "), message
  assert "T1w" in message
  _assert_no_tfds_build(tmp_path / "cache")


def test_cohort_dir_missing(tmp_path):
  config = tiny_config(tmp_path / "nowhere", tmp_path / "cache")
  message = _prepare_error(config, tmp_path / "run")
  assert message == (f"{tmp_path / 'nowhere'}: config.data.cohort_dir does "
                     "not exist")


def _built_cache(cohort: Path, cache: Path) -> Path:
  """Builds the cohort's TFDS records; returns the dataset's version dir."""
  train.prepare_run(tiny_config(cohort, cache), cache.parent / "first_run")
  (info,) = cache.rglob("dataset_info.json")
  return info.parent


def _shard(version_dir: Path) -> Path:
  return next(version_dir.glob("pvl_cohort-fold1.array_record-*"))


def _flip_byte(path: Path, offset: int) -> None:
  raw = bytearray(path.read_bytes())
  raw[offset] ^= 0xFF
  path.write_bytes(bytes(raw))


TFDS_CASES = [
    ("missing_shard", lambda d: _shard(d).unlink(), _shard,
     "shard of the prepared TFDS dataset is missing"),
    ("truncated_shard",
     lambda d: _shard(d).write_bytes(_shard(d).read_bytes()[:-1000]), _shard,
     "corrupt or truncated shard"),
    ("empty_shard", lambda d: _shard(d).write_bytes(b""), _shard,
     "corrupt or truncated shard"),
    ("corrupt_shard_header", lambda d: _flip_byte(_shard(d), 100), _shard,
     "hash mismatch"),
    ("corrupt_shard_record",
     lambda d: _flip_byte(_shard(d), _shard(d).stat().st_size // 3), _shard,
     "hash mismatch"),
    ("corrupt_dataset_info",
     lambda d: (d / "dataset_info.json").write_text('{"name": "pvl_'),
     lambda d: d / "dataset_info.json", "unreadable"),
    ("missing_dataset_info", lambda d: (d / "dataset_info.json").unlink(),
     lambda d: d / "dataset_info.json", "missing"),
]


@pytest.mark.parametrize("name, damage, named, words", TFDS_CASES,
                         ids=[c[0] for c in TFDS_CASES])
def test_damaged_tfds_cache(name, damage, named, words, cohort, tmp_path):
  del name
  cache = tmp_path / "cache"
  version_dir = _built_cache(cohort, cache)
  expected_path = named(version_dir)
  damage(version_dir)
  before = _hashes(cohort)
  message = _prepare_error(tiny_config(cohort, cache), tmp_path / "run")
  assert message.startswith(f"{expected_path}: "), message
  assert words in message, message
  # The advice names the cohort's cache directory, and following it works.
  data_dir = version_dir.parents[2]
  assert f"delete {data_dir} " in message, message
  assert _hashes(cohort) == before
  _assert_no_run_outputs(tmp_path / "run")
  _assert_no_tfds_build(cache, finished_allowed=True)
  shutil.rmtree(data_dir)
  train.prepare_run(tiny_config(cohort, cache), tmp_path / "run")


# --- the command line ---------------------------------------------------------


def _cli(tmp_path: Path, cohort: Path, *args: str, rootpath: Path,
         config: str = "configs/joint.py:demo"
         ) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "pvl_jax.main", f"--config={config}",
       f"--workdir={tmp_path / 'run'}", f"--config.data.cohort_dir={cohort}",
       f"--config.data.cache_dir={tmp_path / 'cache'}",
       "--config.data.patch_size=(16,16,16)", "--config.data.num_workers=0",
       "--config.model.features=(4,8,16)", *args],
      capture_output=True, text=True, timeout=300, cwd=rootpath)


def _assert_cli_error(result: subprocess.CompletedProcess, *words: str
                      ) -> str:
  """Exit status 2, `error: ...` naming `words`, and no traceback."""
  assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  for word in words:
    assert word in errors[0], errors[0]
  return errors[0]


def _cli_case(case_name: str, slow: bool = False):
  case = next(c for c in COHORT_CASES if c.name == case_name)
  return pytest.param(case, id=case_name,
                      marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("case", [
    _cli_case("truncated_gzip"),
    _cli_case("tsv_path_like_id", slow=True),
    _cli_case("mask_affine_mismatch", slow=True),
    _cli_case("tsv_latin1", slow=True),
])
def test_cli_broken_cohort(case, cohort, tmp_path, request):
  case.mutate(cohort)
  before = _hashes(cohort)
  result = _cli(tmp_path, cohort, rootpath=request.config.rootpath)
  _assert_cli_error(result, f"error: {cohort / case.names}: ", *case.words)
  assert _hashes(cohort) == before
  _assert_no_run_outputs(tmp_path / "run")
  _assert_no_tfds_build(tmp_path / "cache")


_DEMO = "configs/joint.py:demo"


@pytest.mark.parametrize("config, args, words", [
    pytest.param(_DEMO, ("--config.nope=1",),
                 ("--config.nope: no such config field 'nope'",),
                 id="unknown_key"),
    pytest.param(_DEMO, ("--config.r=abc",),
                 ("--config.r=abc", "could not convert"),
                 marks=pytest.mark.slow, id="wrong_type"),
    pytest.param(_DEMO, ("--config.data.nope=1",),
                 ("--config.data.nope: no such config field",),
                 marks=pytest.mark.slow, id="unknown_nested_key"),
    pytest.param(_DEMO, ("--config.r=-2",), ("config.r: must be >= 0",),
                 marks=pytest.mark.slow, id="out_of_range"),
    pytest.param(f"{_DEMO},bogus=1", (),
                 ("config argument 'bogus' is unknown",),
                 marks=pytest.mark.slow, id="unknown_config_argument"),
    pytest.param("configs/nope.py", (),
                 ("--config: cannot load configs/nope.py",),
                 marks=pytest.mark.slow, id="missing_config_file"),
])
def test_cli_bad_config(config, args, words, cohort, tmp_path, request):
  before = _hashes(cohort)
  result = _cli(tmp_path, cohort, *args, rootpath=request.config.rootpath,
                config=config)
  _assert_cli_error(result, *words)
  assert _hashes(cohort) == before
  assert not (tmp_path / "run").exists()
  assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_cli_damaged_tfds_cache(cohort, tmp_path, request):
  version_dir = _built_cache(cohort, tmp_path / "cache")
  shard = _shard(version_dir)
  shard.unlink()
  result = _cli(tmp_path, cohort, rootpath=request.config.rootpath)
  _assert_cli_error(result, f"error: {shard}: ", "missing",
                    f"delete {version_dir.parents[2]} ")
  _assert_no_run_outputs(tmp_path / "run")
