"""Push rules (spec: "Push Notifications" / "Push Rules"). Pushers and notifications are not
implemented: the server stores rules and serves them to clients."""
