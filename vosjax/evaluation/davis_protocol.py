"""The DAVIS evaluation protocols on PNG mask folders (`python -m vosjax.evaluate` is its command).

Protocols (see docs/evaluation_protocols.md):
- `davis2016`: one object per frame, foreground = `png > 0` for GT and results, no void. Default
  frames `1:-1`: the DAVIS-2016 toolkit (fperazzi/davis `db_eval_sequence`) drops the first and
  last frame.
- `davis2017-unsupervised`: the official davisvideochallenge/davis2017-evaluation unsupervised task:
  GT value 255 is void, GT objects are the ids 1..max(first GT frame), one Hungarian assignment per
  sequence on mean-over-frames (J+F)/2, at most 20 proposals, all frames.
- `davis2017-unsupervised-perframe`: the SSL-UVOS / SMTC fork: a Hungarian assignment per frame
  on J+F, at most 300 proposals. More lenient; not the official protocol.
- `davis2017-semi-supervised`: the official semi-supervised task: result id k is GT object k (no
  matching), GT objects 1..max(first GT frame), first and last frames dropped, GT void (255)
  counted as background and not ignored (the toolkit passes no void mask here), a result id
  above the object count is an error, missing objects score as empty masks.

Predictions are id maps (`evaluate_sequence`, `evaluate_folders`: PNG folders) or stacks of
proposals that may overlap, each scored on its own as the SMTC evaluator does
(`evaluate_sequence_masks`).

Per-object rows are reported in GT object order. (The official tool labels row k with the k-th
matched pair in proposal order, which permutes object names when there are more proposals than
objects; every global number is the same.)

Writes `global_results.csv` and `per-sequence_results.csv` in the official column layout.
"""

from __future__ import annotations

from concurrent import futures
import dataclasses
import multiprocessing
import os
from pathlib import Path

import numpy as np
from scipy import optimize

from vosjax.data.davis import VOID_LABEL
from vosjax.data.davis import read_label_png
from vosjax.evaluation import metrics
from vosjax.evaluation.proposal_scores import MaskStackScores
from vosjax.evaluation.proposal_scores import score_mask_stack


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How a protocol reads masks and matches proposals to GT objects."""

  name: str
  single_object: bool  # Foreground = union of all ids, no void.
  per_frame_matching: bool
  max_proposals: int
  default_frames: str
  identity_matching: bool = False  # Semi-supervised: result id k is GT object k.


PROTOCOLS = {
  p.name: p
  for p in (
    Protocol("davis2016", True, False, 1, "1:-1"),
    Protocol("davis2017-unsupervised", False, False, 20, "all"),
    Protocol("davis2017-unsupervised-perframe", False, True, 300, "all"),
    Protocol("davis2017-semi-supervised", False, False, 0, "1:-1", identity_matching=True),
  )
}
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclasses.dataclass
class SequenceResult:
  """Scores of one sequence. j, f: float64 [num_objects, num_frames]; rows in GT object order."""

  name: str
  frame_names: list[str]
  j: np.ndarray
  f: np.ndarray
  matched_proposals: np.ndarray  # int [num_objects] or [num_objects, num_frames]; 0 = padding.

  def object_rows(self) -> list[dict]:
    rows = []
    for k in range(self.j.shape[0]):
      j_stats, f_stats = metrics.davis_statistics(self.j[k]), metrics.davis_statistics(self.f[k])
      rows.append(
        {
          "Sequence": f"{self.name}_{k + 1}",
          "J-Mean": j_stats[0],
          "J-Recall": j_stats[1],
          "J-Decay": j_stats[2],
          "F-Mean": f_stats[0],
          "F-Recall": f_stats[1],
          "F-Decay": f_stats[2],
        }
      )
    return rows


@dataclasses.dataclass
class EvaluationResults:
  protocol: str
  frames: str
  sequences: list[SequenceResult]

  def object_rows(self) -> list[dict]:
    return [row for seq in self.sequences for row in seq.object_rows()]

  def global_results(self) -> dict[str, float]:
    """Means over all objects of all sequences, as the official `global_results` table."""
    rows = self.object_rows()
    if not rows:
      raise ValueError("no GT object was evaluated")
    out = {key: float(np.mean([r[key] for r in rows])) for key in GLOBAL_COLUMNS[1:]}
    return {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out}

  def write_csv(self, output_dir, decimals: int = 3) -> tuple[Path, Path]:
    """Writes the two official CSV files (pandas `float_format="%.3f"` layout by default)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fmt = lambda v: "" if np.isnan(v) else f"{v:.{decimals}f}"
    global_path = output_dir / "global_results.csv"
    values = self.global_results()
    _atomic_write(
      global_path,
      ",".join(GLOBAL_COLUMNS) + "\n" + ",".join(fmt(values[c]) for c in GLOBAL_COLUMNS) + "\n",
    )
    sequence_path = output_dir / "per-sequence_results.csv"
    lines = ["Sequence,J-Mean,F-Mean"] + [
      f"{r['Sequence']},{fmt(r['J-Mean'])},{fmt(r['F-Mean'])}" for r in self.object_rows()
    ]
    _atomic_write(sequence_path, "\n".join(lines) + "\n")
    return global_path, sequence_path

  def format_table(self) -> str:
    values = self.global_results()
    widths = [max(len(c), 8) for c in GLOBAL_COLUMNS]
    header = "  ".join(c.rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths))
    row = "  ".join(f"{values[c]:.3f}".rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths))
    return f"{header}\n{row}"


