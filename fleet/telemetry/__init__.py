"""Telemetry: hosts register, report every interval and get their reply; reports become rows
(bulk writes on the hot path), rows become rollups; the agent's own distribution."""
