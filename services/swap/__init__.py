"""What one swap job does, frames in and frames out: the staged pipeline (decode, detect and track, align, swap
and blend, encode), face selection, tracking and smoothing, the ffmpeg encoder, and face analysis (head pose).
May import ``swapstream.pipelines`` and ``swapstream.services.triton``."""
