"""Overhead benchmarks: Timestep next to a hand-written HTTP loop, the `openai` client and peer libraries.

Run ``python -m benchmarks --help``; see ``docs/benchmarks.md``.
"""
