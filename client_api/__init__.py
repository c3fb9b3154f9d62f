"""Client-server HTTP API: thin servlets that parse, validate and call handlers."""
