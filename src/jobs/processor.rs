//! The built-in `machinery-jobs` northbound processor, written with the
//! public processor API: one handler per OPC UA method, the station
//! configuration events, and the two queries.

use super::audit::{Cause, CommandInfo};
use super::command::{self, apply_method, apply_order, Applied, OrderOp};
use super::machine::Method;
use super::manager::{CommandOutcome, JobManager};
use super::status::ReturnStatus;
use super::store::ResourceKind;
use super::wire::*;
use crate::envelope::EventType;
use crate::error::{ErrorKind, HandlerError};
use crate::models::jobcontrol_config::{
    ConfigEquipment, ConfigJobAcceptance, ConfigMaterialClass, ConfigMaterialDefinition,
    ConfigPersonnel, ConfigPhysicalAsset, ConfigWorkMaster,
};
use crate::processor::{Emit, Meta, Outcome, Processor, Scope, State};
use crate::transport::Intent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

/// The processor's name in the `APP_PROCESSING_*` lists.
pub const NAME: &str = "machinery-jobs";

/// Builds the `machinery-jobs` processor around `manager`.
pub fn processor(manager: &JobManager) -> Processor {
    let p = Processor::northbound(NAME)
        .handle(store)
        .handle(store_and_start)
        .handle(update)
        .handle(start)
        .handle(revoke_start)
        .handle(pause)
        .handle(resume)
        .handle(stop)
        .handle(abort)
        .handle(cancel)
        .handle(clear)
        .handle(by_id)
        .handle(by_state)
        .handle(config_equipment)
        .handle(config_material_class)
        .handle(config_material_definition)
        .handle(config_personnel)
        .handle(config_physical_asset)
        .handle(config_work_master)
        .handle(config_job_acceptance)
        .state(manager.clone())
        // Schema validation (`crate::validation`) reports what the schemas
        // say, except what these handlers answer by the wire contract: a
        // missing JobOrder/JobOrderID is InvalidRequest (§3), a Comment may
        // be one LocalizedText as well as a list, and a DELETE of the
        // job-acceptance limit needs no value.
        .answers_missing::<StoreRequest>(ORDER_MEMBERS)
        .answers_missing::<StoreAndStartRequest>(ORDER_MEMBERS)
        .answers_missing::<UpdateRequest>(ORDER_MEMBERS)
        .answers_missing::<StartRequest>(ID_MEMBER)
        .answers_missing::<RevokeStartRequest>(ID_MEMBER)
        .answers_missing::<PauseRequest>(ID_MEMBER)
        .answers_missing::<ResumeRequest>(ID_MEMBER)
        .answers_missing::<StopRequest>(ID_MEMBER)
        .answers_missing::<AbortRequest>(ID_MEMBER)
        .answers_missing::<CancelRequest>(ID_MEMBER)
        .answers_missing::<ClearRequest>(ID_MEMBER)
        .answers_missing::<ByIdRequest>(ID_MEMBER)
        .answers_missing::<JobAcceptanceConfig>(&["max_downloadable_job_orders"])
        .lenient_at::<StoreRequest>(COMMENT)
        .lenient_at::<StoreAndStartRequest>(COMMENT)
        .lenient_at::<UpdateRequest>(COMMENT)
        .lenient_at::<StartRequest>(COMMENT)
        .lenient_at::<RevokeStartRequest>(COMMENT)
        .lenient_at::<PauseRequest>(COMMENT)
        .lenient_at::<ResumeRequest>(COMMENT)
        .lenient_at::<StopRequest>(COMMENT)
        .lenient_at::<AbortRequest>(COMMENT)
        .lenient_at::<CancelRequest>(COMMENT)
        .lenient_at::<ClearRequest>(COMMENT)
        .build();
    manager.set_emitter(p.emitter());
    p
}

/// Members whose absence an order method answers with `InvalidRequest`.
const ORDER_MEMBERS: &[&str] = &["JobOrder", "JobOrderID"];
/// The member whose absence an id method answers with `InvalidRequest`.
const ID_MEMBER: &[&str] = &["JobOrderID"];
/// Where the methods take one `LocalizedText` as well as a list of them.
const COMMENT: &[&str] = &["/Comment"];

/// `source` and `id` of a command: what makes it the same command when
/// the broker delivers it again.
fn cause(meta: &Meta) -> String {
    format!("{}\u{1f}{}", meta.event.source, meta.event.id)
}

