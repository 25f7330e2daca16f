-- The account stores: local domains, users, the recipient rewrite table.
-- Same tables and rules as the embedded SQLite stores (chainmail/store/*.py).
-- A released migration is never edited: add 0002_*.sql instead.

CREATE TABLE domains (
    name TEXT PRIMARY KEY
);

CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL
);

CREATE TABLE rrt_mappings (
    kind TEXT NOT NULL CHECK (kind IN ('alias', 'forward', 'domain')),
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (kind, source, target)
);
-- One target per alias source and per alias domain.
CREATE UNIQUE INDEX rrt_single_target ON rrt_mappings (kind, source)
    WHERE kind IN ('alias', 'domain');
CREATE INDEX rrt_by_source ON rrt_mappings (source);

-- One counter per store, raised by every statement that changes its table: each process
-- keeps the table in memory and reloads it when the counter moved.
CREATE TABLE store_changes (
    component TEXT PRIMARY KEY,
    version BIGINT NOT NULL DEFAULT 0
);
INSERT INTO store_changes (component) VALUES ('domains'), ('users'), ('rrt');

CREATE FUNCTION store_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE store_changes SET version = version + 1 WHERE component = TG_ARGV[0];
    RETURN NULL;
END
$$;

CREATE TRIGGER domains_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON domains
    FOR EACH STATEMENT EXECUTE FUNCTION store_changed('domains');
CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION store_changed('users');
CREATE TRIGGER rrt_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rrt_mappings
    FOR EACH STATEMENT EXECUTE FUNCTION store_changed('rrt');
