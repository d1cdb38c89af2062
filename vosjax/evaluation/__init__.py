"""Evaluation that the training loop calls (one entry point, by data source), the DAVIS protocols,
metrics, baselines and the one reporter of results. Never calls the loop.

  tfds         MOVi-format videos: FG-ARI, mIoU, foreground J (`videos`).
  davis        DAVIS-layout folders with optical flow: davis2016 J/F of flow methods
  (`davis_flows`). frame_clips  frame folders (DAVIS / YouTube-VOS layout): masks of every frame,
  scored with the
               DAVIS-2017 unsupervised protocols where annotations exist (`frame_folders`).
"""

from __future__ import annotations

import ml_collections

from vosjax.data import pipeline
from vosjax.evaluation import davis_flows
from vosjax.evaluation import frame_folders
from vosjax.evaluation import videos


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  method,
  model,
  params,
  mesh,
  *,
  step: int,
  writer=None,
  write_outputs: bool = True,
  max_videos: int | None = None,
) -> dict:
  """Evaluates `params` on the config's evaluation data; writes and returns the metrics.

  `max_videos` limits the MOVi-format evaluation to the first videos (see `videos.evaluate`); the
  folder evaluations score every sequence.
  """
  source = pipeline.source(config)
  if source == "davis":
    return davis_flows.evaluate(
      config, workdir, method, model, params, step=step, writer=writer, write_outputs=write_outputs
    )
  if source == "frame_clips":
    return frame_folders.evaluate(
      config,
      workdir,
      method,
      model,
      params,
      mesh,
      step=step,
      writer=writer,
      write_outputs=write_outputs,
    )
  return videos.evaluate(
    config,
    workdir,
    method,
    model,
    params,
    mesh,
    step=step,
    writer=writer,
    write_outputs=write_outputs,
    max_videos=max_videos,
  )
