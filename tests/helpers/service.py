"""HTTP calls to a running ``swapstream serve`` that several test modules make."""
from __future__ import annotations

from tests.helpers.media import MEDIA

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"


def submit(http, target, sources=(OBAMA,), **form):
    files = [("target", (target.name, target.read_bytes(), "application/octet-stream"))]
    files += [("source", (s.name, s.read_bytes(), "image/jpeg")) for s in sources]
    return http.post("/v1/jobs", files=files, data={k: str(v) for k, v in form.items()})


def stored_source(http, photo=OBAMA) -> str:
    """The id of ``photo`` stored as a live source (POST /v1/sources)."""
    answer = http.post("/v1/sources", files=[("source", (photo.name, photo.read_bytes(), "image/jpeg"))])
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def metric_values(http) -> dict[str, float]:
    """The service's /metrics as {series with labels: value}."""
    lines = http.get("/metrics").text.splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"}
