-- SpamTrapHandler's block list shared by the nodes (chainmail/store/postgres/spamtrap.py):
-- a client that wrote to a trap address through one node is refused by every node.
-- A released migration is never edited: add the next one instead.

CREATE TABLE spamtrap_blocks (
    ip TEXT PRIMARY KEY,
    blocked_until TIMESTAMPTZ NOT NULL
);
