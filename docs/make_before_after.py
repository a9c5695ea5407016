"""Makes docs/mesh-before-after.jpg: the mesh swapper on the shared media (source photo, then before | after).

    .venv/bin/python docs/make_before_after.py        # starts the embedded Triton on ../shared/models
"""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np

from swapstream.services.engine.clock import StageClock
from swapstream.services.engine.photos import read_photo
from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.engine.swappers.mesh import MeshSwapper
from swapstream.services.engine.tracking import TrackedFace
from swapstream.services.triton.client import SwapstreamClient
from swapstream.services.triton.repository import embedded_triton, shared_dir

MEDIA = shared_dir() / "media"
SOURCE = "img01_single_frontal_obama.jpg"
TARGETS = [("vid03_square_480_expressions.mp4", 120, None),   # an open mouth: the target's teeth stay
           ("vid01_talking_head_1280x720_audio.mp4", 100, (0, 720, 280, 1000)),
           ("img07_group6_t1.jpg", None, (40, 500, 440, 1280))]
WIDTH = 1200
OUT = Path(__file__).resolve().parent / "mesh-before-after.jpg"


def frame_of(name: str, number: int | None) -> np.ndarray:
    if number is None:
        return read_photo(MEDIA / name)
    with av.open(str(MEDIA / name)) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n == number:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{name} has no frame {number}")


def row(images: list[np.ndarray], width: int = WIDTH) -> np.ndarray:
    """The images side by side, 8 px apart, scaled to one height so that the row is ``width`` wide."""
    height = (width - 8 * (len(images) - 1)) / sum(i.shape[1] / i.shape[0] for i in images)
    scaled = [cv2.resize(i, (round(i.shape[1] * height / i.shape[0]), round(height)), interpolation=cv2.INTER_AREA)
              for i in images]
    gap = np.full((round(height), 8, 3), 255, np.uint8)
    joined = np.hstack([part for image in scaled for part in (image, gap)][:-1])
    return cv2.resize(joined, (width, joined.shape[0]))


def main() -> None:
    with embedded_triton([shared_dir() / "models"], announce=False) as (server, _):
        client = SwapstreamClient(server.grpc_url)
        engine = FaceSwapper(client, MeshSwapper(client))
        identity = engine.source_identity([MEDIA / SOURCE], [])
        pairs = []
        for name, number, window in TARGETS:
            rgb = frame_of(name, number)
            found = engine.detect(rgb[None])
            faces = [(0, TrackedFace(n, box, lm, lm, float(score), False))
                     for n, (box, lm, score) in enumerate(zip(found.boxes, found.landmarks, found.scores))]
            after = engine.swap_frames(rgb[None], faces, [identity], StageClock())[0]
            if window:
                y0, y1, x0, x1 = window
                rgb, after = rgb[y0:y1, x0:x1], after[y0:y1, x0:x1]
            pairs.append([rgb, after])
        client.close()
    source = read_photo(MEDIA / SOURCE)[:700]  # the face and shoulders
    rows = [row([source, *pairs[0]]), *(row(pair) for pair in pairs[1:])]
    gap = np.full((8, WIDTH, 3), 255, np.uint8)
    picture = np.vstack([part for r in rows for part in (r, gap)][:-1])
    cv2.imwrite(str(OUT), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"written: {OUT}")


if __name__ == "__main__":
    main()
