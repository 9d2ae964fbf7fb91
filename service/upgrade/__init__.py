"""The upgrade domain: starting and controlling an upgrade (``control``), scoring the gallery
into the backfill order (``scoring``), live checkpoints (``checkpoints``, ``probes``),
completion (``progress``), what ``GET /upgrade`` shows (``view``), and reading gallery images
back for re-encoding (``images``)."""
