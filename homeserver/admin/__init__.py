"""The admin API's handlers, one module per area (`users.py` today; rooms, media,
registration tokens and reports later), all recording what they change through
`audit.AdminAudit`. Servlets are in `client_api/servlets/admin/`."""
