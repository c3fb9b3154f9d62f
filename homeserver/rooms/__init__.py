"""Rooms: creating events, creating rooms, membership, sending, aliases and the directory."""