fn outcome<R: EventType>(
    scope: &str,
    meta: &Meta,
    effect: &CommandOutcome,
    reply: impl FnOnce(u64) -> R,
) -> Outcome {
    if let Some(reason) = &effect.reason {
        info!(scope, id = %meta.event.id, ty = %meta.event.ty, status = effect.status.value(), reason, "job command refused");
    }
    let mut out = Outcome::reply(&reply(effect.status.value()));
    if let Some(ev) = &effect.event {
        out = out.emit(Emit::new(ev).subject(scope));
    }
    out
}

fn invalid<R: EventType>(meta: &Meta, why: &str, reply: impl FnOnce(u64) -> R) -> Outcome {
    info!(id = %meta.event.id, ty = %meta.event.ty, reason = why, "invalid job request");
    Outcome::reply(&reply(ReturnStatus::InvalidRequest.value()))
}

/// What a job method asks for, as its request gives it.
enum Command {
    /// Store, StoreAndStart or Update with the request's job order.
    Order(OrderOp, Option<Value>),
    /// Start, RevokeStart, Pause, Resume, Stop, Abort, Cancel or Clear with
    /// the request's JobOrderID.
    Id(Method, Option<String>),
}

/// A job method: apply it through [`command`](super::command), answer with
/// `reply`'s response (`InvalidRequest`, with the reason logged, for a
/// request that cannot be applied; a dead letter for a malformed order).
async fn command<R: EventType>(
    command: Command,
    scope: Option<Scope>,
    meta: Meta,
    m: &JobManager,
    reply: fn(u64) -> R,
) -> Result<Outcome, HandlerError> {
    let Some(scope) = scope else {
        return Ok(invalid(&meta, "no subject", reply));
    };
    let key = cause(&meta);
    let info = CommandInfo {
        method: match &command {
            Command::Order(op, _) => op.method(),
            Command::Id(method, _) => *method,
        }
        .name(),
        source: meta.event.source.clone(),
        id: meta.event.id.clone(),
        correlationid: meta
            .event
            .correlationid
            .as_ref()
            .map(|c| c.as_str().to_owned()),
    };
    let cause = Cause::command(&key, &info);
    let applied = match command {
        Command::Order(op, order) => apply_order(op, order, &scope, cause, m).await?,
        Command::Id(method, id) => apply_method(method, id.as_deref(), &scope, cause, m).await?,
    };
    match applied {
        Applied::Done(effect) => Ok(outcome(&scope, &meta, &effect, reply)),
        Applied::Invalid(why) => Ok(invalid(&meta, why, reply)),
        Applied::BadOrder(e) => Err(HandlerError::terminal(
            ErrorKind::PayloadInvalid,
            format!("JobOrder: {e}"),
        )),
    }
}

/// The handler of one job method: the [`Command`] `$kind($op, req.$field)`,
/// answered with `$resp`.
macro_rules! command_handler {
    ($fn:ident, $req:ident => $resp:ident, $kind:ident($op:expr, $field:ident)) => {
        async fn $fn(
            req: $req,
            scope: Option<Scope>,
            meta: Meta,
            State(m): State<JobManager>,
        ) -> Result<Outcome, HandlerError> {
            let reply = |s| $resp { return_status: s };
            command(Command::$kind($op, req.$field), scope, meta, &m, reply).await
        }
    };
}

command_handler!(store, StoreRequest => StoreResponse, Order(OrderOp::Store, job_order));
command_handler!(
    store_and_start,
    StoreAndStartRequest => StoreAndStartResponse,
    Order(OrderOp::StoreAndStart, job_order)
);
command_handler!(update, UpdateRequest => UpdateResponse, Order(OrderOp::Update, job_order));
command_handler!(start, StartRequest => StartResponse, Id(Method::Start, job_order_id));
command_handler!(
    revoke_start,
    RevokeStartRequest => RevokeStartResponse,
    Id(Method::RevokeStart, job_order_id)
);
command_handler!(pause, PauseRequest => PauseResponse, Id(Method::Pause, job_order_id));
command_handler!(resume, ResumeRequest => ResumeResponse, Id(Method::Resume, job_order_id));
command_handler!(stop, StopRequest => StopResponse, Id(Method::Stop, job_order_id));
command_handler!(abort, AbortRequest => AbortResponse, Id(Method::Abort, job_order_id));
command_handler!(cancel, CancelRequest => CancelResponse, Id(Method::Cancel, job_order_id));
command_handler!(clear, ClearRequest => ClearResponse, Id(Method::Clear, job_order_id));

