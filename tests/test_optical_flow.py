"""DIS flow recovers a known shift; .flo round trip; RAFT folder reading; flow cache."""

import cv2
import numpy as np
import pytest

from vosjax.data import optical_flow


def texture(height=96, width=128, seed=0) -> np.ndarray:
  noise = np.random.default_rng(seed).random((height, width)).astype(np.float32)
  smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
  smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
  return np.repeat(smooth[..., None], 3, -1)


def shifted(image: np.ndarray, d_row: float, d_col: float) -> np.ndarray:
  """out(y, x) = image(y - d_row, x - d_col): content moves by (d_row, d_col)."""
  matrix = np.float32([[1, 0, d_col], [0, 1, d_row]])
  return cv2.warpAffine(
    image, matrix, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
  )


@pytest.mark.parametrize("preset", ["medium", "fine"])
def test_dis_flow_recovers_translation(preset):
  frame_a = texture()
  frame_b = shifted(frame_a, 3.0, -2.0)
  forward = optical_flow.video_flow(np.stack([frame_a, frame_b]), 1, preset)
  flow = forward[0]
  assert flow.shape == (96, 128, 2) and flow.dtype == np.float32
  interior = flow[16:-16, 16:-16].reshape(-1, 2)
  np.testing.assert_allclose(np.median(interior, 0), [3.0, -2.0], atol=0.2)
  # Reverse direction: the opposite shift.
  back = optical_flow.video_flow(np.stack([frame_a, frame_b]), -1, preset)[1]
  back = back[16:-16, 16:-16].reshape(-1, 2)
  np.testing.assert_allclose(np.median(back, 0), [-3.0, 2.0], atol=0.2)


def test_video_flow_gaps_and_validity():
  base = texture(64, 80)
  video = np.stack([shifted(base, 1.0 * t, 0.0) for t in range(5)])
  flows = optical_flow.video_flow(video, gap=2)
  assert flows.shape == (5, 64, 80, 2)
  np.testing.assert_array_equal(optical_flow.valid_gap_frames(5, 2), [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(flows[3:], 0.0)
  np.testing.assert_allclose(np.median(flows[0, 12:-12, 12:-12, 0]), 2.0, atol=0.2)
  back = optical_flow.video_flow(video, gap=-1)
  np.testing.assert_array_equal(back[0], 0.0)
  np.testing.assert_allclose(np.median(back[4, 12:-12, 12:-12, 0]), -1.0, atol=0.2)
  with pytest.raises(ValueError, match="preset"):
    optical_flow.video_flow(video[:2], 1, "slow")


def test_resize_flow_rescales_vectors():
  flow = np.zeros((2, 40, 60, 2), np.float32)
  flow[..., 0], flow[..., 1] = 4.0, -6.0
  out = optical_flow.resize_flow(flow, (20, 15))
  assert out.shape == (2, 20, 15, 2)
  np.testing.assert_allclose(out[..., 0], 2.0)
  np.testing.assert_allclose(out[..., 1], -1.5)


def test_flo_round_trip_and_layout(tmp_path):
  flow = np.random.default_rng(0).normal(size=(7, 11, 2)).astype(np.float32)
  path = optical_flow.write_flo(tmp_path / "a/00000.flo", flow)
  np.testing.assert_array_equal(optical_flow.read_flo(path), flow)
  raw = np.fromfile(path, np.float32)
  assert raw[0] == np.float32(202021.25)
  assert tuple(np.fromfile(path, np.int32)[1:3]) == (11, 7)  # width, height
  np.testing.assert_array_equal(raw[3:].reshape(7, 11, 2)[..., 0], flow[..., 1])  # u = dx first
  (tmp_path / "bad.flo").write_bytes(b"\x00" * 40)
  with pytest.raises(ValueError, match="bad.flo: not a .flo"):
    optical_flow.read_flo(tmp_path / "bad.flo")
  (tmp_path / "short.flo").write_bytes(path.read_bytes()[:-8])
  with pytest.raises(ValueError, match="short.flo"):
    optical_flow.read_flo(tmp_path / "short.flo")


def test_read_raft_flow_folders(tmp_path):
  rng = np.random.default_rng(1)
  names = [f"{t:05d}" for t in range(4)]
  written = {}
  for gap in (1, -2):
    for t in np.flatnonzero(optical_flow.valid_gap_frames(4, gap)):
      written[gap, t] = rng.normal(size=(8, 12, 2)).astype(np.float32)
      optical_flow.write_flo(
        optical_flow.raft_flow_dir(tmp_path, "seq", gap, "480p") / f"{names[t]}.flo",
        written[gap, t],
      )
  forward = optical_flow.read_raft_flows(tmp_path, "seq", 1, names, res="480p")
  assert forward.shape == (4, 8, 12, 2)
  np.testing.assert_array_equal(forward[0], written[1, 0])
  np.testing.assert_array_equal(forward[3], 0.0)  # 3 + 1 is outside the sequence.
  backward = optical_flow.read_raft_flows(tmp_path, "seq", -2, names, resolution=(4, 6), res="480p")
  np.testing.assert_allclose(backward[2], optical_flow.resize_flow(written[-2, 2], (4, 6)))
  (optical_flow.raft_flow_dir(tmp_path, "seq", 1, "480p") / "00001.flo").unlink()
  with pytest.raises(FileNotFoundError, match="00001.flo"):
    optical_flow.read_raft_flows(tmp_path, "seq", 1, names, res="480p")


def test_cache_computes_once_and_writes_atomically(tmp_path):
  calls = []

  def compute(gap):
    calls.append(gap)
    return np.full((3, 4, 5, 2), gap, np.float32)

  first = optical_flow.cached_flows(tmp_path, "set/seq", (1, -1), (4, 5), compute)
  second = optical_flow.cached_flows(tmp_path, "set/seq", (1, -1, 2), (4, 5), compute)
  assert calls == [1, -1, 2]
  np.testing.assert_array_equal(second[-1], first[-1])
  np.testing.assert_array_equal(second[2], 2.0)
  files = sorted(p.name for p in (tmp_path / "set/seq").iterdir())
  assert files == ["dis-medium_gap-1_4x5.npy", "dis-medium_gap1_4x5.npy", "dis-medium_gap2_4x5.npy"]
  with pytest.raises(ValueError, match="expected"):
    optical_flow.cached_flows(tmp_path, "set/seq", (3,), (4, 5), lambda gap: np.zeros((3, 4, 4, 2)))
  (tmp_path / "set/seq/dis-medium_gap1_4x5.npy").write_bytes(b"junk")
  with pytest.raises(ValueError, match="corrupt flow cache"):
    optical_flow.cached_flows(tmp_path, "set/seq", (1,), (4, 5), compute)
