"""The QC report: a self-contained page, checked in headless Chromium.

Chromium is Debian's (`apt-get install chromium`, which .ci/run does when it
is absent). The test loads a copy of the page with a small script appended
that, once the page has loaded, writes into the DOM how many images decoded
(`naturalWidth > 0`) and how many table rows there are; `--dump-dom` prints
the DOM the script left. The report itself holds no script.
"""

from html.parser import HTMLParser
import re
import shutil
import subprocess

import numpy as np
import pytest

from pvl_jax.evaluation import qc_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags a sandboxed, offline machine needs (no GPU, no network calls
# at start-up, no sandbox as root).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-quic", "--no-first-run",
                  "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=10000")
_PROBE = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    rows: document.querySelectorAll("tbody tr").length,
    external: Array.from(document.querySelectorAll("[src],[href]")).filter(
        e => !/^data:/.test(e.getAttribute("src") || e.getAttribute("href"))
    ).length});
  document.body.appendChild(out);
});
</script>
"""


def _volume(lesions: list[tuple[int, int, int]]) -> tuple[np.ndarray, ...]:
  """(image, mask, affine): a bright ball of a head, lesions of 27 voxels."""
  grid = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij"), -1)
  image = np.where(((grid - 12) ** 2).sum(-1) < 100, 1.0, 0.0)
  mask = np.zeros(image.shape, np.uint8)
  for x, y, z in lesions:
    mask[x - 1:x + 2, y - 1:y + 2, z - 1:z + 2] = 1
  affine = np.diag([-2.0, 2.0, 2.4, 1.0])  # stored L-R: shown as RAS
  return image + mask, mask, affine


def _rows() -> list[qc_report.Row]:
  rows = []
  for i, lesions in enumerate([[(8, 8, 10), (15, 14, 12)], [], [(12, 6, 9)]]):
    image, mask, affine = _volume(lesions)
    volume, count = qc_report.lesion_stats(mask, affine)
    rows.append(qc_report.Row(
        name=f"sub-00{i + 1} <ses>", overlay_png=qc_report.overlay_png(
            image, mask, affine, reference=mask if i == 2 else None),
        lesion_volume_ml=volume, lesion_count=count,
        p_bad=None if i == 1 else 0.25 * i,
        warnings=tuple(qc_report.warnings_for(count, 0.5 if i == 2 else 1.0))))
  return rows


def test_lesion_stats_and_warnings():
  _, mask, affine = _volume([(8, 8, 10), (15, 14, 12)])
  volume, count = qc_report.lesion_stats(mask, affine)
  assert count == 2
  assert volume == pytest.approx(54 * 2 * 2 * 2.4 / 1000)
  assert qc_report.warnings_for(0, 0.95) == ["empty prediction (no lesion)"]
  assert qc_report.warnings_for(3, 0.5) == [
      "brain mask far from the template (Dice 0.50 < 0.9)"]
  assert not qc_report.warnings_for(3, None)


def test_slices_are_those_with_the_most_lesion():
  image, mask, _ = _volume([(8, 8, 10), (15, 14, 12)])
  mask[10, 10, 20] = 1
  # Slice 11 cuts both lesions, 9-10 and 12-13 one each (ties: the lower
  # slices), 20 one voxel.
  assert qc_report._slices_to_show(image, mask > 0, 3) == [9, 10, 11]
  # No lesion: the middle of the head.
  assert qc_report._slices_to_show(image, mask < 0, 3) == [9, 12, 15]


class _Cells(HTMLParser):
  """The report's table rows (their cells' text) and its image sources."""

  def __init__(self):
    super().__init__()
    self.rows, self.sources, self.scripts = [], [], 0
    self._in_body = self._in_cell = False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "tbody":
      self._in_body = True
    elif tag == "tr" and self._in_body:
      self.rows.append([])
    elif tag == "td" and self._in_body:
      self.rows[-1].append("")
      self._in_cell = True
    elif tag == "img":
      self.sources.append(attrs["src"])
    elif tag == "script":
      self.scripts += 1

  def handle_endtag(self, tag):
    if tag == "tbody":
      self._in_body = False
    elif tag == "td":
      self._in_cell = False

  def handle_data(self, data):
    if self._in_cell:
      self.rows[-1][-1] += data


def test_report_is_one_offline_page_with_a_row_per_scan(tmp_path):
  path = qc_report.write(tmp_path / "qc.html", "Predictions of <run>",
                         _rows(), ["Model run /x"])
  page = _Cells()
  page.feed(path.read_text())
  assert page.scripts == 0
  assert [row[0] for row in page.rows] == [
      "sub-001 <ses>", "sub-002 <ses>", "sub-003 <ses>"]
  assert [row[3] for row in page.rows] == ["2", "0", "1"]
  assert [row[4] for row in page.rows] == ["0.000", "n/a", "0.500"]
  assert page.rows[1][5] == "empty prediction (no lesion)"
  assert "brain mask far from the template" in page.rows[2][5]
  assert len(page.sources) == 3
  assert all(s.startswith("data:image/png;base64,") for s in page.sources)
  assert not re.search(r"(src|href)=\"(?!data:)", path.read_text())


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                    "(.ci/run installs Debian's chromium package)")
def test_report_renders_in_headless_chromium(tmp_path):
  path = qc_report.write(tmp_path / "qc.html", "Predictions", _rows())
  probed = tmp_path / "probed.html"
  probed.write_text(path.read_text().replace("</body>", _PROBE + "</body>"))
  result = subprocess.run(
      [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
       "--dump-dom", probed.as_uri()],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout)
  assert found, result.stdout[-2000:]
  assert found.group(1) == ('{"images":3,"loaded":3,"rows":3,'
                            '"external":0}')


def test_training_run_reports_its_test_split(tiny_run):
  workdir, _, results = tiny_run
  page = _Cells()
  page.feed((workdir / qc_report.REPORT_FILE).read_text())
  rows = results["test"]["per_subject"]
  assert [row[0] for row in page.rows] == [r["subject_id"] for r in rows]
  assert [float(row[4]) for row in page.rows] == pytest.approx(
      [r["hand_function_prob"] for r in rows], abs=5e-4)
  assert len(page.sources) == len(rows)
