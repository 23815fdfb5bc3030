-- Requests per client and rate-limit window, summed over every instance (the cluster-wide
-- half of the HTTP rate limit). UNLOGGED: counts of the last seconds are worth no WAL, are not
-- replicated, and may be lost in a crash (the limit then starts afresh). The client is the
-- first 16 bytes of the SHA-256 of its key, so no address or token subject is stored.
CREATE UNLOGGED TABLE http_rate_usage (
    client bytea NOT NULL CHECK (length(client) = 16),
    win bigint NOT NULL,
    requests bigint NOT NULL CHECK (requests >= 0),
    PRIMARY KEY (client, win)
);
