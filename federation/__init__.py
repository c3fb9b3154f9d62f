"""Server-server API: transport, signing keys, inbound and outbound events, EDUs and queries."""