async fn by_id(
    req: ByIdRequest,
    scope: Option<Scope>,
    State(m): State<JobManager>,
) -> Result<ByIdResponse, HandlerError> {
    let (status, job_response) = match scope {
        Some(scope) => command::by_id(&m, &scope, req.job_order_id.as_deref()).await?,
        None => (ReturnStatus::InvalidRequest, None),
    };
    Ok(ByIdResponse {
        job_response,
        return_status: status.value(),
    })
}

async fn by_state(
    req: ByStateRequest,
    scope: Option<Scope>,
    State(m): State<JobManager>,
) -> Result<ByStateResponse, HandlerError> {
    let reply = |s: ReturnStatus, r| ByStateResponse {
        job_responses: r,
        return_status: s.value(),
    };
    let Some(scope) = scope else {
        return Ok(reply(ReturnStatus::InvalidRequest, Vec::new()));
    };
    Ok(
        match command::by_state(&m, &scope, req.job_order_state.as_deref()).await? {
            Ok(responses) => reply(ReturnStatus::NoError, responses),
            Err(e) => {
                info!(reason = %e, "RequestJobResponseByJobOrderState refused");
                reply(ReturnStatus::InvalidRequest, Vec::new())
            }
        },
    )
}

// --- station configuration (no reply) -------------------------------------

/// Whether a configuration event removes (`DELETE`) rather than upserts
/// (`PUT` or no `method`).
fn is_delete(meta: &Meta) -> Result<bool, HandlerError> {
    match meta
        .event
        .method
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("PUT") => Ok(false),
        Some("DELETE") => Ok(true),
        Some(other) => Err(HandlerError::terminal(
            ErrorKind::UserPropertyInvalid,
            format!("method '{other}' is neither PUT nor DELETE"),
        )),
    }
}

fn require_scope(scope: Option<Scope>) -> Result<Scope, HandlerError> {
    scope.ok_or_else(|| {
        HandlerError::terminal(
            ErrorKind::MissingUserProperty,
            "configuration events need a 'subject' (the scope)",
        )
    })
}

fn require_id(id: Option<String>, field: &str) -> Result<String, HandlerError> {
    id.filter(|i| !i.is_empty()).ok_or_else(|| {
        HandlerError::terminal(ErrorKind::PayloadInvalid, format!("'{field}' is missing"))
    })
}

macro_rules! resource_handler {
    ($fn:ident, $ty:ident, $kind:expr, $field:literal, |$cfg:ident| $id:expr) => {
        async fn $fn($cfg: $ty, scope: Option<Scope>, meta: Meta, State(m): State<JobManager>) -> Result<(), HandlerError> {
            let scope = require_scope(scope)?;
            let delete = is_delete(&meta)?;
            let id = require_id($id, $field)?;
            m.store().register_scope(&scope).await?;
            m.store().set_resource(&scope, $kind, &id, !delete).await?;
            info!(scope = %*scope, kind = $kind.as_str(), id, delete, "station configuration changed");
            Ok(())
        }
    };
}

resource_handler!(
    config_equipment,
    ConfigEquipment,
    ResourceKind::Equipment,
    "ID",
    |c| Some(c.0.id)
);
resource_handler!(
    config_material_class,
    ConfigMaterialClass,
    ResourceKind::MaterialClass,
    "MaterialClassID",
    |c| c.0.material_class_id
);
resource_handler!(
    config_material_definition,
    ConfigMaterialDefinition,
    ResourceKind::MaterialDefinition,
    "MaterialDefinitionID",
    |c| c.0.material_definition_id
);
resource_handler!(
    config_personnel,
    ConfigPersonnel,
    ResourceKind::Personnel,
    "ID",
    |c| Some(c.0.id)
);
resource_handler!(
    config_physical_asset,
    ConfigPhysicalAsset,
    ResourceKind::PhysicalAsset,
    "ID",
    |c| Some(c.0.id)
);

