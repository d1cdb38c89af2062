"""How far the estimated (OpenCV DIS) flow of a synthetic set is from its exact flow.

  python -m vosjax.bench flow_error [--tfds_name vosjax_synthetic/64x64_o1-1] [--data_dir DIR]
      [--json FILE]

Reads the validation videos of the exact-flow set NAME and of its `NAME_dis` twin (the same videos,
flow estimated from the rendered frames as `vosjax.segment` does for a user's video; both are built
into DIR on first use) at their native size, and prints, for the forward flow of every frame but the
last: the mean flow magnitude and the mean endpoint error (EPE, pixels) on object pixels and on the
background, and the fraction of the frame the objects cover. This is why Motion Grouping and the
flow baseline score lower on the `_dis` sets (docs/performance.md, "Exact and estimated flow").
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np

from vosjax.data import movi


def _validation_flows(tfds_name: str, data_dir: str):
  """Yields (forward_flow [T-1, H, W, 2], objects bool [T-1, H, W]) per validation video."""
  size = re.search(r"/(\d+)x(\d+)", tfds_name)
  if size is None:
    raise ValueError(f"--tfds_name {tfds_name!r} is not a vosjax_synthetic/HxW... name")
  config = movi.default_data_config()
  config.tfds_name, config.data_dir = tfds_name, data_dir
  config.resolution = (int(size.group(1)), int(size.group(2)))
  for batch in movi.make_eval_iterator(config, 8, process_index=0, process_count=1):
    for index in np.flatnonzero(batch["valid"]):
      yield batch["forward_flow"][index, :-1], batch["segmentations"][index, :-1] > 0


def flow_error(tfds_name: str, data_dir: str) -> dict[str, float]:
  """EPE of `tfds_name + "_dis"` against `tfds_name` on the validation split (see module doc)."""
  if tfds_name.endswith("_dis"):
    raise ValueError(f"--tfds_name {tfds_name!r}: give the exact-flow set, without '_dis'")
  sums = {key: 0.0 for key in ("object_epe", "object_flow", "background_epe", "background_flow")}
  object_pixels = background_pixels = 0
  for (exact, objects), (estimated, _) in zip(
    _validation_flows(tfds_name, data_dir), _validation_flows(tfds_name + "_dis", data_dir)
  ):
    epe = np.linalg.norm(exact - estimated, axis=-1)
    magnitude = np.linalg.norm(exact, axis=-1)
    sums["object_epe"] += float(epe[objects].sum())
    sums["object_flow"] += float(magnitude[objects].sum())
    sums["background_epe"] += float(epe[~objects].sum())
    sums["background_flow"] += float(magnitude[~objects].sum())
    object_pixels += int(objects.sum())
    background_pixels += int((~objects).sum())
  if not object_pixels + background_pixels:
    raise ValueError(f"{tfds_name}: no validation videos")
  result = {
    key: value / max(object_pixels if key.startswith("object") else background_pixels, 1)
    for key, value in sums.items()
  }
  result["object_fraction"] = object_pixels / (object_pixels + background_pixels)
  return result


def main(argv: list[str]) -> int | None:
  parser = argparse.ArgumentParser(prog="python -m vosjax.bench flow_error")
  parser.add_argument(
    "--tfds_name",
    default="vosjax_synthetic/64x64_o1-1",
    help="the exact-flow synthetic set; NAME_dis is its estimated-flow twin",
  )
  parser.add_argument("--data_dir", default="~/tensorflow_datasets")
  parser.add_argument("--json", default=None, help="also write the numbers to this file")
  args = parser.parse_args(argv)
  result = flow_error(args.tfds_name, args.data_dir)
  print(
    f"{args.tfds_name}: DIS against exact flow, validation videos, pixels per frame\n"
    f"  objects ({result['object_fraction']:.1%} of the frame): |flow| "
    f"{result['object_flow']:.2f}, EPE {result['object_epe']:.2f}\n"
    f"  background: |flow| {result['background_flow']:.2f}, EPE {result['background_epe']:.2f}"
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"tfds_name": args.tfds_name, **result}, f, indent=1)
  return 0
