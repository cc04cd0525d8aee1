"""Deciding: the policies' actions turned into desired state, each change a logged decision
with its generation and event (``services``), and the evaluation loop that runs them (``evaluate``)."""
