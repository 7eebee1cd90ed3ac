//! The MES side: the scripted MES of `microdcs::testkit` stores the work
//! master, sends `StoreAndStart` job orders keeping a fixed number of jobs
//! in flight, and waits for each job's Ended status event, speaking only
//! the wire contract.

use super::{BenchResult, Received};
pub(crate) use microdcs::testkit::mes::{job_state, STATUS};
use microdcs::testkit::mes::{Mes as Scripted, NO_ERROR, S, SFC_RECIPE};
use microdcs::testkit::mqtt::user_prop;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The scope (`subject`) of every job.
pub(crate) const SCOPE: &str = "cell";
/// The work master carrying the recipe.
pub(crate) const WORK_MASTER: &str = "wm-bench";

/// One batch of jobs as the MES saw it.
#[derive(Debug)]
pub(crate) struct Phase {
    /// When each job's order (`StoreAndStart` or `Store`) was published.
    pub(crate) sent: HashMap<String, Instant>,
    /// When each job's Ended status event arrived (for `Store` orders:
    /// when the successful reply arrived).
    pub(crate) ended: HashMap<String, Instant>,
    /// Jobs refused or aborted, with the reason.
    pub(crate) failed: Vec<(String, String)>,
    /// From the first order sent to the last job ended.
    pub(crate) elapsed: Duration,
}

/// The MES client.
pub(crate) struct Mes(Scripted);

impl Mes {
    /// Connects and subscribes its reply topic, the jobs' events and the
    /// processors' metadata (which tells that a replica is up).
    pub(crate) async fn connect(port: u16) -> BenchResult<Self> {
        let mut mes = Scripted::try_connect(port, "bench")
            .await
            .map_err(|e| e.to_string())?;
        mes.events
            .try_subscribe(&["app/jobs/metadata"], QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Mes(mes))
    }

    /// The next message for the MES.
    pub(crate) async fn recv_at(&mut self, timeout: Duration) -> Option<Received> {
        self.0.recv_at(timeout).await
    }

    /// Sends the work master (a configuration event, no reply).
    pub(crate) async fn store_work_master(&mut self, recipe: Value) -> BenchResult<()> {
        let body = json!({"ID": WORK_MASTER, "data": recipe, "dataschema": SFC_RECIPE});
        self.0
            .try_configure("workmaster", SCOPE, &body, false)
            .await
            .map_err(|e| e.to_string())
    }

    /// Runs `count` jobs named `{prefix}-{n}`, `in_flight` at a time, until
    /// all ended or failed. Gives up when no job finishes for `stall`.
    pub(crate) async fn run_jobs(
        &mut self,
        prefix: &str,
        count: usize,
        in_flight: usize,
        stall: Duration,
    ) -> BenchResult<Phase> {
        self.orders(Method::StoreAndStart, prefix, count, in_flight, stall)
            .await
    }

    /// Stores `count` jobs named `{prefix}-{n}` without starting them
    /// (`Store`, as an MES fills a station's queue), `in_flight` orders
    /// outstanding, until every order was answered. A job counts as done
    /// ([`Phase::ended`]) when its reply says `NO_ERROR`.
    pub(crate) async fn store_jobs(
        &mut self,
        prefix: &str,
        count: usize,
        in_flight: usize,
        stall: Duration,
    ) -> BenchResult<Phase> {
        self.orders(Method::Store, prefix, count, in_flight, stall)
            .await
    }

    async fn orders(
        &mut self,
        method: Method,
        prefix: &str,
        count: usize,
        in_flight: usize,
        stall: Duration,
    ) -> BenchResult<Phase> {
        let mut phase = Phase {
            sent: HashMap::with_capacity(count),
            ended: HashMap::with_capacity(count),
            failed: Vec::new(),
            elapsed: Duration::ZERO,
        };
        let mut open: HashSet<String> = HashSet::with_capacity(in_flight);
        let mut corr: HashMap<Vec<u8>, String> = HashMap::with_capacity(in_flight);
        let mut next = 0;
        let started = Instant::now();
        while phase.ended.len() + phase.failed.len() < count {
            while next < count && open.len() < in_flight {
                let job = format!("{prefix}-{next:05}");
                next += 1;
                let c = uuid::Uuid::new_v4().as_bytes().to_vec();
                let id = Scripted::next_id(method.name());
                let body = json!({"JobOrder": order(&job)});
                corr.insert(c.clone(), job.clone());
                open.insert(job.clone());
                phase.sent.insert(job, Instant::now());
                self.0
                    .send(
                        &format!("{S}{}.v2", method.name()),
                        &id,
                        Some(SCOPE),
                        &body,
                        Some(&c),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let Some((at, p)) = self.0.recv_at(stall).await else {
                return Err(format!(
                    "jobs '{prefix}': no job finished for {} s ({} ended, {} failed of {count}; {} in flight)",
                    stall.as_secs(),
                    phase.ended.len(),
                    phase.failed.len(),
                    open.len()
                ));
            };
            let topic = String::from_utf8_lossy(&p.topic);
            if topic == self.0.replies() {
                let job = p
                    .properties
                    .as_ref()
                    .and_then(|pr| pr.correlation_data.as_ref())
                    .and_then(|c| corr.remove(c.as_ref()));
                let status = serde_json::from_slice::<Value>(&p.payload)
                    .ok()
                    .and_then(|v| v["ReturnStatus"].as_u64());
                if let Some(job) = job {
                    if status != Some(NO_ERROR) && open.remove(&job) {
                        let why = user_prop(&p, "mdcserrormessage").unwrap_or("");
                        phase
                            .failed
                            .push((job, format!("{} answered {status:?} {why}", method.name())));
                    } else if method == Method::Store && open.remove(&job) {
                        phase.ended.insert(job, at);
                    }
                }
            } else if method == Method::StoreAndStart && user_prop(&p, "type") == Some(STATUS) {
                let Some((job, state)) = job_state(&p.payload) else {
                    continue;
                };
                match state.as_str() {
                    "Ended" if open.remove(&job) => {
                        phase.ended.insert(job, at);
                    }
                    "Aborted" if open.remove(&job) => {
                        phase.failed.push((job, "Aborted".into()));
                    }
                    _ => {}
                }
            }
        }
        phase.elapsed = started.elapsed();
        Ok(phase)
    }
}

/// The job order methods the benchmark sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// Stored and started: the job runs to Ended.
    StoreAndStart,
    /// Stored only: the job waits (history for the scaling figures).
    Store,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::StoreAndStart => "StoreAndStart",
            Method::Store => "Store",
        }
    }
}

/// A job order for the bench's work master.
fn order(id: &str) -> Value {
    json!({
        "JobOrderID": id,
        "Description": [{"Locale": "en", "Text": "benchmark job"}],
        "WorkMasterID": [{"ID": WORK_MASTER}],
        "Priority": 3,
        "EquipmentRequirements": [{"ID": "cell-1"}],
        "MaterialRequirements": [{"MaterialClassID": "steel", "MaterialDefinitionID": "s235"}]
    })
}
