"""Media repository (issue 5). Nothing is served from here yet."""
