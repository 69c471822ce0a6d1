//! Durable, shared inboxes and routes in Redis (a single server or a Redis Cluster).
//!
//! Keys of one user all carry the hash tag `{uid}`, so they share a cluster slot and one script
//! can touch them atomically (`<p>` is `--redis-prefix`, default `im`):
//! - `<p>:epoch:{uid}`: id of this incarnation of the inbox (a lost inbox gets a new one)
//! - `<p>:seq:{uid}`: INCR counter, the inbox's last seq
//! - `<p>:inbox:{uid}`: stream, entry id `<seq>-0`, fields from, to, client_msg_id, body,
//!   msg_id, sent_at, conv (conversation id), cseq (its seq there)
//! - `<p>:log:{conv}`: a conversation's log (history), entry id `0-<conversation seq>`, fields
//!   an inbox's but conv, cseq; at most `--history-max`, gone `--history-retention` after the last
//! - a group `{g:<id>}`: `<p>:group:`, `<p>:members:` and its log (see `groups`); a member's
//!   `<p>:convs:{uid}`: conversation → the last group conversation seq in their inbox;
//!   `<p>:inflight:{w:<writer>}` and `<p>:writers:{all}`: group fan-outs begun and not finished,
//!   per node (see `fanout`)
//! - `<p>:logdedup:{conv}:<len(from)>:<from>:<client_msg_id>` (Cluster): `conv_seq|msg_id|
//!   sent_at` of a logged message, so a retry between the Cluster's steps logs it once;
//!   `<p>:sent:{uid}:<client_msg_id>` (Cluster): the sender's copy of that message was made
//! - `<p>:dedup:{uid}:<len(from)>:<from>:<client_msg_id>`: `seq|msg_id|sent_at|conv_seq`,
//!   with a TTL
//! - `<p>:ack:{uid}`: hash device → highest acked seq; `<p>:low:{uid}`: the same as a sorted
//!   set (the lowest cursor in O(log n)); `<p>:devices:{uid}`: sorted set device → last seen
//!   (ms), for `--max-devices` and `--device-ttl`. All three expire after the device TTL.
//! - `<p>:route:{uid}`: hash device → `node_id|session_id|started_at_ms|lapses_at_ms`, key
//!   TTL = the longest route TTL
//! - `<p>:inrate:{uid}`: new messages taken this second (`--inbox-rate`), expiring after it
//! - `<p>:seen:{uid}`: Unix ms at which a stream of the user last ended, with a TTL
//! - `<p>:revoked:{uid}:<device>`: Unix ms up to which the device's tokens are revoked (it
//!   logged out), with a TTL of the token lifetime
//!
//! The Lua scripts sit beside this file and run by EVALSHA (reloaded after NOSCRIPT, e.g. after
//! a Redis restart); `lib.lua` holds the helpers several of them share and is put before them,
//! `message.lua` what storing a message takes. `writer` group-commits appends, ack cursors and
//! route refreshes, `messages` (and `cluster`) the steps a message is stored in, `fanout` the
//! sweep that completes them; `routes` is the RouteStore half; `values` the values of these
//! keys; `conn` the connection (single server or Cluster).
use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Script};

use super::{
    AckCheck, Appended, HistoryPage, Inbox, NewMessage, StoreError, StoreOptions, StoredMessage,
};

mod broadcast;
mod cluster;
mod conn;
mod fanout;
mod group_reads;
mod groups;
mod index;
mod messages;
mod routes;
mod values;
mod writer;

pub use conn::Access;
pub use fanout::FANOUT_GRACE;

use broadcast::MemberCache;
pub use conn::Conn;
use groups::GroupScripts;
use messages::Scripts;
use values::{logged_message, now_ms, stored_message};
use writer::Writer;

/// Most expired head entries one read drops (one script call; Redis is busy for it).
const TRIM_AT_ONCE: usize = 1000;

/// The script in `file` with `lib.lua`'s helpers before it, as one chunk.
macro_rules! with_lib {
    ($($file:literal),+) => {
        Script::new(concat!(include_str!("lib.lua"), $(include_str!($file)),+))
    };
}

/// What the writer task needs to store a batch.
struct Committer {
    conn: Conn,
    keys: Keys,
    opts: StoreOptions,
    /// The command timeout (WAIT is bounded by it).
    timeout: Duration,
    messages: Scripts,
    ack: Script,
    refresh: Script,
    /// This store's in-flight set (`fanout`): Cluster steps mark a message there until done.
    inflight: String,
}

