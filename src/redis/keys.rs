//! Every Redis key the crate reads or writes, one accessor per kind of key.
//!
//! The schema is the table in the [module docs](super) (and in DESIGN.md);
//! this is the only place a key is spelled out. `P` is the configured key
//! prefix, `{S}` a scope in braces: a Redis Cluster hash tag, so that every
//! key one script touches lives in the same slot. Scopes, job ids, client
//! ids and dedupe sources go into keys as they are (no escaping): the
//! layers above validate them.

/// The key schema under one prefix. Cheap to clone; building a key does no
/// I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys under `prefix` (`redis.key_prefix`, without a trailing `:`).
    pub(crate) fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The key prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    // Keys outside any scope.

    /// `P:scopes` (set): every scope that ever had a job or configuration.
    pub(crate) fn scopes(&self) -> String {
        format!("{}:scopes", self.prefix)
    }

    /// `P:publisher:lock` (string): the owner of the MES publisher
    /// singleton.
    pub(crate) fn publisher_lock(&self) -> String {
        format!("{}:publisher:lock", self.prefix)
    }

    /// `P:webhook:lock` (string): the owner of the webhook sink
    /// singleton.
    #[cfg_attr(not(feature = "cloudevents"), allow(dead_code))]
    pub(crate) fn webhook_lock(&self) -> String {
        format!("{}:webhook:lock", self.prefix)
    }

    /// `P:dedupe:{len(source)}:{source}:{id}` (string): the claim or done
    /// marker of one message. The length of `source` keeps `("a:b", "c")`
    /// and `("a", "b:c")` apart.
    pub(crate) fn dedupe(&self, source: &str, id: &str) -> String {
        format!("{}:dedupe:{}:{source}:{id}", self.prefix, source.len())
    }

    /// `P:{mqtt}:sessions` (zset): MQTT client id → last heartbeat.
    pub(crate) fn sessions(&self) -> String {
        format!("{}:{{mqtt}}:sessions", self.prefix)
    }

    /// `P:{mqtt}:session-info` (hash): client id → what a peer needs to
    /// take the session over.
    pub(crate) fn session_info(&self) -> String {
        format!("{}:{{mqtt}}:session-info", self.prefix)
    }

    /// `P:{mqtt}:takeover:{client_id}` (string): the lock of one session
    /// takeover.
    pub(crate) fn takeover(&self, client_id: &str) -> String {
        format!("{}:{{mqtt}}:takeover:{client_id}", self.prefix)
    }

    /// `P:{dlq}:processors` (set): the processors that have a dead-letter
    /// stream. The hash tag `{dlq}` keeps every dead-letter key in one
    /// Redis Cluster slot (the stream and its set are written together).
    pub(crate) fn dlq_processors(&self) -> String {
        format!("{}:{{dlq}}:processors", self.prefix)
    }

    /// `P:{dlq}:letters:{processor}` (stream): the MQTT messages one
    /// processor rejected, as received (`crate::dlq`). Not the SFC
    /// engine's `P:{S}:deadletters` list of stream entries it gave up on.
    pub(crate) fn dlq_letters(&self, processor: &str) -> String {
        format!("{}:{{dlq}}:letters:{processor}", self.prefix)
    }

    /// `P:{dlq}:replayed:{processor}` (hash): dead-letter entry id → when it
    /// was replayed (ms).
    pub(crate) fn dlq_replayed(&self, processor: &str) -> String {
        format!("{}:{{dlq}}:replayed:{processor}", self.prefix)
    }

    // Keys of one scope: all start with `scope_prefix`.

    /// `P:{S}:` — every key of a scope starts with it (`job_purge.lua`
    /// builds the job and state-index keys of the jobs it purges from it,
    /// and the engine scans for executions under it).
    pub(crate) fn scope_prefix(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:", self.prefix)
    }

    /// `P:{S}:job:{id}` (hash): a job order with its state and version.
    pub(crate) fn job(&self, scope: &str, id: &str) -> String {
        format!("{}:{{{scope}}}:job:{id}", self.prefix)
    }

    /// `P:{S}:audit:{id}` (stream): a job's audit trail (`jobs::audit`),
    /// deleted with the job (`job_purge.lua` builds it from the scope
    /// prefix).
    pub(crate) fn audit(&self, scope: &str, id: &str) -> String {
        format!("{}:{{{scope}}}:audit:{id}", self.prefix)
    }

    /// `P:{S}:live` (set): ids of the jobs not in EndState.
    pub(crate) fn live(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:live", self.prefix)
    }

    /// `P:{S}:st:{state}` (set): ids of the jobs in one state, by its key
    /// (`JobState::key`, e.g. `2.2`).
    pub(crate) fn by_state(&self, scope: &str, state: &str) -> String {
        format!("{}:{{{scope}}}:st:{state}", self.prefix)
    }

    /// `P:{S}:ended` (zset): EndState ids by the time they may be purged.
    pub(crate) fn ended(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:ended", self.prefix)
    }

    /// `P:{S}:changes` (stream): one entry per applied job change.
    pub(crate) fn changes(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:changes", self.prefix)
    }

    /// `P:{S}:cfg:{kind}` (set): the configured resources of one kind
    /// (`ResourceKind::as_str`).
    pub(crate) fn resources(&self, scope: &str, kind: &str) -> String {
        format!("{}:{{{scope}}}:cfg:{kind}", self.prefix)
    }

    /// `P:{S}:cfg:workmaster` (hash): work master id → its JSON.
    pub(crate) fn work_masters(&self, scope: &str) -> String {
        self.resources(scope, "workmaster")
    }

    /// `P:{S}:cfg:limit` (string): the scope's job order limit.
    pub(crate) fn job_limit(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:cfg:limit", self.prefix)
    }

    /// `P:{S}:lease:{id}` (zset): a job's dispatch leases.
    pub(crate) fn dispatch_leases(&self, scope: &str, id: &str) -> String {
        format!("{}:{{{scope}}}:lease:{id}", self.prefix)
    }

    /// `P:{S}:held:{id}` (list): dispatches held back while the job is
    /// Interrupted.
    pub(crate) fn held(&self, scope: &str, id: &str) -> String {
        format!("{}:{{{scope}}}:held:{id}", self.prefix)
    }

    /// `P:{S}:exec:{job}` (hash): the SFC execution state of a job.
    pub(crate) fn exec(&self, scope: &str, job: &str) -> String {
        format!("{}:{{{scope}}}:exec:{job}", self.prefix)
    }

    /// `P:{S}:exec:` — the prefix of every execution key of a scope
    /// (`exec` is this followed by the job id).
    pub(crate) fn exec_prefix(&self, scope: &str) -> String {
        self.exec(scope, "")
    }

    /// `P:{S}:waiting:{type_id}` (zset): jobs waiting for an equipment
    /// event type.
    pub(crate) fn waiting(&self, scope: &str, type_id: &str) -> String {
        format!("{}:{{{scope}}}:waiting:{type_id}", self.prefix)
    }

    /// `P:{S}:early` (list): equipment events that arrived before their job
    /// took them.
    pub(crate) fn early(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:early", self.prefix)
    }

    /// `P:{S}:timers` (zset): the engine's timers by due time.
    pub(crate) fn timers(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:timers", self.prefix)
    }

    /// `P:{S}:work` (stream): the engine's work items.
    pub(crate) fn work(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:work", self.prefix)
    }

    /// `P:{S}:sendfail:{entry}` (list): the failed attempts at a work item.
    pub(crate) fn send_failures(&self, scope: &str, entry: &str) -> String {
        format!("{}:{{{scope}}}:sendfail:{entry}", self.prefix)
    }

    /// `P:{S}:changefail:{entry}` (list): the failed attempts at a change
    /// entry.
    pub(crate) fn change_failures(&self, scope: &str, entry: &str) -> String {
        format!("{}:{{{scope}}}:changefail:{entry}", self.prefix)
    }

    /// `P:{S}:deadletters` (list): stream entries the engine gave up on.
    pub(crate) fn dead_letters(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:deadletters", self.prefix)
    }

    /// `P:{S}:index` (hash): job id → its state-index entry (JSON), for
    /// every live job; written by `job_apply.lua` with the job.
    pub(crate) fn state_index(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:index", self.prefix)
    }

    /// `P:{S}:pub:retained` (set): job ids whose order topic the publisher
    /// has retained.
    pub(crate) fn pub_retained(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:pub:retained", self.prefix)
    }

    /// `P:{S}:pub:seq` (string): the publisher's state-index sequence.
    pub(crate) fn pub_seq(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:pub:seq", self.prefix)
    }

    /// `P:{S}:pub:cursor` (string): the publisher's position in the change
    /// stream.
    pub(crate) fn pub_cursor(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:pub:cursor", self.prefix)
    }

    /// `P:{S}:webhook:cursor` (string): the webhook sink's position in the
    /// change stream.
    #[cfg_attr(not(feature = "cloudevents"), allow(dead_code))]
    pub(crate) fn webhook_cursor(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:webhook:cursor", self.prefix)
    }

    /// `P:{S}:webhook:pending` (set): the webhook queues of the scope that
    /// hold deliveries, by member name `{target}:{job}`.
    #[cfg_attr(not(feature = "cloudevents"), allow(dead_code))]
    pub(crate) fn webhook_pending(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:webhook:pending", self.prefix)
    }

    /// `P:{S}:webhook:q:{member}` (list): one webhook queue (one target
    /// URL and one job), oldest delivery first.
    #[cfg_attr(not(feature = "cloudevents"), allow(dead_code))]
    pub(crate) fn webhook_queue(&self, scope: &str, member: &str) -> String {
        format!("{}:{{{scope}}}:webhook:q:{member}", self.prefix)
    }

    /// `P:{S}:webhook:attempts` (hash): queue member → failed attempts at
    /// its head delivery.
    #[cfg_attr(not(feature = "cloudevents"), allow(dead_code))]
    pub(crate) fn webhook_attempts(&self, scope: &str) -> String {
        format!("{}:{{{scope}}}:webhook:attempts", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    /// Each accessor against the text the code wrote before the keys had
    /// one home: data already in Redis must be found under the same names.
    #[test]
    fn every_key_is_spelled_as_before() {
        let k = Keys::new("microdcs");
        let s = "axle-line";
        let cases = [
            (k.scopes(), "microdcs:scopes"),
            (k.publisher_lock(), "microdcs:publisher:lock"),
            (k.dedupe("mes/1", "cmd-7"), "microdcs:dedupe:5:mes/1:cmd-7"),
            (k.dedupe("a:b", "c"), "microdcs:dedupe:3:a:b:c"),
            (k.dedupe("a", "b:c"), "microdcs:dedupe:1:a:b:c"),
            (k.sessions(), "microdcs:{mqtt}:sessions"),
            (k.session_info(), "microdcs:{mqtt}:session-info"),
            (
                k.takeover("microdcs-pod-1"),
                "microdcs:{mqtt}:takeover:microdcs-pod-1",
            ),
            (k.scope_prefix(s), "microdcs:{axle-line}:"),
            (k.job(s, "PO#1"), "microdcs:{axle-line}:job:PO#1"),
            (k.audit(s, "PO#1"), "microdcs:{axle-line}:audit:PO#1"),
            (k.live(s), "microdcs:{axle-line}:live"),
            (k.by_state(s, "2.2"), "microdcs:{axle-line}:st:2.2"),
            (k.ended(s), "microdcs:{axle-line}:ended"),
            (k.changes(s), "microdcs:{axle-line}:changes"),
            (k.webhook_lock(), "microdcs:webhook:lock"),
            (k.webhook_cursor(s), "microdcs:{axle-line}:webhook:cursor"),
            (k.webhook_pending(s), "microdcs:{axle-line}:webhook:pending"),
            (
                k.webhook_queue(s, "0a1b2c3d4e5f6071:j-1"),
                "microdcs:{axle-line}:webhook:q:0a1b2c3d4e5f6071:j-1",
            ),
            (
                k.webhook_attempts(s),
                "microdcs:{axle-line}:webhook:attempts",
            ),
            (
                k.resources(s, "equipment"),
                "microdcs:{axle-line}:cfg:equipment",
            ),
            (k.work_masters(s), "microdcs:{axle-line}:cfg:workmaster"),
            (k.job_limit(s), "microdcs:{axle-line}:cfg:limit"),
            (
                k.dispatch_leases(s, "PO#1"),
                "microdcs:{axle-line}:lease:PO#1",
            ),
            (k.held(s, "PO#1"), "microdcs:{axle-line}:held:PO#1"),
            (k.exec(s, "PO#1"), "microdcs:{axle-line}:exec:PO#1"),
            (k.exec_prefix(s), "microdcs:{axle-line}:exec:"),
            (
                k.waiting(s, "com.example.done.v1"),
                "microdcs:{axle-line}:waiting:com.example.done.v1",
            ),
            (k.early(s), "microdcs:{axle-line}:early"),
            (k.timers(s), "microdcs:{axle-line}:timers"),
            (k.work(s), "microdcs:{axle-line}:work"),
            (
                k.send_failures(s, "1700000000000-0"),
                "microdcs:{axle-line}:sendfail:1700000000000-0",
            ),
            (
                k.change_failures(s, "1700000000000-1"),
                "microdcs:{axle-line}:changefail:1700000000000-1",
            ),
            (k.dead_letters(s), "microdcs:{axle-line}:deadletters"),
            (k.pub_retained(s), "microdcs:{axle-line}:pub:retained"),
            (k.pub_seq(s), "microdcs:{axle-line}:pub:seq"),
            (k.pub_cursor(s), "microdcs:{axle-line}:pub:cursor"),
            (k.dlq_processors(), "microdcs:{dlq}:processors"),
            (k.dlq_letters("jobs"), "microdcs:{dlq}:letters:jobs"),
            (k.dlq_replayed("jobs"), "microdcs:{dlq}:replayed:jobs"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    /// Every scoped key starts with the scope prefix, which the purge
    /// script and the execution scan rely on.
    #[test]
    fn scoped_keys_start_with_the_scope_prefix() {
        let k = Keys::new("t");
        let p = k.scope_prefix("s");
        assert_eq!(k.job("s", "j"), format!("{p}job:j"));
        assert_eq!(k.by_state("s", "5"), format!("{p}st:5"));
        assert_eq!(k.audit("s", "j"), format!("{p}audit:j"));
        assert_eq!(k.exec("s", "j"), format!("{}j", k.exec_prefix("s")));
        assert_eq!(k.prefix(), "t");
    }
}
