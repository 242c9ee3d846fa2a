"""Randomized, seeded stress test of every backend: workers, faults, a history, a property checker."""
