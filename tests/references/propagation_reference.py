"""Our PyTorch transcriptions of the official label propagation loops (for the tests only).

- `dino_reference`: facebookresearch/dino `eval_video_segmentation.py` (`eval_video_tracking_davis`,
  `label_propagation`, `restrict_neighborhood`, `norm_mask`), on given per-frame features.
- `crw_reference`: SMTC `src/eval_prop.py` `test` with `test_utils.context_index_bank`,
  `mem_efficient_batched_affinity` and `MaskedAttention` (padded start, long-term frame 0 without
  the radius mask), on given per-frame features at the label grid.
- `vos_reference_*`: SMTC/videowalk `vos.py` `VOSDataset` labels under `--cropSize` and
  `dump_predictions` + eval_vip.py's resize (the VIP part path).
- `jhmdb_reference_*`: videowalk's JHMDB test path: `code/data/jhmdb.py` (`load_image`, the
  `--cropSize` resize, `pos_img - 1` scaled to the label grid, `draw_labelmap_np`, background
  channel), `utils/test_utils.process_pose` and `code/eval/eval_pck.py` (feat_res scaling, PCK).
All written from reading the official code, dense as the originals are.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def square_neighbourhood(h: int, w: int, size: int) -> torch.Tensor:
  """[h*w (query), h*w (key)] 1 where |di| <= size and |dj| <= size (restrict_neighborhood)."""
  i = torch.arange(h)
  j = torch.arange(w)
  near_i = (i[:, None] - i[None, :]).abs() <= size
  near_j = (j[:, None] - j[None, :]).abs() <= size
  return (near_i[:, None, :, None] & near_j[None, :, None, :]).reshape(h * w, h * w).float()


def dino_reference(features, first_onehot, patch, n_last=7, size=12, topk=5, temperature=0.1):
  """features float32 [T, h, w, C] (raw), first_onehot [h, w, K].

  Returns (soft [T, h, w, K] as numpy, maps [T-1, h*patch, w*patch, K] after norm_mask, ids
  [T-1, h*patch, w*patch]) for frames 1..T-1.
  """
  feats = torch.from_numpy(np.asarray(features, np.float32))
  num_frames, h, w, dim = feats.shape
  first_seg = torch.from_numpy(np.asarray(first_onehot, np.float32)).permute(2, 0, 1)[None]
  queue = []
  frame1_feat = feats[0].reshape(-1, dim).T  # dim x h*w
  mask = square_neighbourhood(h, w, size) if size > 0 else None
  softs, maps, ids = [first_seg[0].permute(1, 2, 0).numpy()], [], []
  for t in range(1, num_frames):
    used_feats = [frame1_feat] + [f for f, _ in queue]
    used_segs = [first_seg] + [s for _, s in queue]
    feat_tar = feats[t].reshape(-1, dim)
    ncontext = len(used_feats)
    sources = F.normalize(torch.stack(used_feats), dim=1, p=2)
    target = F.normalize(feat_tar, dim=1, p=2).unsqueeze(0).repeat(ncontext, 1, 1)
    aff = torch.exp(torch.bmm(target, sources) / temperature)
    if mask is not None:
      aff *= mask.unsqueeze(0).repeat(ncontext, 1, 1)
    aff = aff.transpose(2, 1).reshape(-1, h * w)
    kth, _ = torch.min(torch.topk(aff, dim=0, k=topk)[0], dim=0)
    aff[aff < kth] = 0
    aff = aff / torch.sum(aff, keepdim=True, axis=0)
    segs = torch.cat(used_segs)
    classes = segs.shape[1]
    segs = segs.reshape(ncontext, classes, -1).transpose(2, 1).reshape(-1, classes).T
    seg_tar = torch.mm(segs, aff).reshape(1, classes, h, w)
    if len(queue) == n_last:
      queue.pop(0)
    queue.append((feat_tar.T, seg_tar.clone()))
    up = F.interpolate(
      seg_tar,
      scale_factor=patch,
      mode="bilinear",
      align_corners=False,
      recompute_scale_factor=False,
    )[0]
    for c in range(up.shape[0]):
      if up[c].max() > 0:
        up[c] = up[c] - up[c].min()
        up[c] = up[c] / up[c].max()
    softs.append(seg_tar[0].permute(1, 2, 0).numpy())
    maps.append(up.permute(1, 2, 0).numpy())
    ids.append(torch.max(up, dim=0)[1].numpy().astype(np.uint8))
  return np.stack(softs), np.stack(maps), np.stack(ids)


def dino_reference_resize(ids: np.ndarray, frame_hw) -> np.ndarray:
  """The final `Image.fromarray(seg).resize((ori_w, ori_h), 0)`."""
  return np.asarray(Image.fromarray(ids).resize((frame_hw[1], frame_hw[0]), 0))


def circle_mask(h: int, w: int, radius: float) -> torch.Tensor:
  """[h*w (key), h*w (query)] 0 inside sqrt(d2) < radius, -1e10 outside (MaskedAttention)."""
  gx, gy = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
  dist = (gx[None, None] - gx[:, :, None, None]) ** 2 + (gy[None, None] - gy[:, :, None, None]) ** 2
  inside = (dist.float() ** 0.5 < radius).float().reshape(h * w, h * w)
  out = inside.clone()
  out[inside == 0] = -1e10
  out[inside == 1] = 0
  return out


def crw_reference(
  features, first_soft, video_len=20, radius=7.0, topk=7, temperature=0.2, forced=None
):
  """features float32 [T, h, w, C] at the label grid (raw), first_soft [h, w, K].

  forced: optional [T, h, w, K] soft maps stored as the context labels instead of the
  reference's own predictions (teacher forcing: checks each step on the same context).

  Returns (soft [T, h, w, K] numpy, frame 0 = first_soft as `pred = lbls[0]`; gaps [T, h, w]:
  the k-th minus the (k+1)-th largest logit of each query, small where top-k is a float tie).
  """
  feats = torch.from_numpy(np.asarray(features, np.float32)).permute(3, 0, 1, 2)  # C T h w
  dim, num_frames, h, w = feats.shape
  padded = torch.cat([feats[:, :1].repeat(1, video_len, 1, 1), feats], dim=1)[None]
  padded = F.normalize(padded, dim=1)
  total = padded.shape[2]
  long_term = torch.zeros(total - video_len, 1).long()
  short = (
    torch.arange(video_len)[None].repeat(total - video_len, 1)
    + torch.arange(total - video_len)[:, None]
  )
  key_indices = torch.cat([long_term, short], dim=-1)
  keys = padded[:, :, key_indices].flatten(-2)  # 1 C N T hw
  query = padded[:, :, video_len:].flatten(-2)  # 1 C N hw
  mask = circle_mask(h, w, radius)
  first = torch.from_numpy(np.asarray(first_soft, np.float32))
  lbls = torch.cat(
    [first[None].repeat(video_len, 1, 1, 1), torch.zeros((num_frames,) + first.shape)]
  )
  out, gaps = [], []
  for t in range(num_frames):
    a = torch.einsum("ijlm,ijn->ilmn", keys[:, :, t], query[:, :, t])  # 1 T hw hw_q
    a[0, 1:] += mask
    a = a.reshape(-1, h * w) / temperature
    ranked = torch.topk(a, topk + 1, dim=0)[0]
    gaps.append((ranked[topk - 1] - ranked[topk]).view(h, w).numpy())
    weights, idx = torch.topk(a, topk, dim=0)
    weights = F.softmax(weights, dim=0)
    ctx = lbls[key_indices[t]].flatten(0, 2).transpose(0, 1)  # K x T*hw
    pred = (ctx[:, idx] * weights[None]).sum(1).view(-1, h, w).permute(1, 2, 0)
    if t == 0:
      pred = lbls[0]
    out.append(pred.numpy().copy())
    lbls[t + video_len] = pred if forced is None else torch.from_numpy(np.array(forced[t]))
  return np.stack(out), np.stack(gaps)


def jhmdb_reference_frames(paths, img_size, map_scale, mean, std):
  """JhmdbSet's frames (cv2.imread, /255, BGR->RGB, cv2 resize to img_size^2, color_normalize)
  then eval_prop.py's trilinear resize to multiples of map_scale: float32 [T, H, W, 3]."""
  imgs = []
  for path in paths:
    img = cv2.imread(str(path)).astype(np.float32) / 255.0
    img = img[:, :, ::-1].copy()
    ht, wd = img.shape[:2]
    if img_size > 0:
      img = cv2.resize(img, (img_size, img_size))
    img = torch.from_numpy(np.transpose(img, (2, 0, 1))).float()
    for t, m, s_ in zip(img, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]):
      t.sub_(m)
      t.div_(s_)
    imgs.append(img)
  imgs = torch.stack(imgs)[None]  # 1 T 3 H W
  h, w = imgs.shape[-2:]
  new_h, new_w = h // map_scale * map_scale, w // map_scale * map_scale
  imgs = F.interpolate(imgs, size=(3, new_h, new_w), mode="trilinear")
  return imgs[0].permute(0, 2, 3, 1).numpy()


