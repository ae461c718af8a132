-- Runs once on each shard primary: the sharded table (the same definition on every shard;
-- pgvane routes rows by hash of customer_id, like PARTITION BY HASH).
CREATE TABLE IF NOT EXISTS orders (
    id          bigserial,
    customer_id bigint      NOT NULL,
    amount      numeric     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, id)
);
