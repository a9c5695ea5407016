"""swapstream's services, one folder per concern; ``cli.py`` delegates to each.

- ``triton/``: serving the networks (embedded server, backend, repository, glue graphs, stand-ins, model store,
  gRPC client). Imports only ``pipelines`` (face templates).
- ``swap/``: one swap job, frames in and frames out (staged pipeline, selection, tracking, encoder, head pose).
  Imports ``pipelines`` and ``triton``.
- ``jobs/``: the ingestion service (HTTP API, ``serve``, workers, uploads, job store, metrics); it mounts the
  pages and the live streams on its app. Imports every room below it.
- ``web/``: the pages and their assets. Imports nothing of the other rooms.
- ``live/``: live camera streams over WebSocket, batched across streams. Imports ``swap``, ``triton``, ``pipelines``.

Dependencies point one way, down this list; ``tests/test_layout.py`` fails on an import that points up.
"""
