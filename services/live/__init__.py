"""Live face swap: camera streams over ``WS /v1/live``, their frames batched together across streams through
Triton's ``detect`` and ``swap``, and the ``swapstream live`` client. May import ``swap``, ``triton`` and
``swapstream.pipelines``; the ingestion service (``jobs``) mounts it on its app."""
