"""Server-server API (issue 4). Nothing is served from here yet."""
