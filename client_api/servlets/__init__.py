"""One module per area of the client API; `client_api.routes` lists them all."""