def _atomic_write(path: Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _match(j: np.ndarray, f: np.ndarray, per_frame: bool):
  """Hungarian matching of proposals [P, G, T] to GT objects; returns j, f [G, T] and matches."""
  num_objects, num_frames = j.shape[1], j.shape[2]
  if not per_frame:
    proposal, gt = optimize.linear_sum_assignment(-(np.mean(j, axis=2) + np.mean(f, axis=2)) / 2)
    order = np.argsort(gt)
    proposal, gt = proposal[order], gt[order]
    return j[proposal, gt], f[proposal, gt], proposal + 1
  out_j, out_f = np.zeros((num_objects, num_frames)), np.zeros((num_objects, num_frames))
  matches = np.zeros((num_objects, num_frames), np.int64)
  for t in range(num_frames):
    proposal, gt = optimize.linear_sum_assignment(-(j[:, :, t] + f[:, :, t]))
    out_j[gt, t], out_f[gt, t], matches[gt, t] = (
      j[proposal, gt, t],
      f[proposal, gt, t],
      proposal + 1,
    )
  return out_j, out_f, matches


def evaluate_sequence(
  true_ids,
  pred_ids,
  protocol: str = "davis2017-unsupervised",
  void=None,
  num_objects: int | None = None,
  name: str = "sequence",
  frame_names=None,
  bound_th: float = 0.008,
) -> SequenceResult:
  """Scores one sequence held in memory (the core of `evaluate_folders`).

  Args:
    true_ids: int [T, H, W] GT ids (raw PNG values: for the davis2017 protocols 255 = void
      unless `void` is given).
    pred_ids: int [T, H, W] predicted ids, 0 = background.
    protocol: a key of PROTOCOLS.
    void: optional bool [T, H, W] pixels to ignore (davis2017 protocols only).
    num_objects: GT objects are ids 1..num_objects; default max id of the first given frame
      (the official rule).
    name, frame_names: labels for the report.

  Returns:
    SequenceResult with j, f [num_objects, T].
  """
  spec = PROTOCOLS[protocol]
  true_ids, pred_ids = np.asarray(true_ids), np.asarray(pred_ids)
  if true_ids.ndim != 3 or true_ids.shape != pred_ids.shape:
    raise ValueError(
      f"{name}: GT {true_ids.shape} and prediction {pred_ids.shape} must both be "
      "[T, H, W] of the same size"
    )
  frame_names = list(frame_names or [f"{t:05d}" for t in range(true_ids.shape[0])])
  if spec.single_object:
    j, f = metrics.pairwise_region_and_boundary(true_ids > 0, pred_ids > 0, 1, 1, None, bound_th)
    return SequenceResult(name, frame_names, j[0], f[0], np.ones(1, np.int64))
  if void is None:
    void = true_ids == VOID_LABEL
  true_ids = np.where(void, 0, true_ids)
  if num_objects is None:
    num_objects = int(true_ids[0].max())
  num_proposals = int(pred_ids.max(initial=0))
  if spec.identity_matching:
    if num_proposals > num_objects:
      raise ValueError(
        f"{name}: the prediction holds id {num_proposals}, but the sequence has "
        f"{num_objects} objects (semi-supervised ids must be the first frame's)"
      )
    j, f = metrics.pairwise_region_and_boundary(
      true_ids, pred_ids, num_objects, num_objects, None, bound_th
    )
    objects = np.arange(num_objects)
    return SequenceResult(name, frame_names, j[objects, objects], f[objects, objects], objects + 1)
  if num_proposals > spec.max_proposals:
    raise ValueError(
      f"{name}: the prediction holds id {num_proposals}, more than the "
      f"{spec.max_proposals} proposals that {protocol} allows"
    )
  j, f = metrics.pairwise_region_and_boundary(
    true_ids, pred_ids, num_objects, max(num_proposals, num_objects), void, bound_th
  )
  j, f, matches = _match(j, f, spec.per_frame_matching)
  return SequenceResult(name, frame_names, j, f, matches)


# ---------------------------------------------------------------- overlapping mask stacks


def evaluate_sequence_masks(
  true_ids,
  proposals,
  protocol: str = "davis2017-unsupervised",
  present=None,
  void=None,
  num_objects: int | None = None,
  name: str = "sequence",
  frame_names=None,
  bound_th: float = 0.008,
  scores: MaskStackScores | None = None,
) -> SequenceResult:
  """Scores proposals that may overlap, each on its own (the SMTC evaluator), one sequence.

  Proposal k is the masks `proposals[k]` over the frames; `present[k, t]` says whether it is
  proposed in frame t (default: always). Both davis2017 protocols:
  - per frame (`davis2017-unsupervised-perframe`, the SMTC fork): in frame t the proposals present
    there, in index order, then empty masks up to max(the most present in any frame, the GT object
    count): the official layout (each frame's candidates stacked and zero-padded to the largest
    count of the sequence), so the Hungarian assignment sees the official matrix;
  - per sequence (`davis2017-unsupervised`): an absent proposal is an empty mask there.
  At most `max_proposals` (300 per frame, 20 per sequence) are scored: beyond that the ones with
  the largest area (pixels summed over the frames; lower index first on ties) are kept, in index
  order. (The official tools reject more proposals; an id map can hold only non-overlapping ones.)

  Args:
    true_ids: int [T, H, W] GT ids (255 = void unless `void` is given).
    proposals: bool [P, T, H, W], or a sequence of T bool [P, H, W] arrays read once each in
      order (e.g. computed on demand: a DAVIS sequence of 64 proposals at 480p is GBs).
    protocol: "davis2017-unsupervised" or "davis2017-unsupervised-perframe".
    present: optional bool [P, T].
    void, num_objects, name, frame_names, bound_th: as `evaluate_sequence`.
    scores: `proposal_scores.score_mask_stack` of these arguments, if already computed (then
      `proposals`, `void` and `bound_th` are not read).

  Returns:
    SequenceResult; matched_proposals holds proposal index + 1 (0: an empty padding mask).
  """
  spec = PROTOCOLS[protocol]
  if spec.single_object:
    raise ValueError(f"{protocol} scores one foreground: give an id map (evaluate_sequence)")
  if scores is None:
    scores = score_mask_stack(true_ids, proposals, void, num_objects, name, bound_th)
  (num_proposals, num_objects, num_frames), j, f = (
    ((scores.j.shape[0] - 1,) + scores.j.shape[1:]),
    scores.j,
    scores.f,
  )
  frame_names = list(frame_names or [f"{t:05d}" for t in range(num_frames)])
  present = (
    np.ones((num_proposals, num_frames), bool) if present is None else np.asarray(present, bool)
  )
  if present.shape != (num_proposals, num_frames):
    raise ValueError(
      f"{name}: present must be [P, T] = {(num_proposals, num_frames)}, got {present.shape}"
    )
  keep = np.sort(np.argsort(-scores.area, kind="stable")[: spec.max_proposals])
  empty_j, empty_f = j[num_proposals], f[num_proposals]  # [G, T]
  j, f, present = j[keep], f[keep], present[keep]
  if spec.per_frame_matching:
    count = max(int(present.sum(0).max(initial=0)), num_objects)
    out_j, out_f = np.zeros((num_objects, num_frames)), np.zeros((num_objects, num_frames))
    matches = np.zeros((num_objects, num_frames), np.int64)
    for t in range(num_frames):
      rows = np.flatnonzero(present[:, t])
      pad = count - len(rows)
      frame_j = np.concatenate([j[rows, :, t], np.repeat(empty_j[None, :, t], pad, 0)])
      frame_f = np.concatenate([f[rows, :, t], np.repeat(empty_f[None, :, t], pad, 0)])
      labels = np.concatenate([keep[rows] + 1, np.zeros(pad, np.int64)])
      proposal, gt = optimize.linear_sum_assignment(-(frame_j + frame_f))
      out_j[gt, t], out_f[gt, t] = frame_j[proposal, gt], frame_f[proposal, gt]
      matches[gt, t] = labels[proposal]
    return SequenceResult(name, frame_names, out_j, out_f, matches)
  j = np.where(present[:, None, :], j, empty_j[None])
  f = np.where(present[:, None, :], f, empty_f[None])
  pad = max(num_objects - len(keep), 0)
  j = np.concatenate([j, np.repeat(empty_j[None], pad, 0)])
  f = np.concatenate([f, np.repeat(empty_f[None], pad, 0)])
  labels = np.concatenate([keep + 1, np.zeros(pad, np.int64)])
  out_j, out_f, matches = _match(j, f, per_frame=False)
  return SequenceResult(name, frame_names, out_j, out_f, labels[matches - 1])


# ---------------------------------------------------------------- folders


def resolve_annotation_dir(gt: Path, protocol: str) -> Path:
  """The folder holding one sub-folder of PNGs per sequence, given a DAVIS root or that folder."""
  gt = Path(gt)
  if not gt.is_dir():
    raise FileNotFoundError(f"GT folder {gt} does not exist")
  candidates = ["Annotations/480p", "Annotations"]
  spec = PROTOCOLS[protocol]
  if not spec.single_object and not spec.identity_matching:
    candidates = ["Annotations_unsupervised/480p"] + candidates
  for sub in candidates:
    if (gt / sub).is_dir():
      return gt / sub
  return gt


def list_mask_sequences(folder: Path) -> list[str]:
  return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and any(p.glob("*.png")))


