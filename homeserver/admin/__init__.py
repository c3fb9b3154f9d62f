"""The admin API's handlers, one module per area (`users.py`, `federation.py`,
`server_notices.py`; rooms, media, registration tokens and reports later), all recording
what they change through `audit.AdminAudit`. Servlets are in `client_api/servlets/admin/`;
`cli.py` is `heddle admin`, which calls them over HTTP."""
