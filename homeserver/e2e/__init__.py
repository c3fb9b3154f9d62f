"""End-to-end encryption: device and one-time keys, cross-signing (keys.py), device lists,
send-to-device messages and key backup."""