def draw_labelmap_reference(img, pt, sigma):
  """draw_labelmap_np (Gaussian): in place on img [h, w]."""
  ul = [int(pt[0] - 3 * sigma), int(pt[1] - 3 * sigma)]
  br = [int(pt[0] + 3 * sigma + 1), int(pt[1] + 3 * sigma + 1)]
  if ul[0] >= img.shape[1] or ul[1] >= img.shape[0] or br[0] < 0 or br[1] < 0:
    return img
  size = 6 * sigma + 1
  x = np.arange(0, size, 1, float)
  y = x[:, np.newaxis]
  x0 = y0 = size // 2
  g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
  g_x = max(0, -ul[0]), min(br[0], img.shape[1]) - ul[0]
  g_y = max(0, -ul[1]), min(br[1], img.shape[0]) - ul[1]
  img_x = max(0, ul[0]), min(br[0], img.shape[1])
  img_y = max(0, ul[1]), min(br[1], img.shape[0])
  img[img_y[0] : img_y[1], img_x[0] : img_x[1]] = g[g_y[0] : g_y[1], g_x[0] : g_x[1]]
  return img


def jhmdb_reference_labels(pos_img, frame_hw, img_size, map_scale, sigma=0.5):
  """JhmdbSet's label tensor of frame 0: float32 [h, w, 1 + J] (background first).

  pos_img: the .mat's [2, J, T] 1-based coordinates."""
  ht, wd = frame_hw
  newh, neww = (img_size, img_size) if img_size > 0 else (ht, wd)
  rsz_h, rsz_w = math.ceil(newh / map_scale), math.ceil(neww / map_scale)
  lbls_coord = np.array(pos_img, np.float64) - 1
  lbls_coord[0, :, :] = lbls_coord[0, :, :] * float(neww) / float(wd) / map_scale
  lbls_coord[1, :, :] = lbls_coord[1, :, :] * float(newh) / float(ht) / map_scale
  lbls = np.zeros((lbls_coord.shape[2], rsz_h, rsz_w, lbls_coord.shape[1]))
  for i in range(lbls_coord.shape[2]):
    for j in range(lbls_coord.shape[1]):
      if sigma > 0:
        draw_labelmap_reference(lbls[i, :, :, j], lbls_coord[:, j, i], sigma)
      else:
        tx, ty = int(lbls_coord[0, j, i]), int(lbls_coord[1, j, i])
        if 0 <= tx < rsz_w and 0 <= ty < rsz_h:
          lbls[i, ty, tx, j] = 1.0
  first = torch.from_numpy(lbls[0]).float()
  return torch.cat([(first.sum(-1) == 0)[..., None] * 1.0, first], dim=-1).numpy()