async fn config_work_master(
    cfg: ConfigWorkMaster,
    scope: Option<Scope>,
    meta: Meta,
    State(m): State<JobManager>,
) -> Result<(), HandlerError> {
    let scope = require_scope(scope)?;
    let delete = is_delete(&meta)?;
    let id = require_id(Some(cfg.id.clone()), "ID")?;
    m.store().register_scope(&scope).await?;
    if delete {
        m.store().set_work_master(&scope, &id, None).await?;
        info!(scope = %*scope, work_master = id, "work master deleted");
        return Ok(());
    }
    if let (Some(schema), Some(data)) = (&cfg.dataschema, &cfg.data) {
        for (s, validate) in &m.settings().validators {
            if s == schema {
                validate(data).map_err(|e| {
                    HandlerError::terminal(
                        ErrorKind::PayloadInvalid,
                        format!("work master '{id}': {e}"),
                    )
                    .context("work_master", id.clone())
                })?;
            }
        }
    }
    // The recipe validator is registered under the exact recipe schema, the
    // rule the engine runs recipes by (`sfc::source`); a near miss is stored
    // as before, unvalidated, and never run, so say so where someone looks.
    if let Some(schema) = cfg.dataschema.as_deref() {
        if crate::sfc::source::is_misspelt_recipe_schema(schema) {
            warn!(
                scope = %*scope,
                work_master = id,
                dataschema = schema,
                expected = crate::sfc::source::RECIPE_SCHEMA,
                "work master's dataschema is not exactly the SFC recipe schema: \
                 its data is stored unchecked and never run as a recipe"
            );
        }
    }
    let doc = serde_json::to_string(&cfg)
        .map_err(|e| HandlerError::terminal(ErrorKind::PayloadInvalid, e.to_string()))?;
    m.store().set_work_master(&scope, &id, Some(&doc)).await?;
    info!(
        scope = %*scope,
        work_master = id,
        sfc_recipe = crate::sfc::source::is_recipe_schema(cfg.dataschema.as_deref()),
        "work master stored"
    );
    Ok(())
}

/// `config.jobacceptance` payload (snake_case on the wire). Read leniently
/// (a `DELETE` needs no body), with the generated `ConfigJobAcceptance`'s
/// CloudEvent type and schema.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobAcceptanceConfig {
    /// The scope's live-job limit (0: unlimited).
    #[serde(
        alias = "MaxDownloadableJobOrders",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_downloadable_job_orders: Option<u64>,
}
super::wire::typed_as!(JobAcceptanceConfig, ConfigJobAcceptance);

async fn config_job_acceptance(
    cfg: JobAcceptanceConfig,
    scope: Option<Scope>,
    meta: Meta,
    State(m): State<JobManager>,
) -> Result<(), HandlerError> {
    let scope = require_scope(scope)?;
    let limit = if is_delete(&meta)? {
        None
    } else {
        Some(cfg.max_downloadable_job_orders.ok_or_else(|| {
            HandlerError::terminal(
                ErrorKind::PayloadInvalid,
                "'max_downloadable_job_orders' is missing",
            )
        })?)
    };
    m.store().register_scope(&scope).await?;
    m.store().set_limit(&scope, limit).await?;
    info!(scope = %*scope, ?limit, "job acceptance limit changed");
    Ok(())
}

/// The retained self-description published on `{prefix}/metadata`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessorMetadata {
    /// Model URIs with version and publication date.
    pub models: Vec<ModelInfo>,
    /// CloudEvent types this processor accepts.
    pub commands: Vec<String>,
    /// CloudEvent types it emits.
    pub events: Vec<String>,
}

/// One information model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model URI.
    pub uri: String,
    /// Version.
    pub version: String,
    /// Publication date.
    pub publication_date: String,
}

impl EventType for ProcessorMetadata {
    const TYPE: &'static str = "com.github.aschamberger.microdcs.processor.metadata.v1";
    const DATASCHEMA: &'static str =
        "https://aschamberger.github.io/schemas/microdcs/metadata/v1.0.0/";
}

/// Publishes the retained metadata event of the processor.
///
/// # Errors
/// The transport is closed.
pub async fn publish_metadata(processor: &Processor) -> Result<(), HandlerError> {
    let meta = ProcessorMetadata {
        models: super::models_info(),
        commands: processor
            .handled_types()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        events: vec![StatusEvent::TYPE.to_owned()],
    };
    processor
        .emitter()
        .emit(Emit::new(&meta).intent(Intent::Metadata).retain(true))
        .await
        .inspect_err(|e| warn!(error = %e, "metadata not published"))
}
