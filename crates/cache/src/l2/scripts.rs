//! Every Redis script the engine runs, with the keys each declares (`KEYS`) and whether
//! they stay in one Redis Cluster slot; [`protocol`](super::protocol) invokes them.
//!
//! | script | keys | one slot |
//! |---|---|---|
//! | [`take_lease`] | the key, its tags' indexes | yes: an indexed key carries its tag's hash tag |
//! | [`release_lease`] | the key | yes |
//! | [`set_guarded`] | the key, the batch's epochs | no: the epochs are keys of their own |
//! | [`set_over_markers`] | each queued key | no: a batch of writes to many keys |
//! | [`invalidate`] | epochs, keys, tags' indexes, the bus stream | no |
//! | [`publish`] | the bus stream (the channel is an argument) | yes |
//! | [`batch`] | the epochs; the steps' keys are built inside | no (keys undeclared) |
//!
//! On a cluster, the multi-slot scripts would be split per slot (the invalidation: one
//! call per slot, the bus message last; the batched read: one round trip per dependency
//! level); see ARCHITECTURE.md.

use crate::envelope::ENVELOPE_VERSION;

/// What every load lease's marker starts with: a byte no envelope starts with (see
/// `envelope.rs`), then a tag. The load's token follows.
pub const LEASE_MARKER_PREFIX: &str = "\0lease:";
const _: () = assert!(
    crate::envelope::ENVELOPE_VERSION != 0 && crate::seal::SEALED_VERSION != 0,
    "envelopes, plain or sealed, must not look like leases"
);

/// [`LEASE_MARKER_PREFIX`] as a Lua string literal's contents.
pub(crate) fn lua_lease_marker_prefix() -> String {
    LEASE_MARKER_PREFIX.replace('\0', "\\0")
}

/// Whether a value read from Redis is a load's lease marker rather than an envelope.
pub(crate) fn is_lease_marker(bytes: &[u8]) -> bool {
    bytes.starts_with(LEASE_MARKER_PREFIX.as_bytes())
}

/// KEYS: the key, then the tag indexes it joins. ARGV: marker, ttl, then each index's ttl.
/// Returns 1 when the marker was written.
pub(super) fn take_lease() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(&TAKE_LEASE.replace("PREFIX", &lua_lease_marker_prefix()))
    })
}

const TAKE_LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len('PREFIX')) == 'PREFIX' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[i + 1])
end
return 1
";

/// KEYS: the value, then the epoch keys. ARGV: value, ttl, then each epoch's expected value
/// (`''` for an absent epoch).
const SET_GUARDED: &str = r"
for i = 2, #KEYS do
  local seen = redis.call('GET', KEYS[i]) or ''
  if seen ~= ARGV[i + 1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

pub(super) fn set_guarded() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(SET_GUARDED))
}

/// KEYS: the values' keys. ARGV: for each, its value, ttl and the marker it must still hold.
/// Returns 1 or 0 for each, in order; a key of another type (foreign data) is a 0. A
/// `SET … XX GET` replaces the marker and returns it; anything else it returns is put back
/// (the rare value that came first, or a marker that replaced one an invalidation deleted).
pub(super) fn set_over_markers() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
local landed = {}
for i = 1, #KEYS do
  local at = (i - 1) * 3
  landed[i] = 0
  -- One command when the marker is still there (nearly always); what stood there in its
  -- place (another load's marker, or its value) is put back.
  local old = redis.pcall('SET', KEYS[i], ARGV[at + 1], 'PX', ARGV[at + 2], 'XX', 'GET')
  if old == ARGV[at + 3] then
    landed[i] = 1
  elseif type(old) == 'string' then
    redis.call('SET', KEYS[i], old, 'PX', ARGV[at + 2])
  end
end
return landed
",
        )
    })
}

/// KEYS: a key. ARGV: the lease marker it must still hold to be deleted.
pub(super) fn release_lease() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
        )
    })
}

/// Runs when Redis is out of memory (`allow-oom`): an invalidation frees more than it
/// adds, and refusing it would leave every instance serving what it should drop.
///
/// KEYS: the epochs (ARGV[1] of them), the doomed keys (ARGV[2]), the tag indexes
/// (ARGV[4]), then the bus stream when ARGV[5] is 1.
/// ARGV: epoch count, doomed count, epoch ttl, index count, publish flag, stream length,
/// message, stream ttl (0: leave it), channel, the epochs' new value (unique to this
/// invalidation: a batched install compares it with the one it saw). The stream append and announcement are those of
/// [`publish`].
pub(super) fn invalidate() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"#!lua flags=allow-oom
local epochs, doomed, indexes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
for i = 1, epochs do
  redis.call('SET', KEYS[i], ARGV[10], 'PX', ARGV[3])
