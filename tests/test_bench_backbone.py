"""`python -m vosjax.bench backbone`: the matmul peak is measured next to every row, and a row above
100% of its peak is marked unreliable, never printed as a result."""

import re

import pytest

from vosjax import bench
from vosjax.benchmarks import backbone

TINY_ROWS = [
  "backbone",
  "--archs",
  "dino_vits16",
  "--resolutions",
  "32x32,32x48",
  "--frames",
  "1",
  "--frame-chunk",
  "1",
  "--repeats",
  "1",
]
ROW = re.compile(r"^dino_vits16\s+(\d+x\d+) .* (\S+)\s+(\S+)$", re.M)  # ... peak, % peak


def test_peak_is_measured_just_before_and_after_the_row():
  calls, peaks = [], iter([100.0, 120.0])

  def measure_peak():
    calls.append("peak")
    return next(peaks)

  def measure_row():
    calls.append("row")
    return "result"

  assert backbone.measure_next_to_peak(measure_row, measure_peak) == ("result", 120.0)
  assert calls == ["peak", "row", "peak"]


@pytest.mark.parametrize(
  "gflops, peak, percent, reliable",
  [
    (50.0, 100.0, "50.0%", True),
    (100.0, 100.0, "100.0%", True),
    (140.7, 100.0, "unreliable", False),
  ],
)
def test_share_above_the_peak_is_unreliable(gflops, peak, percent, reliable):
  share = backbone.PeakShare(gflops, peak)
  assert share.percent() == percent and share.reliable == reliable
  assert share.fraction == pytest.approx(gflops / peak)


def rows(output: str) -> dict:
  """resolution -> (peak GFLOP/s, '% peak' cell) of each printed row."""
  return {m.group(1): (float(m.group(2)), m.group(3)) for m in ROW.finditer(output)}


def test_command_marks_rows_above_a_slow_peak_unreliable(capsys):
  """The peak of an 8x8 product is dispatch, not arithmetic: far below what the backbone achieves,
  as a peak measured at a busy moment can be. No row may print a share above 100%."""
  assert bench.main(TINY_ROWS + ["--peak-size", "8"]) == 0
  output = capsys.readouterr().out
  printed = rows(output)
  assert set(printed) == {"32x32", "32x48"}, output
  assert all(cell == "unreliable" for _, cell in printed.values()), output
  assert "unreliable: 2 row(s) measured faster than the matmul peak" in output
  assert not re.search(r"\b(1\d\d|[2-9]\d\d)\.\d%", output), output


def test_command_prints_each_rows_own_peak_and_no_share_above_100(capsys):
  assert bench.main(TINY_ROWS + ["--peak-size", "256"]) == 0
  output = capsys.readouterr().out
  printed = rows(output)
  assert set(printed) == {"32x32", "32x48"}, output
  for peak, cell in printed.values():
    assert peak > 0
    assert cell == "unreliable" or 0 < float(cell.rstrip("%")) <= 100, output
