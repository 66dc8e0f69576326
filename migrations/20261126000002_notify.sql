-- Writes that bypass Tiercache (another service, a migration, psql) still invalidate its
-- cache: every change to organizations, leads and messages sends a NOTIFY on the channel
-- `tiercache_invalidation` with what the cache needs to build the invalidation, and every
-- instance listens (crates/repository/src/listener.rs).
--
-- Payloads are JSON objects tagged by "kind":
--   {"kind":"lead","id":…,"org_id":…,"phone":"+1…"}   a lead row (new, old or deleted)
--   {"kind":"org","id":…,"phone":"+1…"}                an organization row
--   {"kind":"message","lead_id":…,"phone":"+1…"}       a message of that lead (phone looked up)
--   {"kind":"flush"}                                   everything (TRUNCATE, oversized payload)
-- An UPDATE that moves a row to other keys (a lead's phone, org_id or id; an organization's
-- phone or id; a message's lead) sends one notification for the old row and one for the new.
--
-- Tiercache's own writes invalidate the cache themselves and tell the other instances over
-- Redis, so they send nothing: their transactions run
-- `SELECT set_config('tiercache.origin', 'service', true)` first, and every trigger's WHEN
-- clause skips a transaction where that setting is non-empty. Skipped rows are not even
-- queued as trigger events, so the seed (400k rows, one such transaction) costs nothing here.
-- A setting never set reads as NULL, one set locally in an earlier transaction as ''.
--
-- NOTIFY is transactional: notifications go out at commit (none on rollback), in commit
-- order, and identical payloads within one transaction are sent once.

-- Sends one payload; a payload near NOTIFY's 8000-byte limit (only an absurd phone number,
-- which no cache key can hold, gets there) becomes a flush rather than failing the write.
CREATE FUNCTION tiercache_notify(payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    message text := payload::text;
BEGIN
    IF octet_length(message) > 4000 THEN
        message := '{"kind": "flush"}';
    END IF;
    PERFORM pg_notify('tiercache_invalidation', message);
END;
$$;

CREATE FUNCTION tiercache_leads_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM tiercache_notify(jsonb_build_object(
            'kind', 'lead', 'id', NEW.id, 'org_id', NEW.org_id, 'phone', NEW.phone));
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM tiercache_notify(jsonb_build_object(
            'kind', 'lead', 'id', OLD.id, 'org_id', OLD.org_id, 'phone', OLD.phone));
    ELSIF TG_OP = 'UPDATE' THEN
        IF (OLD.id, OLD.org_id, OLD.phone) IS DISTINCT FROM (NEW.id, NEW.org_id, NEW.phone) THEN
            PERFORM tiercache_notify(jsonb_build_object(
                'kind', 'lead', 'id', OLD.id, 'org_id', OLD.org_id, 'phone', OLD.phone));
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION tiercache_organizations_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM tiercache_notify(jsonb_build_object(
            'kind', 'org', 'id', NEW.id, 'phone', NEW.phone));
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM tiercache_notify(jsonb_build_object(
            'kind', 'org', 'id', OLD.id, 'phone', OLD.phone));
    ELSIF TG_OP = 'UPDATE' THEN
        IF (OLD.id, OLD.phone) IS DISTINCT FROM (NEW.id, NEW.phone) THEN
            PERFORM tiercache_notify(jsonb_build_object(
                'kind', 'org', 'id', OLD.id, 'phone', OLD.phone));
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

-- Notifies a change to the messages of lead `changed_lead`, with the lead's phone; a lead
-- that is gone (deleted in the same transaction, as by ON DELETE CASCADE) is skipped: the
-- lead's own notification covers it.
CREATE FUNCTION tiercache_notify_lead_activity(changed_lead bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lead_phone text;
BEGIN
    SELECT phone INTO lead_phone FROM leads WHERE id = changed_lead;
    IF FOUND THEN
        PERFORM tiercache_notify(jsonb_build_object(
            'kind', 'message', 'lead_id', changed_lead, 'phone', lead_phone));
    END IF;
END;
$$;

CREATE FUNCTION tiercache_messages_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM tiercache_notify_lead_activity(NEW.lead_id);
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM tiercache_notify_lead_activity(OLD.lead_id);
    ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.lead_id <> NEW.lead_id THEN
            PERFORM tiercache_notify_lead_activity(OLD.lead_id);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION tiercache_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tiercache_notify('{"kind": "flush"}'::jsonb);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tiercache_leads_changed
    AFTER INSERT OR UPDATE OR DELETE ON leads
    FOR EACH ROW
    WHEN (coalesce(current_setting('tiercache.origin', true), '') = '')
    EXECUTE FUNCTION tiercache_leads_changed();

CREATE TRIGGER tiercache_organizations_changed
    AFTER INSERT OR UPDATE OR DELETE ON organizations
    FOR EACH ROW
    WHEN (coalesce(current_setting('tiercache.origin', true), '') = '')
    EXECUTE FUNCTION tiercache_organizations_changed();

CREATE TRIGGER tiercache_messages_changed
    AFTER INSERT OR UPDATE OR DELETE ON messages
    FOR EACH ROW
    WHEN (coalesce(current_setting('tiercache.origin', true), '') = '')
    EXECUTE FUNCTION tiercache_messages_changed();

CREATE TRIGGER tiercache_leads_truncated
    AFTER TRUNCATE ON leads
    FOR EACH STATEMENT
    WHEN (coalesce(current_setting('tiercache.origin', true), '') = '')
    EXECUTE FUNCTION tiercache_truncated();

CREATE TRIGGER tiercache_organizations_truncated
    AFTER TRUNCATE ON organizations
    FOR EACH STATEMENT
    WHEN (coalesce(current_setting('tiercache.origin', true), '') = '')
    EXECUTE FUNCTION tiercache_truncated();

CREATE TRIGGER tiercache_messages_truncated
    AFTER TRUNCATE ON messages
    FOR EACH STATEMENT
    WHEN (coalesce(current_setting('tiercache.origin', true), '') = '')
    EXECUTE FUNCTION tiercache_truncated();
