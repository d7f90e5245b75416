"""Evaluation: stream settings, the replay runner (in process or remote), and the studies built on it."""
