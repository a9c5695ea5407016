"""The pages people use, served by ``swapstream serve`` itself (no CDN, no build step): jobs, results, analyse,
swap a photo, and ``/live``; their assets are in ``static/``. They call the same ``/v1`` API as any client.
Imports nothing of the other rooms; the ingestion service (``jobs``) mounts it on its app."""
