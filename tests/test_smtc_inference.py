"""SMTC multi-object inference (vosjax.methods.smtc.inference): the chunks of `eval_multi.py`, the
official evaluator's post-processing of the candidate masks (against a stock-PyTorch transcription
of `davis2017-evaluation/davis2017/results.py::load_davis`), and chunked prediction over calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.tiny_configs import tiny_smtc_config
from vosjax.evaluation import windows
from vosjax.methods import interface
from vosjax.methods import smtc
from vosjax.methods.smtc import inference


def official_chunks(num_frames: int, chunk: int) -> list[list[int]]:
  """The frames of each model call of `eval_multi.py::inference` (`rgbs[:, i:i+n_f]`, filled with
  `rgbs[:, -(n_f-bs):]`), as Python slicing does it."""
  frames = list(range(num_frames))
  calls = []
  for i in range(0, num_frames, chunk):
    call = frames[i : i + chunk]
    if len(call) < chunk:
      call = call + frames[-(chunk - len(call)) :]
    calls.append(call)
  return calls


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5])
def test_chunks_are_the_official_calls(chunk):
  for num_frames in range(chunk, 23):  # the official needs T >= chunk (its model has T frames)
    frames, positions = inference.chunk_indices(num_frames, chunk)
    assert frames.tolist() == official_chunks(num_frames, chunk), num_frames
    # The official keeps score[0, :bs] of each call: the first frames of each chunk, in order.
    np.testing.assert_array_equal(frames.reshape(-1)[positions], np.arange(num_frames))
  frames, _ = inference.chunk_indices(2, 4)  # shorter than a chunk: cyclic (the official fails)
  assert frames.tolist() == [[0, 1, 0, 1]]


def official_load_davis(
  instance_masks: np.ndarray, similarity: np.ndarray, height: int, width: int
) -> np.ndarray:
  """Transcription of the official pipeline with torch: `inference` keeps
  `masks[i][scores[i] >= 0.5]` per frame (masks `[T, K, 1, h, w]`), `load_davis` upsamples each
  frame's candidates (`F.interpolate`, default nearest), min-max normalises each over H*W,
  thresholds > 0.3 and zero-pads the frames to the largest count. -> bool `[max_obj, T, H, W]`."""
  masks = torch.from_numpy(instance_masks).unsqueeze(2)
  scores = torch.from_numpy(similarity)
  results, max_obj = [], 0
  for t in range(len(masks)):
    v = masks[t][scores[t] >= 0.5]
    mask = F.interpolate(v, (height, width))[:, 0]
    num_obj = mask.shape[0]
    max_obj = max(max_obj, num_obj)
    mask = mask.view(num_obj, height * width)
    mask = (mask - torch.min(mask, dim=1, keepdim=True)[0]) / (
      torch.max(mask, dim=1, keepdim=True)[0] - torch.min(mask, dim=1, keepdim=True)[0]
    )
    results.append((mask.view(num_obj, height, width) > 0.3))
  for i, mask in enumerate(results):
    if mask.shape[0] < max_obj:
      new = torch.zeros(max_obj, *mask.shape[1:], dtype=torch.bool)
      new[: mask.shape[0]] = mask
      results[i] = new
  return torch.stack(results, dim=1).numpy()


@pytest.mark.parametrize(
  "grid,frame_size",
  [((6, 10), (37, 61)), ((6, 10), (48, 80)), ((7, 9), (5, 20)), ((30, 50), (480, 854))],
)
def test_candidate_masks_equal_the_official_evaluator(grid, frame_size):
  rng = np.random.default_rng(sum(grid) + frame_size[0])
  num_frames, num_candidates = 5, 12
  # Products of softmaxes as the model's instance masks; a constant mask (max == min: the
  # official's 0 / 0 gives an empty mask) and exact ties at the maximum.
  masks = rng.dirichlet(np.ones(num_candidates), size=(num_frames,) + grid)
  masks = np.moveaxis(masks * rng.random((num_frames,) + grid + (1,)), -1, 1).astype(np.float32)
  masks[1, 3] = 0.25
  masks[2, 4] = masks[2, 5]
  similarity = rng.uniform(-1, 1, (num_frames, num_candidates)).astype(np.float32)
  similarity[:, 3:6] = 0.9  # valid: the constant and the tied masks take part
  similarity[0, 7] = 0.5  # >= 0.5 counts
  valid = similarity >= 0.5
  config = smtc.default_config()
  token_masks, ids = smtc.candidate_masks(masks, valid, frame_size, config)
  assert token_masks.shape == masks.shape and ids.shape == (num_frames,) + grid
  frame_masks = windows.upsample_nearest_floor(token_masks, frame_size)  # [T, K, H, W]

  official = official_load_davis(masks, similarity, *frame_size)
  assert official.shape[:2] == (valid.sum(1).max(), num_frames)
  for t in range(num_frames):
    ours = frame_masks[t][valid[t]]
    np.testing.assert_array_equal(ours, official[: len(ours), t])
    assert not official[len(ours) :, t].any()
    assert not frame_masks[t][~valid[t]].any()
  assert not frame_masks[1, 3].any() and frame_masks[2, 4].any()

  # Id map: at each pixel the valid candidate with the highest normalised value, if > 0.3.
  rows = (np.arange(frame_size[0]) * grid[0]) // frame_size[0]
  cols = (np.arange(frame_size[1]) * grid[1]) // frame_size[1]
  full = masks[:, :, rows][:, :, :, cols]  # float32, as the official
  low, high = full.min((2, 3), keepdims=True), full.max((2, 3), keepdims=True)
  normalised = np.where(
    valid[:, :, None, None] & (high > low), (full - low) / np.where(high > low, high - low, 1), -1
  )
  expected = np.where(normalised.max(1) > 0.3, normalised.argmax(1) + 1, 0)
  np.testing.assert_array_equal(windows.upsample_nearest_floor(ids, frame_size), expected)
  shown = np.take_along_axis(frame_masks, np.maximum(expected - 1, 0)[:, None], 1)[:, 0]
  assert (shown | (expected == 0)).all()  # an id lies inside its candidate's mask
  assert ((expected > 0) == frame_masks.any(1)).all()


def _setup(num_frames: int, size=(40, 56)):
  config = tiny_smtc_config()  # clip_length 3, inference at 32x32, 4 x 3 slots, tiny random ViT
  model = smtc.make_model(config)
  params = jax.jit(lambda rng: smtc.init_params(model, config, rng, smtc.example_batch(config)))(
    jax.random.key(0)
  )
  rng = np.random.default_rng(1)
  video = rng.random((num_frames,) + size + (3,)).astype(np.float32)
  return config, model, params, video


def test_predict_outputs_are_the_models_instance_masks_on_a_fixed_candidate_axis():
  config, model, params, video = _setup(num_frames=5)
  out = jax.jit(lambda p, v: smtc.predict(p, model, {"video": v}, config))(params, video[None])
  num_candidates = config.model.num_semantic_slots * config.model.num_instances
  assert out["candidates"].shape == (1, 5, num_candidates, 2, 2)
  assert out["candidate_valid"].shape == (1, 5, num_candidates)
  assert out["ids"].shape == (1, 5, 40, 56)
  # Chunks [0, 1, 2] and [3, 4, 4]: the last filled with the video's last frame (whose keys are
  # frame 3's previous frame in the cyclic correlation fusion).
  resized = inference.resize_video(jnp.asarray(video), (32, 32))
  chunks = resized[np.array([[0, 1, 2], [3, 4, 4]])]
  direct = jax.jit(lambda p, c: inference.inference_outputs(p, model, c, config))(params, chunks)
  masks = np.asarray(direct.instance_masks).reshape(6, num_candidates, 2, 2)
  similarity = np.asarray(direct.similarity).reshape(6, num_candidates)
  kept = [0, 1, 2, 3, 4]
  np.testing.assert_allclose(out["candidates"][0], masks[kept], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out["candidate_valid"][0], similarity[kept] >= 0.5)
  assert 0 < np.mean(out["candidate_valid"]) < 1, "all or no candidates make this test weak"


def test_chunked_calls_give_the_whole_video_prediction():
  config, model, params, video = _setup(num_frames=7, size=(32, 32))  # no resizing
  assert isinstance(smtc, interface.PredictsInChunks)
  assert isinstance(smtc, interface.ProposesCandidates)
  predict = jax.jit(lambda p, b: smtc.predict(p, model, b, config))
  whole = jax.device_get(predict(params, {"video": video[None]}))
  chunks, positions = smtc.chunk_layout(7, config)
  assert chunks.tolist() == [[0, 1, 2], [3, 4, 5], [6, 5, 6]]
  for per_call in (1, 2):  # 3 calls; 2 calls, the last filled with a copy of the last chunk
    parts = windows.predict_in_chunks(
      lambda b: jax.device_get(predict(params, b)),
      {"video": video},
      chunks,
      positions,
      per_call,
      progress=False,
    )
    assert set(parts) == {"candidates", "candidate_valid", "ids", "semantic_ids"}
    for name, value in parts.items():
      assert value.shape == whole[name].shape[1:], name
    np.testing.assert_allclose(parts["candidates"], whole["candidates"][0], rtol=1e-5, atol=1e-6)
    # Thresholds and argmaxes: other batch sizes may round differently, so near-ties may flip.
    for name in ("candidate_valid", "ids", "semantic_ids"):
      assert np.mean(parts[name] == whole[name][0]) > 0.95, name

  # The segmenting path: ids at the frame size from the candidates, and the candidates.
  frames = np.round(video * 255).astype(np.uint8)
  inputs = smtc.segment_inputs(frames, config, cache_dir=None, cache_key="", flow_preset="")
  np.testing.assert_allclose(inputs["video"], frames / 255.0, atol=1e-6)  # 32x32 already
  # 6 frames: calls of 2 chunks, as `parts` (the same program: binarised masks are compared
  # exactly; min-max normalisation amplifies the float noise of nearly flat masks).
  ids, (masks, valid) = windows.segment_frames(
    smtc, lambda b: jax.device_get(predict(params, b)), inputs, config, 6, (40, 56), progress=False
  )
  assert ids.shape == (7, 40, 56) and ids.dtype == np.uint8
  assert masks.shape == (7, 12, 2, 2) and valid.shape == (7, 12)
  parts = windows.predict_in_chunks(
    lambda b: jax.device_get(predict(params, b)), inputs, chunks, positions, 2, progress=False
  )
  expected_masks, expected_ids = smtc.candidate_masks(
    parts["candidates"], parts["candidate_valid"], (40, 56), config
  )
  np.testing.assert_array_equal(ids, windows.upsample_nearest_floor(expected_ids, (40, 56)))
  np.testing.assert_array_equal(masks, expected_masks)
