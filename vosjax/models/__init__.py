"""Flax linen modules: slot attention, Motion Grouping, ViT backbones, the spatio-temporal block."""
