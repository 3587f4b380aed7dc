"""Training and evaluation: target batches, the causal forward pass, the training loop, the evaluation harness with its baselines, metrics."""
