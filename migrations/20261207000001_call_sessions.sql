-- The live call log (crates/calls): every call event applied once, and the session each
-- call's events fold into. No foreign key to organizations: the log records what the voice
-- platform said happened, and an organization removed mid-call must not make its remaining
-- events fail forever (they would end in the dead-letter stream instead of the log).

-- Every event applied, by its id (UUID v7, given at intake): inserting it again does
-- nothing, which makes applying idempotent.
CREATE TABLE call_events (
    event_id    uuid PRIMARY KEY,
    call_sid    text NOT NULL,
    org_id      bigint NOT NULL,
    kind        text NOT NULL,
    at          timestamptz NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- A session is re-folded from all of its call's events, in event-time order.
CREATE INDEX call_events_by_call ON call_events (call_sid, at, event_id);

-- One row per call, rewritten whole each time one of its events is applied.
CREATE TABLE call_sessions (
    call_sid                 text PRIMARY KEY,
    org_id                   bigint NOT NULL,
    lead_id                  bigint,
    caller                   text,
    greeting_source          text,
    status                   text NOT NULL
        CHECK (status IN ('in_progress', 'transferring', 'transferred', 'ended')),
    started_at               timestamptz NOT NULL,
    authenticated_at         timestamptz,
    authentication_failed_at timestamptz,
    intent                   text,
    transfer_initiated_at    timestamptz,
    transferred_at           timestamptz,
    ended_at                 timestamptz,
    duration_seconds         double precision,
    last_event               text NOT NULL,
    last_event_at            timestamptz NOT NULL,
    events                   integer NOT NULL,
    -- The organization's change number that made the row what it is (its feed's cursor).
    change_seq               bigint NOT NULL
);

-- An organization's calls, newest first (GET /api/orgs/{id}/calls).
CREATE INDEX call_sessions_by_org_started ON call_sessions (org_id, started_at DESC);

-- An organization's changes after a cursor (the live feed's replay and polling).
CREATE INDEX call_sessions_by_org_change ON call_sessions (org_id, change_seq);

-- Each organization's last change number. Bumped inside the applying transaction, whose
-- row lock holds the next bump back until commit, so an organization's changes commit in
-- the order of their numbers and a reader never sees n + 1 before n.
CREATE TABLE call_feed_cursors (
    org_id bigint PRIMARY KEY,
    seq    bigint NOT NULL
);
