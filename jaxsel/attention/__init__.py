"""TokenSelect attention sparsity, adaptive-temperature softmax and baselines (pure JAX)."""
