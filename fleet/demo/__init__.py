"""The demo's process runner: simulated hosts (agents on simulated GPUs) and simulated vLLM
engines started as real processes, for ``manage.py demo`` and the browser tests."""
