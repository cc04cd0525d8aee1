"""The trace simulator and the simulated demo fleet: production policies replayed on real traffic."""
