"""The HTTP ingestion service, ``swapstream serve``: the API, the Triton supervisor, worker threads, uploads and
their limits, the job store (SQLite or PostgreSQL), the service's metrics, and a launcher for a local service
process. May import ``swap``, ``triton`` and ``swapstream.pipelines``."""
