"""The one place evaluation results are reported: JSON, the `EVAL ...` line and TensorBoard."""

from __future__ import annotations

import json

from etils import epath
import jax


def report(workdir: str, result: dict, step: int, writer=None) -> None:
  """Writes WORKDIR/eval_metrics.json and prints the `EVAL k=v ...` line (process 0), and logs the
  scalar metrics to TensorBoard; nested values (e.g. per-sequence tables) go to the JSON only."""
  scalars = {k: v for k, v in result.items() if isinstance(v, (int, float))}
  if writer is not None:
    writer.scalars(step, scalars, prefix="eval")
  if jax.process_index() == 0:
    (epath.Path(workdir) / "eval_metrics.json").write_text(json.dumps(result, indent=2))
    print(
      "EVAL "
      + " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items()
      ),
      flush=True,
    )