def process_pose_reference(pred, topk=3):
  """process_pose: pred [h, w, 1 + J] -> ([2, J] grid (x, y), -1 for all-zero channels;
  [J] gaps: the k-th minus the (k+1)-th largest value, 0 where top-k picks among ties)."""
  pred = torch.from_numpy(np.array(pred, np.float32))[..., 1:]
  flatlbls = pred.flatten(0, 1)
  topk = min(flatlbls.shape[0], topk)
  ranked = torch.topk(flatlbls, k=min(flatlbls.shape[0], topk + 1), dim=0)[0]
  gaps = (ranked[topk - 1] - ranked[-1]).numpy() if len(ranked) > topk else None
  vals, ids = torch.topk(flatlbls, k=topk, dim=0)
  vals /= vals.sum(0)[None]
  xx, yy = ids % pred.shape[1], ids // pred.shape[1]
  current_coord = torch.stack([(xx * vals).sum(0), (yy * vals).sum(0)], dim=0)
  current_coord[:, flatlbls.sum(0) == 0] = -1
  return current_coord.numpy(), gaps


def eval_pck_reference(preds, gts, heights, widths, feat_res, thresholds=(0.1, 0.2)):
  """eval_pck.py: preds [2, J, T] grid coordinates per video (the .dat files), gts pos_img
  [2, J, T] (1-based), frame sizes; returns {threshold: PCK}."""
  dist_all = {}
  for predres, pos_img, height, width in zip(preds, gts, heights, widths):
    nowgt = np.asarray(pos_img, np.float64) - 1
    predres = np.array(predres, np.float64)
    visible = np.ones(predres.shape[1:])
    visible[predres[0] < 0] = 0
    predres[0] = predres[0] / float(feat_res) * width
    predres[1] = predres[1] / float(feat_res) * height
    boxes = np.zeros(nowgt.shape[2])
    for k in range(nowgt.shape[2]):
      minx, maxx, miny, maxy = 1e6, -1, 1e6, -1
      for j in range(nowgt.shape[1]):
        if visible[j, k] == 0:
          continue
        minx, miny = np.min([minx, nowgt[0, j, k]]), np.min([miny, nowgt[1, j, k]])
        maxx, maxy = np.max([maxx, nowgt[0, j, k]]), np.max([maxy, nowgt[1, j, k]])
      boxes[k] = 0.6 * np.linalg.norm(np.subtract([maxx, maxy], [minx, miny]))
    for j in range(nowgt.shape[1]):
      for k in range(nowgt.shape[2]):
        if visible[j, k] == 0 or k == 0:
          continue
        d = np.linalg.norm(np.subtract(predres[:, j, k], nowgt[:, j, k]))
        dist_all.setdefault(j, []).append(d / boxes[k])
  out = {}
  for threshold in thresholds:
    per_joint = [100.0 * np.sum(np.asarray(d) <= threshold) / len(d) for d in dist_all.values()]
    out[threshold] = float(np.mean(per_joint))
  return out


