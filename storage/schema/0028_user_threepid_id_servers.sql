-- Which identity servers this server bound a user's third-party identifiers at
-- (/account/3pid/bind), so that removing the address or deactivating the account can unbind
-- it there again. The address is as the identity server reported it; it need not be one of
-- the account's own (user_threepids).
CREATE TABLE user_threepid_id_servers (
    user_id TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    id_server TEXT NOT NULL,
    PRIMARY KEY (user_id, medium, address, id_server)
);
