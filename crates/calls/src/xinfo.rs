//! Reading the streams' state (`XINFO STREAM`, `GROUPS`, `CONSUMERS`): for operators
//! (`/api/admin/streams`) and for the consumer's pending and lag sample.

use redis::RedisError;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamInfoStreamReply};

use crate::conn::Conn;
use crate::inspect::{ConsumerStats, GroupStats, StreamStats};
use crate::streams::Keys;

/// The streams registered within the last `window`, oldest first.
pub(crate) async fn registered(
    conn: &Conn,
    keys: &Keys,
    window: std::time::Duration,
) -> Result<Vec<String>, RedisError> {
    let since = chrono::Utc::now().timestamp_millis()
        - i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
    conn.query(
        redis::cmd("ZRANGE")
            .arg(keys.registry())
            .arg(since)
            .arg("+inf")
            .arg("BYSCORE"),
    )
    .await
}

/// `group`'s entries pending and not yet delivered, summed over `streams`. A stream gone
/// since it was listed (expired) counts for nothing.
pub(crate) async fn group_totals(
    conn: &Conn,
    streams: &[String],
    group: &str,
) -> Result<(u64, u64), RedisError> {
    let (mut pending, mut lag) = (0, 0);
    for stream in streams {
        let reply: StreamInfoGroupsReply = match conn
            .query(redis::cmd("XINFO").arg("GROUPS").arg(stream))
            .await
        {
            Ok(reply) => reply,
            Err(e) if e.code().is_some() => continue,
            Err(e) => return Err(e),
        };
        if let Some(g) = reply.groups.iter().find(|g| g.name == group) {
            pending += g.pending as u64;
            lag += g.lag.unwrap_or(0) as u64;
        }
    }
    Ok((pending, lag))
}

/// Every stream in `streams` with its groups and their consumers.
pub(crate) async fn stream_stats(
    conn: &Conn,
    keys: &Keys,
    streams: &[String],
) -> Result<Vec<StreamStats>, RedisError> {
    let mut out = Vec::with_capacity(streams.len());
    for key in streams {
        let Some((org_id, day)) = keys.parse_stream(key) else {
            continue;
        };
        let info: StreamInfoStreamReply =
            match conn.query(redis::cmd("XINFO").arg("STREAM").arg(key)).await {
                Ok(info) => info,
                // Expired since the registry listed it.
                Err(e) if e.code().is_some() => continue,
                Err(e) => return Err(e),
            };
        let groups: StreamInfoGroupsReply = conn
            .query(redis::cmd("XINFO").arg("GROUPS").arg(key))
            .await?;
        let mut group_stats = Vec::with_capacity(groups.groups.len());
        for group in groups.groups {
            let consumers: StreamInfoConsumersReply = conn
                .query(
                    redis::cmd("XINFO")
                        .arg("CONSUMERS")
                        .arg(key)
                        .arg(&group.name),
                )
                .await?;
            group_stats.push(GroupStats {
                pending: group.pending as u64,
                lag: group.lag.map(|l| l as u64),
                last_delivered: group.last_delivered_id,
                consumers: consumers
                    .consumers
                    .into_iter()
                    .map(|c| ConsumerStats {
                        name: c.name,
                        pending: c.pending as u64,
                        idle_ms: c.idle as u64,
                    })
                    .collect(),
                name: group.name,
            });
        }
        let id = |id: String| (!id.is_empty()).then_some(id);
        out.push(StreamStats {
            key: key.clone(),
            org_id,
            day,
            length: info.length as u64,
            first_entry: id(info.first_entry.id),
            last_entry: id(info.last_entry.id),
            groups: group_stats,
        });
    }
    Ok(out)
}
