"""Where the tests find the real data (DAVIS-2016 frames and masks, the official evaluator's
outputs): one setting, the environment variable `VOSJAX_TEST_DATA` (default `../shared/data`
beside the repository; its layout is described by that folder's SOURCES.md).

A test that needs a folder of it calls `require_data`: where the folder is missing the test is
skipped with the variable and the path as its reason (pytest's summary prints it), except under
`CI=true`, where it fails: CI has the data and must keep running those tests.
"""

import os
from pathlib import Path

import pytest

DATA_VARIABLE = "VOSJAX_TEST_DATA"
_REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = _REPO.parent / "shared" / "data"


def data_root() -> Path:
  """The folder `VOSJAX_TEST_DATA` names (relative to the working directory), or the default."""
  value = os.environ.get(DATA_VARIABLE)
  return Path(value).expanduser().absolute() if value else DEFAULT_DATA


def running_in_ci() -> bool:
  return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_data(*folders: str) -> Path:
  """The data root, after checking that each of `folders` (relative to it) is a folder; a missing
  one skips the calling test (fails it under `CI=true`) with a message naming the variable."""
  root = data_root()
  for folder in folders:
    path = root / folder
    if not path.is_dir():
      origin = (
        f"{DATA_VARIABLE}={os.environ[DATA_VARIABLE]}"
        if DATA_VARIABLE in os.environ
        else f"{DATA_VARIABLE} unset, default {DEFAULT_DATA}"
      )
      message = (
        f"real test data missing: {path} is not a folder ({origin}); set {DATA_VARIABLE} to the "
        "folder holding davis2016/, davis2017_eval_results/ and fixtures/"
      )
      if running_in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
      # Reported at the test's location (as a skip mark is), not at this line.
      raise pytest.skip.Exception(message, _use_item_location=True)
  return root


def davis2016_root() -> Path:
  """The real DAVIS-2016 val folder (`JPEGImages/480p`, `Annotations/480p`)."""
  return require_data("davis2016/JPEGImages/480p", "davis2016/Annotations/480p") / "davis2016"
