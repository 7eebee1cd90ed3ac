//! Every Lua script the crate runs, each in its own file under `lua/`,
//! loaded here once. `Script` sends `EVALSHA` and falls back to `EVAL`
//! after a Redis restart, so the texts must stay byte for byte what they
//! are: their SHA1s are pinned below. Each script is one atomic step some
//! invariant relies on; its file says which.

use redis::Script;
use std::sync::LazyLock;

macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $(
            $(#[$doc])*
            pub(crate) static $name: LazyLock<Script> =
                LazyLock::new(|| Script::new(include_str!(concat!("lua/", $file))));
        )*

        /// Every script with its file name (for the hash pin).
        #[cfg(test)]
        const ALL: &[(&str, &LazyLock<Script>)] = &[$(($file, &$name)),*];

        /// The text of every script (to load them on every node of a
        /// cluster at start).
        pub(crate) fn all() -> &'static [&'static str] {
            &[$(include_str!(concat!("lua/", $file))),*]
        }
    };
}

scripts! {
    // Job management (`jobs::store`).

    /// The compare-and-swap of one job change with its indexes and change
    /// entry (`job_apply.lua`).
    JOB_APPLY = "job_apply.lua";
    /// Removes EndState jobs past their retention (`job_purge.lua`).
    JOB_PURGE = "job_purge.lua";
    /// Appends a refused command to the trail of an existing job
    /// (`audit_append.lua`).
    AUDIT_APPEND = "audit_append.lua";
    /// Counts a job's unexpired dispatch leases (`job_leases_live.lua`).
    JOB_LEASES_LIVE = "job_leases_live.lua";

    // The MES publisher (`publisher`).

    /// Repairs a scope's state index where it disagrees with the live set
    /// (`index_fill.lua`).
    INDEX_FILL = "index_fill.lua";

    // The SFC engine (`sfc::engine`, `sfc::fence`).

    /// The compare-and-swap of a job's execution state with its timers,
    /// work items and waiting sets (`exec_apply.lua`).
    EXEC_APPLY = "exec_apply.lua";
    /// Keeps an event for a job that does not take it yet, unless one does
    /// by now (`early_push.lua`).
    EARLY_PUSH = "early_push.lua";
    /// Moves due timers into the work stream, each once (`timers_due.lua`).
    TIMERS_DUE = "timers_due.lua";
    /// Takes a dispatch lease while the job is Running, holds the dispatch
    /// while it is Interrupted (`dispatch_lease.lua`).
    TAKE_DISPATCH_LEASE = "dispatch_lease.lua";
    /// Puts a resumed job's held dispatches back into the work stream
    /// (`dispatch_resume.lua`).
    RESUME_HELD = "dispatch_resume.lua";

    // Deduplication (`dedupe`).

    /// Claims a message for one delivery (`dedupe_claim.lua`).
    DEDUPE_CLAIM = "dedupe_claim.lua";
    /// Extends a delivery's claim while its handler runs
    /// (`dedupe_extend.lua`).
    DEDUPE_EXTEND = "dedupe_extend.lua";
    /// Gives up a delivery's claim after a failed attempt
    /// (`dedupe_release.lua`).
    DEDUPE_RELEASE = "dedupe_release.lua";

    // The webhook sink (`webhook`).

    /// Queues the deliveries of a batch of job changes with the sink's
    /// cursor (`webhook_enqueue.lua`).
    #[cfg_attr(not(feature = "cloudevents"), allow(dead_code))]
    WEBHOOK_ENQUEUE = "webhook_enqueue.lua";
    /// Takes a delivered or dead-lettered delivery off its queue
    /// (`webhook_ack.lua`).
    #[cfg_attr(not(feature = "cloudevents"), allow(dead_code))]
    WEBHOOK_ACK = "webhook_ack.lua";

    // Singleton locks (`singleton`).

    /// Takes or extends a lock (`lock_renew.lua`).
    LOCK_RENEW = "lock_renew.lua";
    /// Releases a lock its caller holds (`lock_release.lua`).
    LOCK_RELEASE = "lock_release.lua";

    // The MQTT session registry (`transport::takeover`).

    /// Renews a session's heartbeat (`session_heartbeat.lua`).
    SESSION_HEARTBEAT = "session_heartbeat.lua";
    /// Lists the sessions whose heartbeat is too old (`session_dead.lua`).
    SESSION_DEAD = "session_dead.lua";
    /// Removes a session that is still dead (`session_forget.lua`).
    SESSION_FORGET = "session_forget.lua";
}

#[cfg(test)]
mod tests {
    use super::ALL;

    /// The SHA1 of every script: an edit changes the `EVALSHA` hash, which
    /// must be a deliberate change of the script, never an accident of a
    /// move (the audit trail, #11, changed `job_apply.lua`,
    /// `exec_apply.lua` and `job_purge.lua`).
    #[test]
    fn script_texts_are_unchanged() {
        let pinned = [
            (
                "dedupe_claim.lua",
                "1742066cf937dd68e82d862360f2890c13a130d7",
            ),
            (
                "dedupe_extend.lua",
                "6b775be71c2824029c89dcadb4ac23889ad47b5b",
            ),
            (
                "dedupe_release.lua",
                "7ece0ac4911ac0b2d47bbe14a272e3e7f5f2359b",
            ),
            ("job_apply.lua", "40cea0777c087dc2638716050cefde0acc41d79b"),
            (
                "job_leases_live.lua",
                "42a1eff9745869fe7a119c28d8e7713e08b9e32b",
            ),
            (
                "audit_append.lua",
                "2ba65fb5278650f531f39ff557ba4cfa5ce375d3",
            ),
            ("job_purge.lua", "e9c6e6198f8ff9e1dc7b5ee1f450052b7d2da43f"),
            ("index_fill.lua", "5f79ceb3d17baac70f44cd8ec50bed7b32a00848"),
            (
                "dispatch_lease.lua",
                "85be6eda6d1d2e9c111ca65e98a72ea397f15c6c",
            ),
            (
                "dispatch_resume.lua",
                "062a2167a9751f83714004d68bfb44298fb62c73",
            ),
            ("early_push.lua", "5464532bd4e9be8c6508bd84e95d649fc78406b8"),
            ("exec_apply.lua", "49f9ac98755135110c8a27da4ab42c297245beea"),
            ("timers_due.lua", "b858928cc82639ed7748de851fbe1507190e3cab"),
            (
                "lock_release.lua",
                "b98ac5b64d011c483f2c788cf24272476e9a8487",
            ),
            ("lock_renew.lua", "52a562f6e80e0c4d331450d806c75d0d0c15d0eb"),
            (
                "session_dead.lua",
                "8feb6d3115fcaa068ef41d8059082ca1c029e14a",
            ),
            (
                "session_forget.lua",
                "1061e8663d1bc16cdf18517c1af6d13ae60c93f4",
            ),
            (
                "session_heartbeat.lua",
                "1ea4c4294ca385b9d3b7c0163594e94322714a0c",
            ),
            (
                "webhook_enqueue.lua",
                "fb62f28ae4bc235836c37dc792938394d8d2ae77",
            ),
            (
                "webhook_ack.lua",
                "4e70fb81bec2ebe58a7486e2708da0b62e12f94b",
            ),
        ];
        assert_eq!(ALL.len(), pinned.len());
        for (file, sha) in pinned {
            let (_, script) = ALL
                .iter()
                .find(|(f, _)| *f == file)
                .unwrap_or_else(|| panic!("{file} is not loaded"));
            assert_eq!(script.get_hash(), sha, "{file}");
        }
    }
}
