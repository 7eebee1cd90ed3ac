//! The OPC UA server face for job management (issue #13; feature `opcua`).
//!
//! `Objects/<scope>/JobManagement` is an instance of Machinery Jobs'
//! `JobManagementType` whose `JobOrderControl` (an ISA95-JOBCONTROL
//! `ISA95JobOrderReceiverObjectType`) carries the job methods. Both
//! NodeSets are embedded and imported at start, so clients read the
//! DataTypeDefinitions exactly as the companion specifications define them.
//!
//! The parts: the server (endpoints, users, own certificate, `pki`), the
//! address space with the instances of the configured scopes and of scopes
//! first seen in Redis (`node_manager`), the structured types and their
//! JSON form (`types`, `convert`), the method calls through the
//! face-independent job commands (`methods`, `jobs::command`), and the
//! receiver's variables and status events from the change streams
//! (`follow`, `event`). See README "OPC UA face" and DESIGN.md "How do the
//! two faces share one job manager?".

mod convert;
mod event;
mod follow;
mod methods;
mod node_manager;
mod pki;
mod types;

use crate::app::Shutdown;
use crate::config::OpcuaConfig;
use crate::jobs::JobManager;
use crate::redis::RedisClient;
use node_manager::JobsNodeManagerBuilder;
use opcua::crypto::SecurityPolicy;
use opcua::nodes::{NodeSet2Import, NodeSetImport};
use opcua::server::node_manager::memory::InMemoryNodeManagerBuilder;
use opcua::server::{ServerBuilder, ServerEndpoint, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::MessageSecurityMode;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::info;

/// The ISA95-JOBCONTROL NodeSet (namespace of the receiver and its methods).
const JOBCONTROL_NODESET: &str =
    include_str!("../../companion-specs/opc.ua.isa95-jobcontrol.nodeset2.xml");
/// The Machinery Jobs NodeSet (`JobManagementType`).
const MACHINERY_JOBS_NODESET: &str =
    include_str!("../../companion-specs/Opc.Ua.Machinery.Jobs.Nodeset2.xml");

/// How many sessions the server keeps at once (async-opcua's default is
/// 20). A session outlives its connection until its timeout (at most 60 s
/// here), and async-opcua evicts none early: a client in a crash-restart
/// loop that abandons 20 sessions within a minute locked every client out
/// (`BadTooManySessions`). A mitigation, not a cure: abandoning this many
/// within the timeout still does.
const MAX_SESSIONS: usize = 200;

/// The user token id of the configured user.
const USER_TOKEN_ID: &str = "user";

/// The embedded NodeSets, ISA95-JOBCONTROL first (Machinery Jobs uses it).
///
/// # Errors
/// A NodeSet does not parse (a build defect).
pub(crate) fn nodesets() -> Result<Vec<Box<dyn NodeSetImport>>, String> {
    let mut out: Vec<Box<dyn NodeSetImport>> = Vec::new();
    for (name, xml) in [
        ("ISA95-JOBCONTROL", JOBCONTROL_NODESET),
        ("Machinery Jobs", MACHINERY_JOBS_NODESET),
    ] {
        let import = NodeSet2Import::new_str("en", xml, vec![])
            .map_err(|e| format!("the embedded {name} NodeSet does not load: {e}"))?;
        out.push(Box::new(import));
    }
    Ok(out)
}

/// The application URI: configured, or `urn:microdcs:{identifier}` (the
/// same on every replica of a station).
fn application_uri(config: &OpcuaConfig, identifier: &str) -> String {
    config
        .application_uri
        .clone()
        .unwrap_or_else(|| format!("urn:microdcs:{identifier}"))
}

/// The advertised host name: configured, or the system's.
fn hostname(config: &OpcuaConfig) -> String {
    config.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

/// Runs the OPC UA server of `config` until `shutdown`: listens on
/// `bind:port`, advertises `opc.tcp://{hostname}:{port}/`, one endpoint per
/// configured (policy, mode) pair (the `None` policy for anonymous sessions
/// only), the own certificate under `pki_dir` (created on the first start).
///
/// `identifier` is `mqtt.identifier` (default application URI);
/// `manager` serves the method calls; `instance` is this replica's id
/// (the audit trail's command source); `redis` opens the connections that
/// follow the change streams (values and events, `follow`); `listening`
/// is set once the port is bound (the readiness gate `opcua:listening`).
///
/// # Errors
/// The configuration cannot be served (an unusable PKI directory, the port
/// taken), or the server failed.
pub(crate) async fn serve(
    config: OpcuaConfig,
    identifier: String,
    manager: JobManager,
    instance: String,
    redis: RedisClient,
    listening: Arc<AtomicBool>,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    let uri = application_uri(&config, &identifier);
    let host = hostname(&config);
    pki::ensure_own_certificate(&config.pki_dir, &uri, &host)?;

    let store = manager.store().clone();
    let default_limit = manager.settings().default_limit;
    let (server, handle) = build_server(&config, &uri, &host, manager, instance)?;
    let Some(jobs) = handle.node_managers().get_of_type::<follow::JobsManager>() else {
        return Err("the OPC UA server has no job management node manager (a defect)".into());
    };
    let follower = follow::Follower {
        store,
        client: redis,
        ns: jobs.inner().indices(),
        manager: jobs,
        subscriptions: handle.subscriptions().clone(),
        configured: config.scopes.clone(),
        default_limit,
    };

    let listener = tokio::net::TcpListener::bind((config.bind.as_str(), config.port))
        .await
        .map_err(|e| {
            format!(
                "OPC UA server cannot listen on {}:{}: {e}",
                config.bind, config.port
            )
        })?;
    // Connections wait in the backlog until the node managers are
    // initialised; the replica is ready for clients from here.
    listening.store(true, Ordering::Relaxed);
    info!(
        endpoint = %format!("opc.tcp://{host}:{}/", config.port),
        application_uri = %uri,
        anonymous = config.anonymous,
        "OPC UA server listening"
    );
    // A client certificate trusted after it was refused is let in.
    let sweep = tokio::spawn(pki::sweep_rejected(
        config.pki_dir.clone(),
        shutdown.clone(),
    ));
    // Ends with `shutdown`, or aborted when `serve` returns early.
    let _follow = AbortOnDrop(tokio::spawn(follower.run(shutdown.clone())));
    let run = server.run_with(listener);
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => {
            sweep.abort();
            return r;
        }
        _ = shutdown.wait() => {}
    }
    handle.cancel();
    let r = run.await;
    let _ = sweep.await;
    r
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The server of `config` (endpoints, users, certificate paths, our node
/// manager), not yet listening. Kept out of `serve`: the builder is not
/// `Send` and must not live across an `.await`.
fn build_server(
    config: &OpcuaConfig,
    uri: &str,
    host: &str,
    manager: JobManager,
    instance: String,
) -> Result<(opcua::server::Server, opcua::server::ServerHandle), String> {
    let mut builder = ServerBuilder::new()
        .application_name("microdcs")
        .application_uri(uri)
        .product_uri("urn:microdcs")
        .host(host)
        .port(config.port)
        .pki_dir(config.pki_dir.clone())
        .certificate_path(pki::CERT)
        .private_key_path(pki::KEY)
        .create_sample_keypair(false)
        .trust_client_certs(config.trust_all_clients)
        .max_sessions(MAX_SESSIONS)
        .discovery_urls(vec![format!("opc.tcp://{host}:{}/", config.port)]);
    let mut secure_tokens: Vec<String> = Vec::new();
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        builder = builder.add_user_token(
            USER_TOKEN_ID,
            ServerUserToken::user_pass(user.as_str(), password.expose()),
        );
        secure_tokens.push(USER_TOKEN_ID.to_owned());
    }
    if config.anonymous {
        secure_tokens.push(ANONYMOUS_USER_TOKEN_ID.to_owned());
    }
    for policy_name in &config.security_policies {
        let policy = SecurityPolicy::from_str(policy_name)
            .map_err(|()| format!("unknown OPC UA security policy {policy_name:?}"))?;
        if policy == SecurityPolicy::None {
            // Passwords would travel in clear: anonymous only.
            if config.anonymous {
                builder = builder.add_endpoint(
                    "none",
                    ServerEndpoint::new(
                        "/",
                        policy,
                        MessageSecurityMode::None,
                        &[ANONYMOUS_USER_TOKEN_ID.to_owned()],
                    ),
                );
            }
            continue;
        }
        for mode_name in &config.security_modes {
            let mode = match mode_name.as_str() {
                "Sign" => MessageSecurityMode::Sign,
                _ => MessageSecurityMode::SignAndEncrypt,
            };
            builder = builder.add_endpoint(
                format!("{policy_name}-{mode_name}"),
                ServerEndpoint::new("/", policy, mode, &secure_tokens),
            );
        }
    }
    let imports = nodesets()?;
    builder = builder.with_node_manager(InMemoryNodeManagerBuilder::new(JobsNodeManagerBuilder {
        imports,
        scopes: config.scopes.clone(),
        manager,
        instance,
    }));
    builder.build()
}
