-- Message content kept out of the queue messages: with rabbitmq.properties and
-- postgres.properties, a spool or outgoing entry whose content is at least
-- blob.threshold bytes carries only a reference to its row here
-- (chainmail/store/postgres/blobs.py).  A released migration is never edited.

-- One row per queue entry (its spool id), removed once the entry has left the queue.
CREATE TABLE mail_blobs (
    blob_key TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    content BYTEA NOT NULL,
    stored_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
