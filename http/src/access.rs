//! The gate every `/api/v1` route passes: authenticate the bearer token, charge the
//! caller's rate limit, and hand the handler a [`Caller`] that it authorises with the
//! [`Policy`].
//!
//! Rate limits are token buckets per client: per token subject once authenticated, per IP
//! address for requests without a valid token (so guessing tokens is throttled too). Each
//! instance's buckets see only its own requests; the cluster-wide count beside them
//! ([`ClusterUsage`]) holds a client to its limit across all instances.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use medflow_actors::RequestContext;
use medflow_actors::internal_events::{RequestRateLimited, RequestUnauthenticated, emit};
use medflow_actors::store::AuditAppend;
use uuid::Uuid;
use warp::Filter;
use warp::http::{HeaderMap, header};

use crate::AppState;
use crate::auth::{AuthFailure, Principal};
use crate::cluster_rate::{ClusterUsage, digest, now_ms};
use crate::extract::{RequestMeta, request_context};
use crate::policy::{Action, Target};
use crate::problem::Problem;

/// Token-bucket limits per client.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitSettings {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
}

/// Whose bucket a request draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Subject(String),
    Address(IpAddr),
    Unknown,
}

impl ClientKey {
    /// The client as the cluster-wide count knows it (a digest: no address or subject).
    fn digest(&self) -> crate::cluster_rate::ClientDigest {
        match self {
            Self::Subject(subject) => digest(&format!("sub:{subject}")),
            Self::Address(address) => digest(&format!("ip:{address}")),
            Self::Unknown => digest("unknown"),
        }
    }
}

/// Per-client token buckets, and the client's count across the cluster. Cheap to clone.
#[derive(Clone)]
pub struct RateLimits {
    limiter: Arc<DefaultKeyedRateLimiter<ClientKey>>,
    cluster: Arc<ClusterUsage>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("clients", &self.limiter.len())
            .finish()
    }
}

impl RateLimits {
    pub fn new(settings: RateLimitSettings) -> Self {
        let per_second = NonZeroU32::new(settings.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.burst).unwrap_or(per_second);
        Self {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
            cluster: Arc::new(ClusterUsage::new(settings.per_second, settings.burst)),
        }
    }

    fn check(&self, key: &ClientKey) -> Result<(), Problem> {
        let refused = |wait: Duration| {
            emit(RequestRateLimited { retry_after: wait });
            Problem::too_many_requests(wait.max(Duration::from_millis(1)))
        };
        self.limiter.check_key(key).map_err(|not_until| {
            refused(not_until.wait_time_from(DefaultClock::default().now()))
        })?;
        self.cluster.admit(key.digest(), now_ms()).map_err(refused)
    }

    /// The cluster-wide count, shared through PostgreSQL by [`ClusterUsage::share`].
    pub fn cluster(&self) -> Arc<ClusterUsage> {
        self.cluster.clone()
    }

    /// Forgets clients whose buckets are full again, bounding memory; call periodically.
    pub fn forget_idle_clients(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Clients currently tracked.
    pub fn tracked_clients(&self) -> usize {
        self.limiter.len()
    }
}

/// An authenticated request: who calls, and the context recorded with what they do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub ctx: RequestContext,
    policy: crate::policy::Policy,
}

impl Caller {
    /// Returns `Ok` when the caller may perform `action` on `target`, else the 403 problem.
    pub fn authorize(&self, action: Action, target: Target) -> Result<(), Problem> {
        self.policy.authorize(&self.principal, action, target)
    }

    /// Returns `Ok` when the caller may perform `action` on some target (see
    /// [`Policy::allows_some`](crate::policy::Policy::allows_some)), else the 403 problem.
    pub fn authorize_some(&self, action: Action) -> Result<(), Problem> {
        if self.policy.allows_some(&self.principal, action) {
            Ok(())
        } else {
            self.policy.authorize(&self.principal, action, Target::Any)
        }
    }

    /// Returns `Ok` when allowed on every one of `patient_ids` (the patients whose data an
    /// answer would show).
    pub fn authorize_all(
        &self,
        action: Action,
        patient_ids: impl IntoIterator<Item = Uuid>,
    ) -> Result<(), Problem> {
        for patient_id in patient_ids {
            self.authorize(action, Target::Patient(patient_id))?;
        }
        Ok(())
    }

    /// Audit rows recording that this caller read `objects` (`action` such as
    /// `patient.read`).
    pub fn read_rows(
        &self,
        action: &'static str,
        object_type: &'static str,
        objects: impl IntoIterator<Item = Uuid>,
    ) -> Vec<AuditAppend> {
        objects
            .into_iter()
            .map(|id| AuditAppend {
                actor_id: self.ctx.actor_id.clone(),
                action,
                object_type,
                object_id: Some(id),
                client_addr: self.ctx.client_addr.clone(),
                request_id: Some(self.ctx.request_id.clone()),
                details: serde_json::Value::Object(Default::default()),
            })
            .collect()
    }
}

/// Authenticates the request and charges its rate limit; the handler receives the result
/// and answers 401/429 itself, so these take precedence over everything but routing.
pub fn caller(
    state: &AppState,
) -> impl Filter<Extract = (Result<Caller, Problem>,), Error = std::convert::Infallible> + Clone + use<>
{
    let state = state.clone();
    warp::ext::optional::<RequestMeta>()
        .and(warp::header::headers_cloned())
        .then(move |meta: Option<RequestMeta>, headers: HeaderMap| {
            let state = state.clone();
            async move { authenticate(&state, meta, &headers).await }
        })
}

pub(crate) async fn authenticate(
    state: &AppState,
    meta: Option<RequestMeta>,
    headers: &HeaderMap,
) -> Result<Caller, Problem> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or(""));
    match state.auth.authenticate(authorization).await {
        Ok(principal) => {
            state
                .rate_limits
                .check(&ClientKey::Subject(principal.subject.clone()))?;
            let ctx = request_context(meta, headers, principal.subject.clone());
            Ok(Caller {
                principal,
                ctx,
                policy: state.policy,
            })
        }
        Err(failure) => {
            let key = meta
                .as_ref()
                .and_then(|meta| meta.client_addr)
                .map_or(ClientKey::Unknown, |addr| ClientKey::Address(addr.ip()));
            state.rate_limits.check(&key)?;
            emit(RequestUnauthenticated {
                invalid_token: failure == AuthFailure::Invalid,
            });
            Err(Problem::unauthenticated(failure == AuthFailure::Invalid))
        }
    }
}