end
local dels = {}
for i = epochs + 1, epochs + doomed do dels[#dels + 1] = KEYS[i] end
local at = epochs + doomed + 1
local members = {}
for i = at, at + indexes - 1 do
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    members[#members + 1] = m
    dels[#dels + 1] = m
  end
  dels[#dels + 1] = KEYS[i]
end
at = at + indexes
for i = 1, #dels, 500 do
  redis.call('DEL', unpack(dels, i, math.min(i + 499, #dels)))
end
if ARGV[5] == '1' then
  local message = ARGV[7]
  if #members > 0 then message = message .. ' ' .. table.concat(members, ' ') end
  local id = redis.call('XADD', KEYS[at], 'MAXLEN', '~', ARGV[6], '*', 'm', message)
  if ARGV[8] ~= '0' then redis.call('PEXPIRE', KEYS[at], ARGV[8]) end
  redis.call('PUBLISH', ARGV[9], id .. ' ' .. message)
end
return members
",
        )
    })
}

/// Appends to the stream (renewing its TTL to ARGV[3] ms unless it is 0) and announces `id payload` on the
/// channel (ARGV[4]: not a key, so the script touches one slot), atomically; also when
/// Redis is out of memory, as invalidations do.
const PUBLISH: &str = r"#!lua flags=allow-oom
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
redis.call('PUBLISH', ARGV[4], id .. ' ' .. ARGV[2])
return id
";

pub(super) fn publish() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(PUBLISH))
}

/// Runs a plan inside Redis. KEYS: the global epoch, then each group's. ARGV: the step
/// count, then per step: `g` to read it (else skip it), the id it is known to have (`''`:
/// none), the step it follows (1-based; 0: none), and its key as the text before and after
/// the followed id (the whole key, and `''`, for a key known up front). Returns each step's
/// value (`false`: none read) and then the epochs.
const BATCH_SCRIPT: &str = r#"
-- The id starts after a plain envelope's header (version, kind 0: a value, load time), or
-- after a sealed one's version and flag 1 (its id in the clear).
local function leading_id(v)
  if not v or string.len(v) < 3 then return nil end
  local at
  if string.byte(v, 1) == VERSION and string.byte(v, 2) == 0 then
    at = 11
  elseif string.byte(v, 1) == SEALED and string.byte(v, 2) == WITH_ID then
    at = 3
  else
    return nil
  end
  local n, mult = 0, 1
  for i = at, math.min(string.len(v), at + 9) do
    local b = string.byte(v, i)
    n = n + (b % 128) * mult
    if b < 128 then
      if n % 2 == 0 then return string.format('%d', n / 2) end
      return string.format('%d', -(n + 1) / 2)
    end
    mult = mult * 128
  end
  return nil
end
local steps = tonumber(ARGV[1])
local values, ids = {}, {}
for i = 1, steps do
  local at = 2 + (i - 1) * 5
  values[i] = false
  if ARGV[at + 1] ~= '' then ids[i] = ARGV[at + 1] end
  if ARGV[at] == 'g' then
    local from, key = tonumber(ARGV[at + 2]), ARGV[at + 3]
    if from > 0 then
      if ids[from] == nil then ids[from] = leading_id(values[from]) end
      if ids[from] then key = key .. ids[from] .. ARGV[at + 4] else key = nil end
    end
    if key then
      local v = redis.call('GET', key)
      -- A load's lease marker is no value.
      if v and string.sub(v, 1, string.len('LEASE_PREFIX')) ~= 'LEASE_PREFIX' then
        values[i] = v
      end
    end
  end
end
for i = 1, #KEYS do values[steps + i] = redis.call('GET', KEYS[i]) or '' end
return values
"#;

pub(super) fn batch() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            &BATCH_SCRIPT
                .replace("SEALED", &crate::seal::SEALED_VERSION.to_string())
                .replace("WITH_ID", &crate::seal::WITH_ID.to_string())
                .replace("VERSION", &ENVELOPE_VERSION.to_string())
                .replace("LEASE_PREFIX", &lua_lease_marker_prefix()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_marker_is_never_an_envelope() {
        let value = crate::envelope::encode(Some(&"\0lease:x"), 0).unwrap();
        let not_found = crate::envelope::encode::<u8>(None, 0).unwrap();
        assert!(!is_lease_marker(&value) && !is_lease_marker(&not_found));
        let sealer = crate::seal::Sealer::new(&crate::EncryptionKey::from_bytes([0; 32]));
        for plain in [&value, &not_found] {
            let sealed = sealer.seal("k", plain, true).unwrap();
            assert!(!is_lease_marker(&sealed));
        }
        assert!(is_lease_marker(
            format!("{LEASE_MARKER_PREFIX}1:2").as_bytes()
        ));
        assert_eq!(lua_lease_marker_prefix(), "\\0lease:");
    }
}
