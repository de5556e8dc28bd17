"""The database schema as an ordered list of migrations.

Migration N brings a database from `PRAGMA user_version` N-1 to N. Migrations are only ever
appended, never edited, so that every older database upgrades without losing data.
"""

from __future__ import annotations

# Fleet mode (issue 17): the running instances and their leases. Kept as a constant that the
# tuple below names in one line, so that moving it to another number is a one-line change.
# `instances`: one row per `triage run` process (id host:pid:random), its heartbeat and whether
# it is shutting down. `leases`: one row per IMAP account (its name) and one for periodic work
# (`leader`): who holds it, until when, and `generation`, the fencing token, which grows by one
# at every acquisition. Times are seconds since the epoch by the database server's clock (see
# `Dialect.now_epoch`), so that the hosts' clocks never decide an expiry.
FLEET_LEASES = """
    CREATE TABLE instances (
        id            TEXT PRIMARY KEY,
        host          TEXT NOT NULL,
        pid           INTEGER NOT NULL,
        version       TEXT NOT NULL,
        started_at    REAL NOT NULL,
        heartbeat_at  REAL NOT NULL,
        stopping      INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE leases (
        name          TEXT PRIMARY KEY,
        owner         TEXT,
        generation    INTEGER NOT NULL DEFAULT 0,
        acquired_at   REAL,
        renewed_at    REAL,
        expires_at    REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX leases_owner ON leases (owner, expires_at);
    """

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE mailbox_state (
        account      TEXT NOT NULL,
        folder       TEXT NOT NULL,
        uidvalidity  INTEGER NOT NULL,
        last_uid     INTEGER NOT NULL DEFAULT 0,
        baseline_uid INTEGER NOT NULL DEFAULT 0,
        first_seen   TEXT NOT NULL,
        last_sync    TEXT,
        PRIMARY KEY (account, folder)
    );

    -- The ledger: one row per message seen in a mailbox, walking
    -- seen -> parsed -> classified -> acted -> done (or quarantined).
    CREATE TABLE messages (
        id           INTEGER PRIMARY KEY,
        account      TEXT NOT NULL,
        folder       TEXT NOT NULL,
        uidvalidity  INTEGER NOT NULL,
        uid          INTEGER NOT NULL,
        message_id   TEXT NOT NULL,
        state        TEXT NOT NULL DEFAULT 'seen',
        attempts     INTEGER NOT NULL DEFAULT 0,
        backfill     INTEGER NOT NULL DEFAULT 0,
        sender       TEXT NOT NULL DEFAULT '',
        subject      TEXT NOT NULL DEFAULT '',
        language     TEXT NOT NULL DEFAULT '',
        body         TEXT,
        label        TEXT,
        confidence   REAL,
        decision     TEXT,
        probabilities TEXT,
        explanation  TEXT,
        may_reply    INTEGER,
        reasons      TEXT NOT NULL DEFAULT '[]',
        error        TEXT,
        raw          BLOB,
        reviewed_label TEXT,
        reviewed_by  TEXT,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL,
        UNIQUE (account, folder, uidvalidity, uid)
    );
    CREATE INDEX messages_message_id ON messages (message_id);
    CREATE INDEX messages_state ON messages (state);
    CREATE INDEX messages_decision ON messages (decision);

    -- Replies, written before they are sent: the outbox and the reply log in one.
    CREATE TABLE replies (
        id           INTEGER PRIMARY KEY,
        message_row  INTEGER NOT NULL REFERENCES messages (id),
        reply_message_id TEXT NOT NULL UNIQUE,
        recipient    TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        template     TEXT NOT NULL,
        mode         TEXT NOT NULL,
        state        TEXT NOT NULL DEFAULT 'queued',
        raw          BLOB NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt TEXT NOT NULL,
        error        TEXT,
        created_at   TEXT NOT NULL,
        sent_at      TEXT,
        filed_at     TEXT
    );
    CREATE INDEX replies_state ON replies (state, next_attempt);
    CREATE INDEX replies_recipient ON replies (recipient, created_at);

    CREATE TABLE leads (
        id           INTEGER PRIMARY KEY,
        kind         TEXT NOT NULL,
        status       TEXT NOT NULL DEFAULT 'new',
        email        TEXT NOT NULL,
        name         TEXT NOT NULL DEFAULT '',
        company      TEXT NOT NULL DEFAULT '',
        phone        TEXT NOT NULL DEFAULT '',
        website      TEXT NOT NULL DEFAULT '',
        label        TEXT NOT NULL,
        confidence   REAL NOT NULL DEFAULT 0,
        explanation  TEXT NOT NULL DEFAULT '[]',
        owner        TEXT NOT NULL DEFAULT '',
        due_at       TEXT,
        digested_in  INTEGER,
        alerted_at   TEXT,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL,
        claimed_at   TEXT,
        closed_at    TEXT
    );
    CREATE INDEX leads_email ON leads (email);
    CREATE INDEX leads_status ON leads (status);

    CREATE TABLE lead_messages (
        lead_id      INTEGER NOT NULL REFERENCES leads (id),
        message_row  INTEGER NOT NULL REFERENCES messages (id),
        PRIMARY KEY (lead_id, message_row)
    );

    CREATE TABLE lead_notes (
        id           INTEGER PRIMARY KEY,
        lead_id      INTEGER NOT NULL REFERENCES leads (id),
        author       TEXT NOT NULL DEFAULT '',
        text         TEXT NOT NULL,
        created_at   TEXT NOT NULL
    );

    -- Labels given by people (folder moves, keywords, review): training data for the model.
    CREATE TABLE corrections (
        id           INTEGER PRIMARY KEY,
        message_row  INTEGER REFERENCES messages (id),
        message_id   TEXT NOT NULL,
        old_label    TEXT,
        new_label    TEXT NOT NULL,
        source       TEXT NOT NULL,
        subject      TEXT NOT NULL DEFAULT '',
        body         TEXT NOT NULL DEFAULT '',
        raw          BLOB,
        created_at   TEXT NOT NULL,
        UNIQUE (message_id, new_label)
    );

    CREATE TABLE digests (
        id           INTEGER PRIMARY KEY,
        state        TEXT NOT NULL DEFAULT 'prepared',
        message_id   TEXT NOT NULL UNIQUE,
        raw          BLOB NOT NULL,
        created_at   TEXT NOT NULL,
        sent_at      TEXT
    );

    CREATE TABLE kv (
        key          TEXT PRIMARY KEY,
        value        TEXT NOT NULL
    );
    """,
    # 2: leads, digests and alerts (issue 7). Digests and instant hot-lead alerts share the
    # `digests` table and its send states; `slot` (the schedule slot, or the lead for an alert)
    # makes preparing one twice impossible, `covers_until` is the end of the period it reports.
    """
    ALTER TABLE digests ADD COLUMN kind TEXT NOT NULL DEFAULT 'digest';
    ALTER TABLE digests ADD COLUMN slot TEXT;
    ALTER TABLE digests ADD COLUMN lead_id INTEGER REFERENCES leads (id);
    ALTER TABLE digests ADD COLUMN recipients TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE digests ADD COLUMN envelope_from TEXT NOT NULL DEFAULT '';
    ALTER TABLE digests ADD COLUMN covers_until TEXT;
    ALTER TABLE digests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE digests ADD COLUMN next_attempt TEXT;
    ALTER TABLE digests ADD COLUMN updated_at TEXT;
    ALTER TABLE digests ADD COLUMN error TEXT;
    CREATE UNIQUE INDEX digests_kind_slot ON digests (kind, slot);
    CREATE INDEX digests_state ON digests (state);

    ALTER TABLE leads ADD COLUMN contacted_at TEXT;
    CREATE INDEX leads_kind_digested ON leads (kind, digested_in);
    CREATE INDEX lead_messages_message ON lead_messages (message_row);
    CREATE INDEX messages_created ON messages (created_at);
    """,
    # 3: replies limited by canonical recipient and by domain at send time (issue 12). The
    # window compares `recipient_key` (case, +tag and provider dots removed); the hourly and
    # per-domain caps count `claimed_at` (when a reply went to SMTP) and defer, never drop, a
    # reply that would exceed them; `priority` orders the deferred (authenticated sales first);
    # `deferrals` counts how often a cap held a reply back. Older rows keep their lower-cased
    # recipient as key.
    """
    ALTER TABLE replies ADD COLUMN recipient_key TEXT NOT NULL DEFAULT '';
    ALTER TABLE replies ADD COLUMN recipient_domain TEXT NOT NULL DEFAULT '';
    ALTER TABLE replies ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE replies ADD COLUMN claimed_at TEXT;
    ALTER TABLE replies ADD COLUMN deferrals INTEGER NOT NULL DEFAULT 0;
    UPDATE replies SET recipient_key = lower(recipient),
        recipient_domain = lower(substr(recipient, instr(recipient, '@') + 1)),
        claimed_at = sent_at;
    CREATE INDEX replies_recipient_key ON replies (recipient_key, created_at);
    CREATE INDEX replies_claimed ON replies (claimed_at, recipient_domain);
    """,
    # 4: one delivery queue for replies, digests and alerts (issue 15). Both tables walk the same
    # states: `queued` (digests called it `prepared`), `sending` (claimed between the held-back
    # final dot and the server's answer; `claimed_at` dates it), `sent`, `failed`, `uncertain`.
    # A person settles an uncertain mail (`triage outbox resolve`): `resolution` says how,
    # `resolved_by` and `resolved_at` who and when. Queued digests keep their place.
    """
    ALTER TABLE replies ADD COLUMN resolution TEXT;
    ALTER TABLE replies ADD COLUMN resolved_by TEXT;
    ALTER TABLE replies ADD COLUMN resolved_at TEXT;
    ALTER TABLE digests ADD COLUMN claimed_at TEXT;
    ALTER TABLE digests ADD COLUMN resolution TEXT;
    ALTER TABLE digests ADD COLUMN resolved_by TEXT;
    ALTER TABLE digests ADD COLUMN resolved_at TEXT;
    UPDATE digests SET state = 'queued' WHERE state = 'prepared';
    UPDATE digests SET next_attempt = created_at WHERE next_attempt IS NULL;
    UPDATE digests SET claimed_at = updated_at WHERE state IN ('sending', 'sent', 'uncertain');
    """,
    # 5: how much a correction counts when training (the learning loop). A person's correction
    # (review, folder, keyword, and the lead workflow's relabel and not-a-lead) outweighs a
    # generic corpus message; a lead closed won or lost only confirms the model's label and counts
    # less (`triage.store.corrections.CORRECTION_WEIGHTS`). Every older row came from a person.
    """
    ALTER TABLE corrections ADD COLUMN weight REAL NOT NULL DEFAULT 8.0;
    CREATE INDEX corrections_created ON corrections (created_at);
    """,
    # 6: the drift figures (`triage.store.drift`) read label and confidence per arrival window;
    # a covering index answers them without reading a row (a row holds the body before them:
    # 0.4 s at 100,000 messages without it, a few milliseconds with it).
    """
    CREATE INDEX messages_decided ON messages (created_at, backfill, decision, label, confidence);
    """,
    # 7: the web console (`triage web`). `users`: who may log in, with an Argon2id hash and a
    # role (sales or admin); `web_sessions`: a signed cookie names a row here, so logout and a
    # removed user end a session at once; `login_failures`: recent failed logins per user name
    # and per client address (throttling); `audit`: every change a person made (who, when,
    # what), from the console and the CLI alike; `template_versions`: each saved reply template
    # (its text and who saved it), for the diff and rollback; `web_secrets`: the session-signing
    # secret generated on first start when none is configured.
    """
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        role          TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        email         TEXT NOT NULL DEFAULT '',
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    );
    CREATE TABLE web_sessions (
        id            TEXT PRIMARY KEY,
        user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        csrf_token    TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        expires_at    TEXT NOT NULL
    );
    CREATE INDEX web_sessions_user ON web_sessions (user_id);
    CREATE TABLE login_failures (
        id            INTEGER PRIMARY KEY,
        kind          TEXT NOT NULL,
        key           TEXT NOT NULL,
        at            TEXT NOT NULL
    );
    CREATE INDEX login_failures_key ON login_failures (kind, key, at);
    CREATE TABLE audit (
        id            INTEGER PRIMARY KEY,
        at            TEXT NOT NULL,
        actor         TEXT NOT NULL,
        action        TEXT NOT NULL,
        target_kind   TEXT NOT NULL DEFAULT '',
        target        TEXT NOT NULL DEFAULT '',
        detail        TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_target ON audit (target_kind, target, at);
    CREATE INDEX audit_at ON audit (at);
    CREATE TABLE template_versions (
        id            INTEGER PRIMARY KEY,
        filename      TEXT NOT NULL,
        text          TEXT NOT NULL,
        saved_by      TEXT NOT NULL,
        saved_at      TEXT NOT NULL,
        note          TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX template_versions_file ON template_versions (filename, id);
    CREATE TABLE web_secrets (
        name          TEXT PRIMARY KEY,
        value         TEXT NOT NULL,
        created_at    TEXT NOT NULL
    );
    """,
    # 8: the console's lead queue and lead page. The queue filters leads by status, kind and
    # owner and pages them by latest activity or due time: two covering indexes answer that
    # without reading a lead row (8 ms → 1 ms for 10,000 leads). Its search matches message
    # subjects over an index of them instead of ledger rows (which hold bodies and raw
    # messages), and a lead page finds the replies to its messages by their ledger row.
    """
    CREATE INDEX leads_queue_activity ON leads (status, updated_at, kind, owner);
    CREATE INDEX leads_queue_due ON leads (status, due_at, kind, owner);
    CREATE INDEX replies_message ON replies (message_row);
    CREATE INDEX messages_subject ON messages (subject);
    """,
    # 9: OAuth2 grants (issue 16), one row per credential (an IMAP account's name, or `smtp`):
    # the grant encrypted with the key of `[oauth2] key_file` (a refresh token, or msal's token
    # cache) and its history, and whether a person must sign in again. `generation` grows with
    # every change of the grant or of the state, so a process notices another's login cheaply.
    """
    CREATE TABLE oauth_grants (
        name          TEXT PRIMARY KEY,
        provider      TEXT NOT NULL,
        grant_blob    BLOB,
        obtained_at   TEXT,
        rotated_at    TEXT,
        rotations     INTEGER NOT NULL DEFAULT 0,
        generation    INTEGER NOT NULL DEFAULT 0,
        state         TEXT NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'needs-reauth')),
        error_code    TEXT NOT NULL DEFAULT '',
        error_at      TEXT,
        alerted_at    TEXT,
        reminded_at   TEXT
    );
    """,
    # 10: fleet mode's instances and leases (`FLEET_LEASES` above).
    FLEET_LEASES,
    # 11: console user names unique whatever their case, in the database itself: `name_taken`
    # alone let two processes add `Sam` and `sam` at once (and databases from before that check
    # may hold both). The later of such twins is renamed `<name>-<id>` so the index can exist;
    # an admin can tell that user.
    """
    UPDATE users SET name = name || '-' || id
        WHERE id NOT IN (SELECT min(id) FROM users GROUP BY lower(name));
    CREATE UNIQUE INDEX users_name_ci ON users (lower(name));
    """,
    # 12: nothing on SQLite. On PostgreSQL (triage.store.postgres.ddl) it creates the function
    # that reads a message's probabilities as a JSON object or NULL, which SQLite's json_valid()
    # and json_type() already do for the review queue's order; the number means the same
    # schema on both backends.
    """
    -- SQLite has json_valid() and json_type(): no change.
    """,
    # 13: who claimed a mail for sending, in fleet mode: the instance and the lease (with its
    # generation) whose fence the claim was recorded under; NULL alone on the store.
    """
    ALTER TABLE replies ADD COLUMN claimed_by TEXT;
    ALTER TABLE digests ADD COLUMN claimed_by TEXT;
    """,
    # 14: signed lead webhooks (issue 18). `webhook_endpoints`: the `[[webhooks]]` the daemon
    # last started with (name, url, the events it takes as ' a b '), so that a change made by
    # any process (the CLI, the console, the pipeline) queues its event in its own transaction
    # for exactly those endpoints; and what the deliveries taught (disabled by a 410, failing
    # since, alerted). `webhook_events`: one row per event, its id (`webhook-id`, the receiver's
    # idempotency key) and the lead as it was then. `webhook_deliveries`: one row per event
    # and endpoint, walking the delivery queue's states (`triage.store.outbox`; `claimed_by` as
    # for replies: who claimed it, in fleet mode).
    """
    CREATE TABLE webhook_endpoints (
        name            TEXT PRIMARY KEY,
        url             TEXT NOT NULL,
        events          TEXT NOT NULL DEFAULT '',
        configured      INTEGER NOT NULL DEFAULT 1,
        disabled_at     TEXT,
        disabled_reason TEXT,
        failing_since   TEXT,
        alerted_at      TEXT,
        updated_at      TEXT NOT NULL
    );
    CREATE TABLE webhook_events (
        id            INTEGER PRIMARY KEY,
        event_id      TEXT NOT NULL UNIQUE,
        type          TEXT NOT NULL,
        lead_id       INTEGER,
        data          TEXT NOT NULL,
        created_at    TEXT NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        id            INTEGER PRIMARY KEY,
        event_row     INTEGER NOT NULL REFERENCES webhook_events (id),
        endpoint      TEXT NOT NULL,
        state         TEXT NOT NULL DEFAULT 'queued',
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_attempt  TEXT NOT NULL,
        claimed_at    TEXT,
        claimed_by    TEXT,
        sent_at       TEXT,
        status_code   INTEGER,
        error         TEXT,
        resolution    TEXT,
        resolved_by   TEXT,
        resolved_at   TEXT,
        created_at    TEXT NOT NULL,
        UNIQUE (event_row, endpoint)
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint, state, next_attempt);
    CREATE INDEX webhook_events_created ON webhook_events (created_at);
    """,
)
