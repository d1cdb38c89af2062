"""Dense correspondence by label propagation (semi-supervised VOS, keypoints, parts).

Flax-free: the propagation math works on feature maps from any backbone.
- `settings`: the named protocols (`dino`, `crw`, `crw_stride8`) as overridable ConfigDicts.
- `propagation`: the jitted, blocked affinity + top-k propagation of soft label maps.
- `readout`: soft maps -> label maps (each protocol's upsampling and argmax), keypoints.
"""