def _frame_slice(frames: str) -> slice:
  if frames == "all":
    return slice(None)
  if frames == "1:-1":
    return slice(1, -1)
  raise ValueError(f"frames must be 'all' or '1:-1', got {frames!r}")


def read_annotations(annotation_dir, seq: str, protocol: str) -> tuple[np.ndarray, int, list[Path]]:
  """(GT ids int [T, H, W], object count by the official rule, the PNG paths) of one sequence."""
  gt_paths = sorted((Path(annotation_dir) / seq).glob("*.png"))
  true_ids = np.stack([read_label_png(p) for p in gt_paths])
  # The official rule takes the object count from the first frame, before any frame is dropped.
  first_frame = np.where(true_ids[0] == VOID_LABEL, 0, true_ids[0])
  num_objects = int(first_frame.max())
  if num_objects == 0 and not PROTOCOLS[protocol].single_object and (true_ids[0] > 0).any():
    raise ValueError(
      f"{gt_paths[0]}: the first GT frame holds only void (255) pixels, so "
      f"{protocol} finds no object; DAVIS-2016 style 0/255 masks need "
      "--protocol davis2016"
    )
  return true_ids, num_objects, gt_paths


def _evaluate_folder_sequence(args) -> SequenceResult:
  annotation_dir, results_dir, seq, protocol, frames, bound_th = args
  true_ids, num_objects, gt_paths = read_annotations(annotation_dir, seq, protocol)
  selected = gt_paths[_frame_slice(frames)]
  if not selected:
    raise ValueError(f"{annotation_dir / seq}: no frame left to score with frames={frames}")
  true_ids = true_ids[_frame_slice(frames)]
  preds = []
  for p in selected:
    pred = read_label_png(results_dir / seq / p.name)
    if pred.shape != true_ids.shape[1:]:
      raise ValueError(
        f"{results_dir / seq / p.name}: size {pred.shape[::-1]} (WxH) differs from "
        f"the GT {true_ids.shape[1:][::-1]}"
      )
    preds.append(pred)
  return evaluate_sequence(
    true_ids,
    np.stack(preds),
    protocol,
    num_objects=num_objects,
    name=seq,
    frame_names=[p.stem for p in selected],
    bound_th=bound_th,
  )


