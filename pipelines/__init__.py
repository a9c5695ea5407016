"""DALI pipelines, each parametrised by device ("gpu" or "cpu"): decode, detector downscale, batched alignment,
blending, and the face templates. Imports nothing of the services."""
