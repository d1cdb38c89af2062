"""`python -m vosjax.bench all`: every benchmark in one run, JSON and a markdown table (tiny
shapes)."""

import json

import pytest

from vosjax import bench
from vosjax.benchmarks import all as bench_all


def run_quick(tmp_path, sections: str) -> tuple[dict, str]:
  assert bench.main(["all", "--quick", "--only", sections, "--output", str(tmp_path)]) == 0
  report = json.loads((tmp_path / "benchmarks.json").read_text())
  return report, (tmp_path / "benchmarks.md").read_text()


def check_header(report: dict, table: str) -> None:
  machine = report["machine"]
  assert machine["device_count"] >= 1 and machine["device_kind"] and machine["cpu"]
  assert set(report["matmul_peak_gflops"]) == {"float32_highest", "float32", "bfloat16"}
  assert all(peak > 0 for peak in report["matmul_peak_gflops"].values())
  assert not report["errors"]
  assert f"x {machine['device_count']}" in table and "measured matmul peak" in table
  assert "| benchmark | workload | dtype | compile s | run s |" in table


def check_mfu(row: dict) -> None:
  """The share of the peak measured next to the row: a result in (0, 1], or marked unreliable."""
  assert row["peak_gflops"] > 0
  if row["mfu"] is None:
    assert row["mfu_unreliable"] > 1
  else:
    assert 0 < row["mfu"] <= 1 and "mfu_unreliable" not in row


def test_quick_backbone_and_keyframes(tmp_path):
  report, table = run_quick(tmp_path, "backbone,keyframes")
  check_header(report, table)
  assert {row["dtype"] for row in report["backbone"]} == {"float32", "bfloat16"}
  for row in report["backbone"]:
    assert row["frames_per_s"] > 0
    check_mfu(row)
    # XLA's count includes the non-matmul work the analytic count leaves out.
    assert row["xla_flops_per_frame"] >= 0.9 * row["analytic_flops_per_frame"]
    # MFU's count (matmuls, loops multiplied out) is the analytic matmul count.
    assert row["flops_per_frame"] == pytest.approx(row["analytic_flops_per_frame"], rel=0.05)
  assert [row["ratio"] for row in report["keyframes"]] == [3, 1]
  assert all(row["clustering_run_s"] > 0 for row in report["keyframes"])
  rows = [line for line in table.splitlines() if line.startswith("| backbone")]
  assert len(rows) == 2 and ("%" in rows[0] or "| unreliable |" in rows[0])
  assert sum(line.startswith("| keyframes") for line in table.splitlines()) == 2
  assert "clustering" not in report and "train" not in report


def test_quick_end_to_end_section(tmp_path):
  report, table = run_quick(tmp_path, "end_to_end")
  check_header(report, table)
  (row,) = report["end_to_end"]
  assert row["frames_per_s"] > 0 and row["run_s"] > 0 and row["compile_s"] >= 0
  assert [line.startswith("| end_to_end") for line in table.splitlines()].count(True) == 1
  assert "backbone" not in report and "clustering" not in report


def test_unknown_section_is_an_error(tmp_path, capsys):
  with pytest.raises(SystemExit):
    bench_all.main(["--quick", "--only", "backbone,nope", "--output", str(tmp_path)])
  assert "nope" in capsys.readouterr().err


@pytest.mark.slow  # ~1-2 min on 2 busy cores: compiles a Motion Grouping and a Betrayed step
def test_quick_run_of_every_section(tmp_path):
  report, table = run_quick(tmp_path, ",".join(bench_all.SECTIONS))
  check_header(report, table)
  for section in bench_all.SECTIONS:
    assert report[section], section
    assert sum(line.startswith(f"| {section}") for line in table.splitlines()) == len(
      report[section]
    ), section
  assert report["clustering"][0]["clusters_per_level"][-1] >= 1
  assert report["end_to_end"][0]["frames_per_s"] > 0
  for row in report["train"]:
    assert row["finite"] and row["images_per_s"] > 0
    assert row["flops_per_step"] > 0 and row["xla_flops_per_step"] > 0
    check_mfu(row)
