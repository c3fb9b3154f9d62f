"""Storage: database engines, forward-only migrations and one store class per area."""