/// Redis-backed [`Inbox`] and [`RouteStore`].
pub struct RedisStore {
    conn: Conn,
    keys: Keys,
    opts: StoreOptions,
    /// Appends and ack cursors, group-committed.
    writer: Writer,
    /// The command timeout (WAIT for a group message is bounded by it).
    timeout: Duration,
    route_put: Script,
    route_remove: Script,
    trim: Script,
    enroll: Script,
    forget: Script,
    groups: GroupScripts,
    /// Each group's members as this node last saw them (see `groups`).
    member_cache: MemberCache,
    /// This store's id among the writers whose unfinished group fan-outs others complete
    /// (`fanout`).
    writer_id: String,
}

impl RedisStore {
    /// Connects and checks the connection with a PING.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        prefix: &str,
        opts: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::connect_with(urls, cluster, timeout, &Access::default(), prefix, opts).await
    }

    /// [`RedisStore::connect`] with a password for URLs that carry none, or a private CA for
    /// `rediss://`.
    pub async fn connect_with(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        access: &Access,
        prefix: &str,
        opts: StoreOptions,
    ) -> Result<Self, StoreError> {
        let mut conn = Conn::open(urls, cluster, timeout, access).await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        let keys = Keys { prefix: prefix.to_string() };
        let writer_id = crate::ids::new_id();
        let writer = Writer::start(Committer {
            inflight: keys.key("inflight", &format!("w:{writer_id}")),
            conn: conn.clone(),
            keys: keys.clone(),
            opts: opts.clone(),
            timeout,
            messages: Scripts {
                send: with_lib!("message.lua", "send.lua"),
                admit: with_lib!("message.lua", "admit.lua"),
                log: with_lib!("message.lua", "log.lua"),
                append: with_lib!("message.lua", "append.lua"),
                copy: with_lib!("message.lua", "copy.lua"),
            },
            ack: with_lib!("ack.lua"),
            refresh: with_lib!("route_refresh.lua"),
        });
        let store = Self {
            conn,
            keys,
            opts,
            writer,
            timeout,
            route_put: Script::new(include_str!("route_put.lua")),
            route_remove: Script::new(include_str!("route_remove.lua")),
            trim: with_lib!("trim.lua"),
            enroll: Script::new(include_str!("enroll.lua")),
            forget: Script::new(include_str!("forget.lua")),
            groups: GroupScripts {
                change: with_lib!("message.lua", "group.lua"),
                log: with_lib!("message.lua", "glog.lua"),
                deliver: with_lib!("message.lua", "gdeliver.lua"),
                cursors: Script::new(include_str!("gcur.lua")),
            },
            member_cache: MemberCache::default(),
            writer_id,
        };
        store.register_writer().await?;
        Ok(store)
    }

    fn key(&self, kind: &str, user: &str) -> String {
        self.keys.key(kind, user)
    }

    fn keep_ms(&self) -> u64 {
        self.keys.keep_ms(&self.opts)
    }
}

/// How far above their floors (a retention, [`Keys::keep_ms`]) the scripts set the TTLs of
/// inboxes, counters, epochs and logs, so that they are written once per slack rather than at
/// every message: a tenth of the retention, at most an hour. An inbox or log may outlive its
/// newest message by this much; counters and epochs have a day to spare.
pub(super) fn slack_ms(retention: Duration) -> u64 {
    (retention / 10).min(Duration::from_secs(3600)).as_millis().max(1) as u64
}

/// The names of a user's keys under one prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn key(&self, kind: &str, user: &str) -> String {
        format!("{}:{kind}:{{{user}}}", self.prefix)
    }

    fn dedup(&self, user: &str, from: &str, client_msg_id: &str) -> String {
        format!("{}:{}:{from}:{client_msg_id}", self.key("dedup", user), from.len())
    }

    /// A conversation log's key for one sent message (Cluster: `log.lua`).
    fn log_dedup(&self, conversation: &str, from: &str, client_msg_id: &str) -> String {
        format!("{}:{}:{from}:{client_msg_id}", self.key("logdedup", conversation), from.len())
    }

    /// How long a user's seq counter and epoch outlive their last activity: longer than any
    /// cursor (device TTL) or message (retention) that refers to them, by a day.
    fn keep_ms(&self, opts: &StoreOptions) -> u64 {
        let keep = opts.retention.max(opts.device_ttl) + Duration::from_secs(86_400);
        keep.as_millis() as u64
    }
}

