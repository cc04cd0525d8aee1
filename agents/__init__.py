"""Per-host agent: reads GPUs through NVML and scrapes inference servers.

Kept free of Django so it can run on GPU hosts with a minimal environment.
"""
