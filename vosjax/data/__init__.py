"""Input pipelines: MOVi through TFDS, the synthetic MOVi-format dataset, DAVIS folders, videos."""
