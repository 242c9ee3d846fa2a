"""Blocking handles, generated from ``fencelock._async`` by ``scripts/unasync.py``; do not edit."""