def vos_reference_labels(label_path, img_size, map_scale):
  """VOSDataset's first-frame labels: ([h, w, K] soft one-hot, label set [K] or [K, 3])."""
  lblimg = cv2.imread(str(label_path))
  if img_size > 0:
    lblimg = cv2.resize(lblimg, (img_size, img_size), cv2.INTER_NEAREST)
  lbls = lblimg[None]
  lblset = np.unique(lbls[0].copy().reshape(-1, lbls.shape[-1]).astype(np.uint8), axis=0)
  if np.all((lblset[1:] - lblset[:-1]) == 1):
    lblset = lblset[:, 0:1]
  rsz_h = math.floor(lblimg.shape[0] / map_scale)
  rsz_w = math.floor(lblimg.shape[1] / map_scale)
  onehot = np.stack([np.all(lbls[0] == ll, axis=-1) for ll in lblset], axis=-1)
  return cv2.resize(np.float32(onehot), (rsz_w, rsz_h), cv2.INTER_LINEAR), lblset


def vos_reference_readout(pred, lblset, img_size, gt_hw):
  """dump_predictions at the crop size, then eval_vip.py's PIL NEAREST to the GT size: [H, W]."""
  pred_dist = cv2.resize(np.asarray(pred, np.float32), (img_size, img_size))
  if pred_dist.ndim == 2:
    pred_dist = pred_dist[..., None]
  pred_lbl = np.array(lblset, dtype=np.int32)[np.argmax(pred_dist, axis=-1)]
  image = Image.fromarray(np.uint8(pred_lbl)[..., -1] if pred_lbl.ndim == 3 else np.uint8(pred_lbl))
  return np.array(image.resize((gt_hw[1], gt_hw[0]), Image.NEAREST), np.int32), pred_dist
