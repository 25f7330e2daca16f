-- Mail repositories (error, relay-denied ...) shared by the nodes of a cluster: the
-- postgres:// and cassandra:// repositories of mailetcontainer.xml when
-- postgres.properties exists (chainmail/mailet/postgres_repository.py).
-- A released migration is never edited: add the next one instead.

-- One row per repository, by canonical URL (postgres://var/mail/error/); it stays when
-- the repository is emptied, as a repository directory does.
CREATE TABLE mail_repositories (
    url TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per stored mail: the envelope, attributes, state and error the container
-- gave it, and the message exactly as it was (bytea).  Keys sort by storing time.
CREATE TABLE mail_repository_mails (
    url TEXT NOT NULL REFERENCES mail_repositories (url) ON DELETE CASCADE,
    mail_key TEXT COLLATE "C" NOT NULL,
    name TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT[] NOT NULL,
    state TEXT NOT NULL,
    error_message TEXT,
    attributes JSON NOT NULL,
    mail_params JSON NOT NULL,
    rcpt_params JSON NOT NULL,
    queued_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0,
    stored_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    size BIGINT NOT NULL,
    content BYTEA NOT NULL,
    PRIMARY KEY (url, mail_key)
);
