"""Training: partitioning, train state, optimizers, steps, checkpoint import/export."""
