"""Sync: stream tokens, the change index, the notifier, and the /sync computation."""
