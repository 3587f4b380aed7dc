"""The model: event encoder, VISTA stage 1 (summarization), the stage-2 ranker, the assembled model and its artifacts."""
