"""The gateway: an OpenAI-compatible front door that routes each request by complexity.

A plain ASGI application (no Django on the request path): it answers from an in-memory
routing table that a background task refreshes from the database, and writes its request
log in batches from another background task. ``fleet.project.asgi`` mounts it under ``/v1/``;
``python -m fleet.gateway`` runs it alone under uvicorn.
"""
