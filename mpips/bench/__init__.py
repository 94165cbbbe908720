"""Benchmarks: commands that print what they measured, side by side."""
