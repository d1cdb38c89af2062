"""`python -m vosjax.bench clustering`: the jitted clustering on the planted benchmark video."""

from vosjax.benchmarks import clustering


def test_clustering_benchmark_runs_and_agrees_with_numpy(capsys):
  assert not clustering.main(["--frames", "4", "--ratio", "2", "--objects", "3"])
  table = capsys.readouterr().out
  row = next(line.split() for line in table.splitlines() if line.split()[:1] == ["4"])
  assert float(row[-1]) == 1.0, table  # agree: every final label equals the NumPy transcription's
