//! One home for Redis: the key schema ([`Keys`], one accessor per kind of
//! key), every Lua script (`lua/`, loaded in [`scripts`]) and the
//! connection types ([`Redis`], one Redis or a Redis Cluster) with the
//! blocking reader of many streams (`streams`). The components that use Redis (job store,
//! SFC engine, publisher, dedupe, singleton locks, the MQTT session
//! registry) build their keys and invoke their scripts through here, so
//! what lives in Redis can be read in one place.
//!
//! # Key schema
//!
//! `P` is `redis.key_prefix`, `{S}` the scope in braces: a Redis Cluster
//! hash tag, so every key one script touches lives in the same slot (the
//! session registry uses the tag `{mqtt}` the same way). DESIGN.md has the
//! same table with the values' fields.
//!
//! | key | type | holds | accessor |
//! |---|---|---|---|
//! | `P:scopes` | set | every scope that ever had a job or configuration | [`Keys::scopes`] |
//! | `P:publisher:lock` | string | owner of the MES publisher singleton | [`Keys::publisher_lock`] |
//! | `P:dedupe:{len}:{source}:{id}` | string | dedupe claim or done marker with the stored reply | [`Keys::dedupe`] |
//! | `P:{mqtt}:sessions` | zset | MQTT client id → last heartbeat (ms, Redis clock) | [`Keys::sessions`] |
//! | `P:{mqtt}:session-info` | hash | client id → what a peer needs to take the session over | [`Keys::session_info`] |
//! | `P:{mqtt}:takeover:{client id}` | string | lock of one session takeover | [`Keys::takeover`] |
//! | `P:{dlq}:processors` | set | processors with a dead-letter stream | [`Keys::dlq_processors`] |
//! | `P:{dlq}:letters:{processor}` | stream | rejected MQTT messages as received, bounded | [`Keys::dlq_letters`] |
//! | `P:{dlq}:replayed:{processor}` | hash | dead-letter entry id → replayed at (ms) | [`Keys::dlq_replayed`] |
//! | `P:{S}:job:{id}` | hash | a job order, its state, response and version | [`Keys::job`] |
//! | `P:{S}:live` | set | ids of live jobs (not EndState) | [`Keys::live`] |
//! | `P:{S}:st:{state}` | set | ids per state key (`2.2` = AllowedToStart/Ready) | [`Keys::by_state`] |
//! | `P:{S}:ended` | zset | EndState ids by purge time | [`Keys::ended`] |
//! | `P:{S}:changes` | stream | one entry per applied job change | [`Keys::changes`] |
//! | `P:{S}:cfg:{kind}` | set | configured resources of one kind | [`Keys::resources`] |
//! | `P:{S}:cfg:workmaster` | hash | work master id → JSON | [`Keys::work_masters`] |
//! | `P:{S}:cfg:limit` | string | max downloadable job orders | [`Keys::job_limit`] |
//! | `P:{S}:lease:{id}` | zset | a job's dispatch leases → expiry | [`Keys::dispatch_leases`] |
//! | `P:{S}:held:{id}` | list | dispatches held while the job is Interrupted | [`Keys::held`] |
//! | `P:{S}:exec:{id}` | hash | SFC execution state of a job | [`Keys::exec`] |
//! | `P:{S}:waiting:{type}` | zset | jobs waiting for an equipment event type | [`Keys::waiting`] |
//! | `P:{S}:early` | list | equipment events no job took yet | [`Keys::early`] |
//! | `P:{S}:timers` | zset | engine timers by due time | [`Keys::timers`] |
//! | `P:{S}:work` | stream | engine work items | [`Keys::work`] |
//! | `P:{S}:sendfail:{entry}` | list | failed attempts at a work item | [`Keys::send_failures`] |
//! | `P:{S}:changefail:{entry}` | list | failed attempts at a change entry | [`Keys::change_failures`] |
//! | `P:{S}:deadletters` | list | stream entries given up on | [`Keys::dead_letters`] |
//! | `P:{S}:index` | hash | job id → state-index entry (JSON) of every live job | [`Keys::state_index`] |
//! | `P:{S}:pub:retained` | set | job ids with a retained order topic | [`Keys::pub_retained`] |
//! | `P:{S}:pub:seq` | string | state-index sequence | [`Keys::pub_seq`] |
//! | `P:{S}:pub:cursor` | string | publisher's change stream cursor | [`Keys::pub_cursor`] |
//! | `P:webhook:lock` | string | owner of the webhook sink singleton | [`Keys::webhook_lock`] |
//! | `P:{S}:webhook:cursor` | string | webhook sink's change stream cursor | [`Keys::webhook_cursor`] |
//! | `P:{S}:webhook:pending` | set | webhook queues (`{target}:{job}`) holding deliveries | [`Keys::webhook_pending`] |
//! | `P:{S}:webhook:q:{target}:{job}` | list | pending deliveries of one URL and job, oldest first | [`Keys::webhook_queue`] |
//! | `P:{S}:webhook:attempts` | hash | queue → failed attempts at its head delivery | [`Keys::webhook_attempts`] |

mod connection;
mod keys;
pub(crate) mod scripts;
mod streams;

pub use connection::{Redis, RedisClient, RedisConnection, RedisTls};
pub(crate) use keys::Keys;
pub(crate) use streams::{StreamRead, StreamReader};
