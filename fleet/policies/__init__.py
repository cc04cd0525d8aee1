"""Policies: pure functions from a fleet snapshot, settings and the time to actions."""
