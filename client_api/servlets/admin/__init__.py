"""The admin API's servlets, one module per area (`users.py`; `federation.py` for
federation destinations and the server's version; `register.py` for shared-secret
registration; rooms, media, registration tokens and reports later). Each
endpoint starts with `access.require_admin`; the work is in `homeserver/admin/`."""
