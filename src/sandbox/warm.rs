//! Warm instances, for hooks that opt into `[reuse]`: set up once, they
//! serve up to `events` events, and are dropped when idle too long.

use super::component::{Hook, HookEvent, ready_instance};
use super::{Failure, Prepared, RawOutcome, STDIO_CAPACITY, Sandbox, Session};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// last.
pub(crate) struct WarmPool {
    idle: Mutex<Vec<Warm>>,
    /// Events one instance serves before it is replaced.
    events: u32,
    /// Idle instances kept.
    instances: usize,
    /// How long an instance may sit idle before it is dropped.
    idle_for: Duration,
}

impl WarmPool {
    /// Warm instances idle now.
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// Takes out the instances idle for longer than `idle_for`, to be
    /// dropped by the caller outside the lock.
    pub(super) fn expired(&self, now: Instant) -> Vec<Warm> {
        let mut idle = self.idle.lock().unwrap();
        // Most recently used last: the expired ones are a prefix.
        let fresh = idle.partition_point(|w| now.duration_since(w.idle_since) >= self.idle_for);
        idle.drain(..fresh).collect()
    }
}

/// Every warm pool, for the sweeper thread that drops idle instances.
pub(super) type WarmPools = Mutex<Vec<std::sync::Weak<WarmPool>>>;

/// How often idle warm instances are looked for.
pub(super) const WARM_SWEEP: Duration = Duration::from_millis(250);

/// Whether `bytes` was built by Go's toolchain: a core module inside
/// carries Go's `go:buildid` section. Go instances cannot serve a second
/// event reliably: under the bindings' runtime (`wit-bindgen go` 0.63,
/// Go 1.27) a garbage collection between calls eventually leaves the
/// instance broken (a `sigpanic` loop until the stack runs out).
pub(crate) fn built_by_go(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .map_while(Result::ok)
        .any(|payload| matches!(payload, wasmparser::Payload::CustomSection(c) if c.name() == "go:buildid"))
}

/// An instance kept between events: its store, its exports, and a permit
/// for its place in the instance pool.
pub(super) struct Warm {
    pub(super) session: Session,
    pub(super) instance: Hook,
    pub(super) served: u32,
    /// When it last went back to the pool.
    pub(super) idle_since: Instant,
    pub(super) _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Sandbox {
    /// A warm pool for a hook version with `[reuse]`; its idle instances
    /// are dropped after `idle_secs`.
    pub(crate) fn warm_pool(&self, reuse: crate::config::ReuseConfig) -> Arc<WarmPool> {
        let pool = Arc::new(WarmPool {
            idle: Mutex::default(),
            events: reuse.events,
            instances: reuse.instances as usize,
            idle_for: Duration::from_secs(reuse.idle_secs.into()),
        });
        let mut pools = self.warm_pools.lock().unwrap();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        pool
    }

    /// Runs one event on a warm instance of the hook, making one (`setup`
    /// included, unless the hook is pre-initialised) if none is idle. An instance goes back to the pool unless
    /// it trapped, timed out, hit its memory cap or served its events.
    /// `None` when there is no room for another warm instance: the caller
    /// then uses a fresh one.
    pub(super) async fn handle_warm(
        &self,
        hook: &Prepared,
        pool: &WarmPool,
        event: &HookEvent<'_>,
    ) -> Option<Result<RawOutcome, Failure>> {
        let idle = pool.idle.lock().unwrap().pop();
        let permit = match idle {
            Some(_) => None,
            None => Some(self.warm_slots.clone().try_acquire_owned().ok()?),
        };
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the slot semaphore is never closed");
        let mut warm = match (idle, permit) {
            (Some(warm), _) => warm,
            (None, permit) => {
                let mut session = self.session(hook, None, 2 * STDIO_CAPACITY);
                let setup = session
                    .run(hook, async |store, _| ready_instance(hook, store).await)
                    .await;
                Warm {
                    instance: match setup {
                        Ok(instance) => instance,
                        Err(failure) => return Some(Err(failure)),
                    },
                    session,
                    served: 0,
                    idle_since: Instant::now(),
                    _permit: permit.expect("taken above when no instance was idle"),
                }
            }
        };
        let instance = &warm.instance;
        let result = warm
            .session
            .run(hook, async |store, _| {
                instance.call_handle(store, event).await
            })
            .await;
        warm.served += 1;
        let healthy = matches!(result, Ok(_) | Err(Failure::Returned(_)));
        let room = warm.session.logged.0.max(warm.session.logged.1) <= STDIO_CAPACITY;
        if healthy && room && warm.served < pool.events {
            warm.idle_since = Instant::now();
            let mut idle = pool.idle.lock().unwrap();
            if idle.len() < pool.instances {
                idle.push(warm);
            }
        }
        Some(result)
    }
}

/// Drops warm instances that sat idle too long, every [`WARM_SWEEP`], until
/// the sandbox is dropped.
pub(super) fn spawn_warm_sweeper(pools: &Arc<WarmPools>) {
    let pools = Arc::downgrade(pools);
    std::thread::Builder::new()
        .name("wasmhooks-warm".into())
        .spawn(move || {
            loop {
                std::thread::sleep(WARM_SWEEP);
                let Some(pools) = pools.upgrade() else { return };
                let live: Vec<Arc<WarmPool>> = pools
                    .lock()
                    .unwrap()
                    .iter()
                    .filter_map(|p| p.upgrade())
                    .collect();
                let now = Instant::now();
                // Dropped here, outside every lock.
                let expired: Vec<Warm> = live.iter().flat_map(|p| p.expired(now)).collect();
                drop(expired);
            }
        })
        .expect("spawning the warm-instance sweeper");
}
