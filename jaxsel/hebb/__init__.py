"""SoftHebb: Hebbian soft winner-take-all learning without feedback."""
