"""cybn: a low-level CUDA batch-normalisation engine (placeholder until the engine core lands)."""
