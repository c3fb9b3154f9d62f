"""One store class per area; each takes the `Database` it needs and holds that area's SQL."""
