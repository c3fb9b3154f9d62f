"""Accounts, passwords, access and refresh tokens, devices and user-interactive auth."""
