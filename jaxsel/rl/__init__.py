"""Soft-Bellman learners: SAC (continuous control) and OREO (offline RL for multi-step reasoning)."""
