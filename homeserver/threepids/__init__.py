"""Third-party identifiers (e-mail addresses): validating them by mail, binding them to
accounts."""