#[async_trait]
impl Inbox for RedisStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.writer.append(msg).await
    }

    async fn read(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        // Entries past retention are never returned, whether or not an append trimmed them
        // yet. They sit at the head of the stream: a read that meets some drops them for good
        // (trim.lua), so no read scans them twice.
        let cut = now_ms() - self.opts.retention.as_millis() as i64;
        let key = self.key("inbox", user);
        let mut page = Vec::new();
        let mut from = after + 1;
        loop {
            let reply: StreamRangeReply =
                self.conn.clone().xrange_count(&key, format!("{from}-0"), "+", limit).await?;
            let full = reply.ids.len() == limit;
            let mut expired = false;
            for e in reply.ids {
                let m = stored_message(e)?;
                from = m.seq + 1;
                if m.sent_at < cut {
                    expired = true;
                } else if page.len() < limit {
                    page.push(m);
                }
            }
            if expired {
                let _: i64 = self
                    .trim
                    .key(&key)
                    .arg(cut)
                    .arg(TRIM_AT_ONCE)
                    .invoke_async(&mut self.conn.clone())
                    .await?;
            }
            if page.len() == limit || !full {
                return Ok(page);
            }
        }
    }

    async fn history(
        &self,
        conversation: &str,
        page: HistoryPage,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        // Expired entries sit at the head of the log until its TTL renewal drops them (within
        // the slack): skipped here, never returned.
        let cut = now_ms() - self.opts.history_retention.as_millis() as i64;
        let key = self.key("log", conversation);
        let fresh = |e| logged_message(e, conversation).map(|m| (m.sent_at >= cut).then_some(m));
        let mut conn = self.conn.clone();
        if page.after == 0 {
            let end = match page.before {
                0 => "+".to_string(),
                before => format!("0-{}", before - 1),
            };
            let reply: StreamRangeReply = conn.xrevrange_count(&key, end, "-", page.limit).await?;
            let mut out: Vec<StoredMessage> = reply
                .ids
                .into_iter()
                .map(fresh)
                .filter_map(Result::transpose)
                .collect::<Result<_, _>>()?;
            out.reverse();
            return Ok(out);
        }
        let mut out = Vec::new();
        let mut from = page.after + 1;
        while out.len() < page.limit {
            let want = page.limit - out.len();
            let reply: StreamRangeReply =
                conn.xrange_count(&key, format!("0-{from}"), "+", want).await?;
            let got = reply.ids.len();
            for e in reply.ids {
                let m = logged_message(e, conversation)?;
                from = m.conv_seq + 1;
                if m.sent_at >= cut {
                    out.push(m);
                }
            }
            if got < want {
                break;
            }
        }
        Ok(out)
    }

    async fn epoch(&self, user: &str) -> Result<String, StoreError> {
        let mine = crate::ids::new_id();
        // SET NX GET: the existing epoch, or nil when ours was just set (with its TTL).
        let existing: Option<String> = redis::cmd("SET")
            .arg(self.key("epoch", user))
            .arg(&mine)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(self.keep_ms())
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(existing.unwrap_or(mine))
    }

    async fn renew_epoch(&self, user: &str) -> Result<String, StoreError> {
        let epoch = crate::ids::new_id();
        let () = self.conn.clone().pset_ex(self.key("epoch", user), &epoch, self.keep_ms()).await?;
        Ok(epoch)
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        let seq: Option<u64> = self.conn.clone().get(self.key("seq", user)).await?;
        Ok(seq.unwrap_or(0))
    }

    async fn ack(
        &self,
        user: &str,
        device: &str,
        up_to: u64,
        check: &AckCheck,
    ) -> Result<u64, StoreError> {
        self.writer.ack(user, device, up_to, check).await
    }

    async fn enroll(&self, user: &str, device: &str) -> Result<(), StoreError> {
        let (admitted, _known): (i64, i64) = self
            .enroll
            .key(self.key("ack", user))
            .key(self.key("low", user))
            .key(self.key("devices", user))
            .arg(device)
            .arg(now_ms())
            .arg(self.opts.device_ttl.as_millis() as u64)
            .arg(self.opts.max_devices)
            .invoke_async(&mut self.conn.clone())
            .await?;
        match admitted {
            1 => Ok(()),
            _ => Err(StoreError::TooManyDevices { max: self.opts.max_devices }),
        }
    }

    async fn forget(&self, user: &str, device: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .forget
            .key(self.key("ack", user))
            .key(self.key("low", user))
            .key(self.key("devices", user))
            .arg(device)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
