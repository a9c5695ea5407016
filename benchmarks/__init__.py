"""``swapstream bench``: the throughput harness and its frame-at-a-time baseline. May import everything of
``swapstream`` (it measures it), never the tests."""
