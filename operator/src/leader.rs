//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! A replica counts as leader only until `renew_deadline` after the start of its last
//! successful renewal, measured on its own monotonic clock; the others take over only
//! `lease_duration` (longer) after they last saw the lease change. A leader that was
//! paused therefore finds its leadership expired the moment it resumes, before it can
//! write anything; the controller checks [`Leadership::is_leader`] right before every
//! write, and fences the NodeRoutes a predecessor might still write to (see
//! `controller`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// Why one acquire-or-renew attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API refused or failed the request.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// No answer within the renew deadline.
    #[error("no answer from the API server within the renew deadline ({0:?})")]
    Timeout(Duration),
}

/// Timings and identity of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name, or host + pid).
    pub identity: String,
    /// How long others wait after the lease last changed before taking it.
    pub lease_duration: Duration,
    /// How long after a renewal started this replica still acts as leader.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The standard timings (15 s / 10 s / 2 s), as client-go's defaults.
    pub fn new(namespace: String, identity: String) -> Self {
        Self {
            namespace,
            name: "podnet-operator".into(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    valid_until: Option<Instant>,
    term: u64,
}

/// Whether this replica leads right now, shared by the election loop and the controller.
#[derive(Clone, Debug)]
pub struct Leadership {
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Leadership {
    /// The current leadership term, if this replica leads now. A new term starts every
    /// time leadership is (re)acquired.
    pub fn term(&self) -> Option<u64> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.valid_until
            .filter(|t| *t > Instant::now())
            .map(|_| s.term)
    }

    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }

    /// Notified whenever leadership is gained or lost.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn renewed(&self, started: Instant, deadline: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let was = s.valid_until.is_some_and(|t| t > Instant::now());
        s.valid_until = Some(started + deadline);
        if !was {
            s.term += 1;
            let term = s.term;
            drop(s);
            self.changed.send_replace(term);
        }
    }

    fn lost(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.valid_until.take().is_some() {
            let term = s.term;
            drop(s);
            self.changed.send_replace(term);
        }
    }
}

/// The election loop: acquires and renews the lease until `shutdown` turns true, then
/// releases it so another replica takes over at once.
pub async fn run(
    client: Client,
    cfg: LeaseConfig,
    leadership: Leadership,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed: Option<(LeaseSpec, Instant)> = None;
    loop {
        let started = Instant::now();
        // A renewal that cannot finish within the deadline is a failed one (client-go
        // bounds it the same way); waiting longer would only hold up the next attempt.
        let attempt = tokio::time::timeout(
            cfg.renew_deadline,
            try_acquire_or_renew(&api, &cfg, &mut observed),
        );
        match attempt
            .await
            .unwrap_or(Err(LeaseError::Timeout(cfg.renew_deadline)))
        {
            Ok(true) => {
                if !leadership.is_leader() {
                    info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
                }
                leadership.renewed(started, cfg.renew_deadline);
            }
            Ok(false) => {
                if leadership.is_leader() {
                    warn!(identity = %cfg.identity, "lost the lease to another replica");
                }
                leadership.lost();
            }
            // Leadership simply runs out at its deadline if renewals keep failing.
            Err(e) => warn!(error = %e, "lease renewal failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.retry_period) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    if leadership.is_leader() {
        leadership.lost();
        release(&api, &cfg).await;
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<(LeaseSpec, Instant)>,
) -> Result<bool, LeaseError> {
    let duration_secs = i32::try_from(cfg.lease_duration.as_secs())
        .unwrap_or(i32::MAX)
        .max(1);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != cfg.identity {
        // Expiry is judged by when *we* saw the record change, not by the holder's clock.
        let seen_at = match observed {
            Some((seen, at)) if *seen == spec => *at,
            _ => {
                let at = Instant::now();
                *observed = Some((spec.clone(), at));
                at
            }
        };
        let their_duration =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration_secs).max(0) as u64);
        if !holder.is_empty() && seen_at.elapsed() < their_duration {
            return Ok(false);
        }
    }
    let mut new_spec = spec.clone();
    if holder != cfg.identity {
        new_spec.holder_identity = Some(cfg.identity.clone());
        new_spec.acquire_time = Some(now());
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    new_spec.lease_duration_seconds = Some(duration_secs);
    new_spec.renew_time = Some(now());
    lease.spec = Some(new_spec);
    // replace() carries metadata.resourceVersion: a concurrent change makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => info!("released the lease"),
        Err(e) => warn!(error = %e, "could not release the lease; it expires on its own"),
    }
}