def evaluate_folders(
  gt,
  results,
  protocol: str = "davis2016",
  sequences=None,
  frames: str | None = None,
  workers: int = 1,
  bound_th: float = 0.008,
) -> EvaluationResults:
  """Evaluates a results folder (one sub-folder of PNGs per sequence) against DAVIS GT.

  Args:
    gt: DAVIS root (with Annotations[_unsupervised]/480p) or the folder of sequence folders.
    results: folder of sequence folders with one PNG per GT frame (same file names).
    protocol: a key of PROTOCOLS.
    sequences: names to evaluate; default every GT sequence.
    frames: 'all' or '1:-1'; default the protocol's.
    workers: processes over sequences.

  Returns:
    EvaluationResults.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
  frames = frames or PROTOCOLS[protocol].default_frames
  _frame_slice(frames)
  annotation_dir = resolve_annotation_dir(Path(gt), protocol)
  results = Path(results)
  if not results.is_dir():
    raise FileNotFoundError(f"results folder {results} does not exist")
  available = list_mask_sequences(annotation_dir)
  if sequences is None:
    sequences = available
    if not sequences:
      raise FileNotFoundError(f"no sequence folders with PNG masks in {annotation_dir}")
  for seq in sequences:
    if seq not in available:
      raise FileNotFoundError(f"GT sequence {annotation_dir / seq} not found (or has no PNG)")
    if not (results / seq).is_dir():
      raise FileNotFoundError(
        f"results folder lacks sequence {results / seq} (use --sequences to evaluate a subset)"
      )
  jobs = [(annotation_dir, results, seq, protocol, frames, bound_th) for seq in sequences]
  if workers > 1 and len(jobs) > 1:
    # spawn, not fork: the caller may be a multithreaded JAX program.
    with futures.ProcessPoolExecutor(
      min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
      scored = list(pool.map(_evaluate_folder_sequence, jobs))
  else:
    scored = [_evaluate_folder_sequence(job) for job in jobs]
  return EvaluationResults(protocol, frames, scored)
