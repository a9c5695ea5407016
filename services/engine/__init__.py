"""The engine: the swap itself, frames in and frames out. ``swapper.py`` (FaceSwapper: detect, align, swap, blend;
immutable after build), ``swappers/`` (the pluggable face swappers behind one interface), ``selection.py`` (which
faces, and the smoothing switch), ``offline.py`` (a whole video or photo: staged threads, ``run_swap``),
``photos.py`` (the one photo reader), ``tracking.py``, ``encoder.py``, ``head_pose.py``, ``clock.py``, ``errors.py``.
May import ``swapstream.services.triton``, ``swapstream.pipelines`` and ``swapstream.services.options``."""
