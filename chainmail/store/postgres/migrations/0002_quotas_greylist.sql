-- Node-shared state besides the accounts: mailbox quotas and greylisting triplets.
-- Same tables and rules as the embedded SQLite ones (chainmail/store/mailbox.py,
-- plugins/smtp/greylist.py).  A released migration is never edited: add the next one.

CREATE TABLE mailbox_quota (
    username TEXT PRIMARY KEY,
    max_bytes BIGINT NOT NULL CHECK (max_bytes >= 0)
);

-- Each process keeps the quotas in memory (checked on every delivery) and reloads them
-- when this counter moves, as it does the accounts.
INSERT INTO store_changes (component) VALUES ('quotas');
CREATE TRIGGER mailbox_quota_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON mailbox_quota FOR EACH STATEMENT EXECUTE FUNCTION store_changed('quotas');

-- One row per (client network, sender, recipient).  count = 0: refused so far, forgotten
-- unseenLifeTime after create_time; count > 0: passed, whitelisted autoWhiteListLifeTime
-- after create_time (the last time it passed).  Read and written per RCPT, never cached.
CREATE TABLE greylist (
    ip TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    create_time TIMESTAMPTZ NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ip, sender, recipient)
);
CREATE INDEX greylist_by_time ON greylist (create_time);
