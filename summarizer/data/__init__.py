"""Event data: the event contract, validation with quarantine, synthetic lifelong data, MovieLens ingestion and per-user histories."""
