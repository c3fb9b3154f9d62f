"""The composition root's builders, one per area of the server.

`homeserver.app.HomeServer` calls them in this order, each taking only the areas it needs:

    core -> stores -> streams -> federation transport -> e2e -> auth -> user data
         -> rooms -> sync -> media -> federation -> admin

Each `build_<area>` returns a small frozen object holding that area's handlers. An area
built later may depend on one built earlier, never the reverse; where two areas truly need
each other (rooms and federation), rooms get a late-bound adapter typed by the Protocol
rooms declare (`homeserver.rooms.membership.RemoteMembership`), bound once federation exists.
A worker process builds only the areas its role needs.
"""
