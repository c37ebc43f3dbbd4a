"""SoftPool: exponentially weighted pooling in 1, 2 and 3 spatial dimensions."""
