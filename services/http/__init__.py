"""The HTTP service: ``app.py`` assembles the FastAPI app from one router per resource (``jobs``, ``photos``,
``health``, ``options``; the live routes in ``swapstream.services.live.routes``, the pages in
``swapstream.services.web.pages``), with the dependencies in ``deps.py`` and the error answers in ``errors.py``.
May import every room below it (``jobs``, ``web``, ``live``, ``engine``, ...)."""
