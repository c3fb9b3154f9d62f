"""Inbound federation: the HTTP endpoints other servers call, and their authentication."""
