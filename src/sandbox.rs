//! The WebAssembly side: one wasmtime engine per process, the `hook` world's
//! bindings, and a fresh, limited `Store` for every call.
//!
//! Limits on every call: a wall-clock deadline (epoch interruption, checked
//! every [`EPOCH_TICK`], plus an async timeout for time spent in host calls),
//! a memory cap (a [`ResourceLimiter`]), and WASI with nothing granted: no
//! files, no environment, no sockets, stdio captured into the log.

use crate::config::{Config, HookLimits};
use crate::event::{Event, Phase};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    UpdateDeadline,
};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

pub(crate) mod command;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "hook",
        exports: { default: async },
    });
}

use bindings::wasmhooks::hook::types as wit;
pub(crate) use bindings::{Hook, HookPre};

/// How often the epoch advances: the granularity of deadlines, and how often
/// a busy guest yields to the async runtime.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Extra wall-clock time past the deadline before the async timeout fires.
/// Only matters for a guest blocked in a host call; CPU-bound guests are
/// stopped by the epoch check first.
const HOST_CALL_GRACE: Duration = Duration::from_millis(25);
/// Captured stdout and stderr per call, each; a guest that writes more
/// traps. A warm instance's pipes hold twice this, and the instance is
/// retired once less than this is left, so each of its calls has as much
/// room as a fresh instance.
const STDIO_CAPACITY: usize = 16 * 1024;
/// A command hook's stdout (its outcome), at most.
const COMMAND_OUTPUT_CAPACITY: usize = 8 * 1024 * 1024;
/// Log lines one call may emit through the `log` import.
const MAX_LOG_LINES: u32 = 100;
/// Longest log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

/// A hook's subscription, as returned by `setup`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Subscription {
    /// Method globs.
    pub methods: Vec<String>,
    /// Phases.
    pub phases: Vec<Phase>,
}

/// One delivery as the hook asked for it, before the host checks it.
#[derive(Debug, Clone)]
pub(crate) struct RawDelivery {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What `handle` returned.
#[derive(Debug, Clone)]
pub(crate) struct RawOutcome {
    pub deliveries: Vec<RawDelivery>,
    pub deny: Option<String>,
}

/// Why one call failed, before the caller adds which hook and event.
#[derive(Debug)]
pub(crate) enum Failure {
    Timeout(Duration),
    MemoryCap(usize),
    Trap(String),
    Returned(String),
}

/// A hook ready to run: linked once, instantiated per call.
#[derive(Clone)]
pub(crate) struct Prepared {
    pub name: Arc<str>,
    pub pre: Pre,
    pub settings_json: Arc<str>,
    pub limits: HookLimits,
    /// Warm instances, for a hook that opted into `[reuse]`.
    pub warm: Option<Arc<WarmPool>>,
}

/// The idle warm instances of one version of one hook, most recently used
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
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// Takes out the instances idle for longer than `idle_for`, to be
    /// dropped by the caller outside the lock.
    fn expired(&self, now: Instant) -> Vec<Warm> {
        let mut idle = self.idle.lock().unwrap();
        // Most recently used last: the expired ones are a prefix.
        let fresh = idle.partition_point(|w| now.duration_since(w.idle_since) >= self.idle_for);
        idle.drain(..fresh).collect()
    }
}

/// Every warm pool, for the sweeper thread that drops idle instances.
type WarmPools = Mutex<Vec<std::sync::Weak<WarmPool>>>;

/// How often idle warm instances are looked for.
const WARM_SWEEP: Duration = Duration::from_millis(250);

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
struct Warm {
    session: Session,
    instance: Hook,
    served: u32,
    /// When it last went back to the pool.
    idle_since: Instant,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A linked hook of either ABI.
#[derive(Clone)]
pub(crate) enum Pre {
    /// A component of the `hook` world: `setup`, then `handle`.
    Hook(HookPre<HostState>),
    /// A WASI command: event on stdin, outcome on stdout.
    Command(CommandPre<HostState>),
}

/// The process-wide WebAssembly runtime.
pub(crate) struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    /// Compiled components by content hash, so a file is compiled once.
    compiled: Mutex<HashMap<String, Component>>,
    /// Compiled components on disk, across restarts.
    disk: Option<Arc<DiskCache>>,
    /// One permit per pool slot: callers wait for a slot instead of failing.
    slots: Semaphore,
    /// One permit per warm instance the pool has room for.
    warm_slots: Arc<Semaphore>,
    /// Every hook version's warm pool, swept for idle instances.
    warm_pools: Arc<WarmPools>,
}

/// Per-call state inside a `Store`.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    hook: Arc<str>,
    log_lines: u32,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for HostState {}

impl bindings::HookImports for HostState {
    fn log(&mut self, level: wit::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(target: "wasmhooks::guest", hook = %self.hook, "more than {MAX_LOG_LINES} log lines in one call; dropping the rest");
            }
            return;
        }
        guest_log(&self.hook, level, truncate(&message, MAX_LOG_LINE));
    }
}

/// Writes one guest line under the `wasmhooks::guest` target, with the hook's name.
fn guest_log(hook: &str, level: wit::Level, line: &str) {
    match level {
        wit::Level::Debug => tracing::debug!(target: "wasmhooks::guest", hook, "{line}"),
        wit::Level::Info => tracing::info!(target: "wasmhooks::guest", hook, "{line}"),
        wit::Level::Warn => tracing::warn!(target: "wasmhooks::guest", hook, "{line}"),
        wit::Level::Error => tracing::error!(target: "wasmhooks::guest", hook, "{line}"),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Caps the total linear memory of one store.
struct MemoryLimiter {
    cap: usize,
    used: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used + desired.saturating_sub(current);
        if total > self.cap {
            // Refuse the growth (memory.grow returns -1); a guest that can't
            // cope traps, and the flag tells us why.
            self.exceeded = true;
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Raised by the epoch callback when a call's deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("deadline reached")]
struct DeadlineReached;

impl Sandbox {
    /// Sets up the engine (pooling allocator if it can reserve its memory,
    /// else on-demand with a warning), the linker, and the epoch ticker.
    pub fn new(config: &Config) -> Result<Sandbox, String> {
        let slots = config.max_concurrent_calls.max(1);
        // Warm instances stay allocated between calls: room for them too.
        let instances = slots + config.max_warm_instances;
        let max_memory = config.limits.max_memory_mib as usize * 1024 * 1024;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_memory_size(max_memory)
            // Reset memory in place (memset, or only the dirty pages with
            // pagemap_scan) instead of decommitting it: a fresh instance per
            // event then costs no page faults. Measured in BENCHMARKS.md.
            .linear_memory_keep_resident(2 * 1024 * 1024)
            .table_keep_resident(64 * 1024)
            .async_stack_keep_resident(128 * 1024)
            .pagemap_scan(Enabled::Auto);
        let mut wasm_config = wasmtime::Config::new();
        wasm_config.epoch_interruption(true);
        wasm_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = match Engine::new(&wasm_config) {
            Ok(engine) => engine,
            Err(err) => {
                tracing::warn!(
                    "the pooling allocator could not reserve memory for {slots} instances ({err}); \
                     falling back to on-demand allocation, which is slower per call. \
                     Lower max_concurrent_calls or limits.max_memory_mib to use the pool"
                );
                wasm_config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&wasm_config).map_err(|e| format!("{e:#}"))?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| format!("{e:#}"))?;
        Hook::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| format!("{e:#}"))?;
        spawn_epoch_ticker(&engine);
        let warm_pools = Arc::new(WarmPools::default());
        spawn_warm_sweeper(&warm_pools);
        let disk = config.cache_dir.as_ref().map(|dir| {
            let disk = DiskCache::new(dir.clone(), &engine);
            disk.prune();
            Arc::new(disk)
        });
        Ok(Sandbox {
            engine,
            linker,
            compiled: Mutex::default(),
            disk,
            slots: Semaphore::new(slots as usize),
            warm_slots: Arc::new(Semaphore::new(config.max_warm_instances as usize)),
            warm_pools,
        })
    }

    /// A warm pool for a hook version with `[reuse]`; its idle instances
    /// are dropped after `idle_secs`.
    pub fn warm_pool(&self, reuse: crate::config::ReuseConfig) -> Arc<WarmPool> {
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

    /// Forgets compiled components other than these (by content hash).
    pub fn retain_compiled<'a>(&self, keep: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = keep.into_iter().collect();
        self.compiled
            .lock()
            .unwrap()
            .retain(|hash, _| keep.contains(hash.as_str()));
    }

    /// Compiles a component, once per content hash, on a blocking thread
    /// so the async runtime's workers stay free.
    pub async fn compile(&self, hash: &str, bytes: Vec<u8>) -> Result<Component, String> {
        if let Some(component) = self.compiled.lock().unwrap().get(hash) {
            return Ok(component.clone());
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(
                "not WebAssembly: the file does not start with the `\\0asm` header \
                        (an empty or truncated file, or not a .wasm?)"
                    .into(),
            );
        }
        let engine = self.engine.clone();
        let disk = self.disk.clone();
        let key = hash.to_owned();
        let component = tokio::task::spawn_blocking(move || {
            if let Some(component) = disk.as_ref().and_then(|d| d.load(&engine, &key)) {
                return Ok(component);
            }
            let started = Instant::now();
            let bytes = if command::is_core_module(&bytes) {
                command::componentize(&bytes)?
            } else {
                bytes
            };
            let component = Component::from_binary(&engine, &bytes)
                .map_err(|e| compile_hint(&format!("{e:#}")))?;
            let compiled = started.elapsed();
            if let Some(disk) = &disk {
                disk.store(&key, &component);
            }
            tracing::debug!(
                hash = &key[..12],
                compile_ms = compiled.as_secs_f64() * 1e3,
                total_ms = started.elapsed().as_secs_f64() * 1e3,
                "compiled"
            );
            Ok::<_, String>(component)
        })
        .await
        .map_err(|e| format!("compiler thread failed: {e}"))??;
        self.compiled
            .lock()
            .unwrap()
            .insert(hash.to_owned(), component.clone());
        Ok(component)
    }

    /// Links a component, once per load: a component of the `hook` world,
    /// or a WASI command (exporting `wasi:cli/run`).
    pub fn link(&self, component: &Component) -> Result<Pre, String> {
        let instance_pre = self.linker.instantiate_pre(component).map_err(|e| {
            format!(
                "{e:#}; a hook may import only WASI and the `hook` world's `log` (see wit/hook.wit)"
            )
        })?;
        match HookPre::new(instance_pre.clone()) {
            Ok(pre) => Ok(Pre::Hook(pre)),
            Err(hook_error) => CommandPre::new(instance_pre)
                .map(Pre::Command)
                .map_err(|_| {
                    format!(
                        "{hook_error:#}; a hook must be a component exporting `setup` and `handle` \
                     of the wasmhooks:hook@0.2.0 `hook` world (see wit/hook.wit), or a WASI \
                     command (a wasm32-wasip1 module with `_start`, or a component exporting \
                     wasi:cli/run) that reads the event on stdin (see docs/writing-hooks.md)"
                    )
                }),
        }
    }

    /// Instantiates the hook and runs its `setup` with its settings.
    pub async fn setup(&self, hook: &Prepared) -> Result<Subscription, Failure> {
        let Pre::Hook(pre) = &hook.pre else {
            unreachable!("a command hook's subscription comes from its NAME.toml")
        };
        self.call(hook, None, async |store, _| {
            let instance: Hook = pre.instantiate_async(&mut *store).await?;
            Ok(instance
                .call_setup(&mut *store, &hook.settings_json)
                .await?
                .map(|s| Subscription {
                    methods: s.methods,
                    phases: s.phases.into_iter().map(Phase::from).collect(),
                }))
        })
        .await
    }

    /// Runs one event through a fresh instance: `setup`, then `handle`.
    pub async fn handle(&self, hook: &Prepared, event: &Event) -> Result<RawOutcome, Failure> {
        let pre = match &hook.pre {
            Pre::Hook(pre) => pre,
            Pre::Command(pre) => return self.run_command(hook, pre, event).await,
        };
        let wit_event = wit::Event {
            call_id: event.call_id().to_owned(),
            phase: event.phase().into(),
            method: event.method().to_owned(),
            timestamp_ms: event.timestamp_ms(),
            payload: event.payload().to_owned(),
        };
        if let Some(pool) = &hook.warm
            && let Some(result) = self.handle_warm(hook, pre, pool, &wit_event).await
        {
            return result;
        }
        self.call(hook, None, async |store, _| {
            match setup_instance(pre, store, &hook.settings_json).await? {
                Ok(instance) => call_handle(&instance, store, &wit_event).await,
                Err(message) => Ok(Err(message)),
            }
        })
        .await
    }

    /// Runs one event on a warm instance of the hook, making one (`setup`
    /// included) if none is idle. An instance goes back to the pool unless
    /// it trapped, timed out, hit its memory cap or served its events.
    /// `None` when there is no room for another warm instance: the caller
    /// then uses a fresh one.
    async fn handle_warm(
        &self,
        hook: &Prepared,
        pre: &HookPre<HostState>,
        pool: &WarmPool,
        wit_event: &wit::Event,
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
                    .run(hook, async |store, _| {
                        setup_instance(pre, store, &hook.settings_json).await
                    })
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
                call_handle(instance, store, wit_event).await
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

    /// Runs a WASI command hook on one event: the event on stdin, the
    /// settings in the environment, the outcome read from stdout.
    async fn run_command(
        &self,
        hook: &Prepared,
        pre: &CommandPre<HostState>,
        event: &Event,
    ) -> Result<RawOutcome, Failure> {
        self.call(hook, Some(command::input(event)), async |store, stdout| {
            let instance = pre.instantiate_async(&mut *store).await?;
            let status = match instance.wasi_cli_run().call_run(&mut *store).await {
                Ok(Ok(())) => 0,
                Ok(Err(())) => 1,
                Err(e) => match e.downcast_ref::<I32Exit>() {
                    Some(I32Exit(code)) => *code,
                    None => return Err(e),
                },
            };
            let out = stdout.contents();
            if status != 0 {
                return Ok(Err(format!("exited with status {status}")));
            }
            if out.len() >= COMMAND_OUTPUT_CAPACITY {
                return Ok(Err(format!(
                    "its stdout exceeded {} MiB",
                    COMMAND_OUTPUT_CAPACITY >> 20
                )));
            }
            Ok(command::output(&out))
        })
        .await
    }

    /// One limited call in a fresh store: takes a pool slot, runs `body`
    /// (which instantiates) under the deadline, logs captured stdio,
    /// classifies failure. With `stdin`, the call is a command's: the bytes
    /// are its stdin, the settings are in its environment, and its stdout
    /// is `body`'s to read rather than logged.
    async fn call<R>(
        &self,
        hook: &Prepared,
        stdin: Option<Vec<u8>>,
        body: impl AsyncFnOnce(
            &mut Store<HostState>,
            &MemoryOutputPipe,
        ) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, Failure> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the slot semaphore is never closed");
        self.session(hook, stdin, STDIO_CAPACITY)
            .run(hook, body)
            .await
    }

    /// A fresh store for `hook`, with its stdio captured (`capacity` bytes
    /// each). With `stdin`, the store is a command's: the bytes are its
    /// stdin, its stdout is its outcome, and the settings are in its
    /// environment.
    fn session(&self, hook: &Prepared, stdin: Option<Vec<u8>>, capacity: usize) -> Session {
        let is_command = stdin.is_some();
        let stdout = MemoryOutputPipe::new(if is_command {
            COMMAND_OUTPUT_CAPACITY
        } else {
            capacity
        });
        let stderr = MemoryOutputPipe::new(capacity);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        if let Some(stdin) = stdin {
            wasi.stdin(MemoryInputPipe::new(stdin))
                .arg(&*hook.name)
                .env(command::SETTINGS_ENV, &*hook.settings_json);
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap: hook.limits.memory_bytes,
                used: 0,
                exceeded: false,
            },
            hook: hook.name.clone(),
            log_lines: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        Session {
            store,
            stdout,
            stderr,
            is_command,
            logged: (0, 0),
        }
    }
}

/// A store and its captured stdio: used for one call (a fresh instance), or
/// for every call of a warm instance.
struct Session {
    store: Store<HostState>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// A command's stdout is its outcome, not log lines.
    is_command: bool,
    /// Bytes of stdout and stderr already logged (the pipes accumulate).
    logged: (usize, usize),
}

impl Session {
    /// Runs `body` under the hook's deadline, logs the stdio it wrote, and
    /// classifies a failure.
    async fn run<R>(
        &mut self,
        hook: &Prepared,
        body: impl AsyncFnOnce(
            &mut Store<HostState>,
            &MemoryOutputPipe,
        ) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, Failure> {
        let state = self.store.data_mut();
        state.limiter.exceeded = false;
        state.log_lines = 0;
        let deadline = hook.limits.deadline;
        let until = Instant::now() + deadline;
        self.store.set_epoch_deadline(1);
        self.store.epoch_deadline_callback(move |_| {
            if Instant::now() >= until {
                Err(wasmtime::Error::new(DeadlineReached))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let run = body(&mut self.store, &self.stdout);
        let result = tokio::time::timeout(deadline + HOST_CALL_GRACE, run).await;
        let stderr_tail = self.log_stdio(&hook.name);
        let is_command = self.is_command;
        let exceeded = self.store.data().limiter.exceeded;
        let memory_cap = || Failure::MemoryCap(hook.limits.memory_bytes / (1024 * 1024));
        match result {
            Err(_elapsed) if exceeded => Err(memory_cap()),
            Err(_elapsed) => Err(Failure::Timeout(deadline)),
            Ok(Ok(Ok(value))) => Ok(value),
            // A command says why it failed on stderr, if anywhere.
            Ok(Ok(Err(message))) => Err(Failure::Returned(match &stderr_tail {
                Some(tail) if is_command => format!("{message}; its stderr ends: {tail}"),
                _ => message,
            })),
            Ok(Err(err)) => Err(if exceeded {
                memory_cap()
            } else if err.is::<DeadlineReached>() {
                Failure::Timeout(deadline)
            } else {
                // The trap and the guest's frames; not the host's backtrace,
                // which `{err:?}` adds under RUST_BACKTRACE and means
                // nothing to a hook's author.
                let mut message = err.root_cause().to_string();
                if let Some(frames) = err.downcast_ref::<wasmtime::WasmBacktrace>() {
                    message = format!("{message}; {frames}");
                }
                if let Some(tail) = stderr_tail {
                    message = format!("{tail} ({message})");
                }
                Failure::Trap(truncate(&message, 4096).to_owned())
            }),
        }
    }

    /// Logs what the call wrote to stdout (info; not a command's, which is
    /// its outcome) and stderr (warn), line by line under the hook's name;
    /// returns stderr's last line, which for a Rust guest is usually the
    /// panic message.
    fn log_stdio(&mut self, hook: &str) -> Option<String> {
        let out = self.stdout.contents();
        let out = out.get(self.logged.0..).unwrap_or_default();
        self.logged.0 += out.len();
        if !self.is_command {
            for line in String::from_utf8_lossy(out)
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                guest_log(hook, wit::Level::Info, line);
            }
        }
        let err = self.stderr.contents();
        let err = err.get(self.logged.1..).unwrap_or_default();
        self.logged.1 += err.len();
        let err = String::from_utf8_lossy(err);
        for line in err.lines().filter(|l| !l.trim().is_empty()) {
            guest_log(hook, wit::Level::Warn, line);
        }
        err.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| truncate(l, 1024).to_owned())
    }
}

/// A new instance with `setup` run on the hook's settings.
async fn setup_instance(
    pre: &HookPre<HostState>,
    store: &mut Store<HostState>,
    settings: &str,
) -> wasmtime::Result<Result<Hook, String>> {
    let instance = pre.instantiate_async(&mut *store).await?;
    Ok(match instance.call_setup(&mut *store, settings).await? {
        Ok(_) => Ok(instance),
        Err(message) => Err(format!("setup refused its settings: {message}")),
    })
}

/// `handle` on an instance whose `setup` has run.
async fn call_handle(
    instance: &Hook,
    store: &mut Store<HostState>,
    event: &wit::Event,
) -> wasmtime::Result<Result<RawOutcome, String>> {
    Ok(instance
        .call_handle(&mut *store, event)
        .await?
        .map(|o| RawOutcome {
            deliveries: o
                .deliveries
                .into_iter()
                .map(|d| RawDelivery {
                    url: d.url,
                    headers: d.headers,
                    body: d.body,
                })
                .collect(),
            deny: o.deny,
        }))
}

/// Compiled components on disk: `HASH-ENGINE.cwasm`, where HASH is the
/// component's SHA-256 and ENGINE the engine's compatibility fingerprint, so
/// a different wasmtime or setting never loads a stale artifact.
///
/// Each file is a magic, a SHA-256 of the artifact, then the artifact: a
/// corrupt file is detected before wasmtime sees it, and recompiled. Files
/// are written to a temporary name and renamed, never rewritten in place,
/// and read into memory rather than mapped.
struct DiskCache {
    dir: PathBuf,
    fingerprint: String,
}

const CACHE_MAGIC: &[u8; 8] = b"WHCACHE1";

/// A compiled-hook cache entry unused this long is deleted when an engine
/// starts: hooks change, and each version leaves its own entry.
const CACHE_UNUSED: Duration = Duration::from_secs(30 * 86_400);

impl DiskCache {
    fn new(dir: PathBuf, engine: &Engine) -> DiskCache {
        struct Hasher(Sha256);
        impl std::hash::Hasher for Hasher {
            fn finish(&self) -> u64 {
                unreachable!("only write() is used")
            }
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
        }
        let mut hasher = Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let digest = hasher.0.finalize();
        let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        DiskCache { dir, fingerprint }
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.fingerprint))
    }

    /// Deletes entries no engine has used for [`CACHE_UNUSED`] (their
    /// modification time is refreshed on every use), and temporary files
    /// left by a crash. Other files in the folder are left alone.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return; // not created yet
        };
        let now = std::time::SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let max_age = if name.ends_with(".cwasm") {
                CACHE_UNUSED
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                Duration::from_secs(3600)
            } else {
                continue;
            };
            let unused = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > max_age);
            if unused && let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!("cannot prune {}: {e}", entry.path().display());
            }
        }
    }

    /// The cached component, or `None` if absent, corrupt or stale (logged).
    fn load(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path).ok()?;
        // In use: not to be pruned (best effort; a failure only costs a recompile later).
        let _ = std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        let artifact = match bytes.split_at_checked(CACHE_MAGIC.len() + 32) {
            Some((head, artifact))
                if &head[..8] == CACHE_MAGIC && head[8..] == Sha256::digest(artifact)[..] =>
            {
                artifact
            }
            _ => {
                tracing::warn!(
                    "compiled-hook cache entry {} is corrupt; recompiling",
                    path.display()
                );
                return None;
            }
        };
        // SAFETY: the checksum shows these are the bytes we serialized with
        // an engine of the same fingerprint.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(
                    "compiled-hook cache entry {} is unusable ({e}); recompiling",
                    path.display()
                );
                None
            }
        }
    }

    /// Writes the component; failures only cost a recompile later, so they are logged.
    fn store(&self, hash: &str, component: &Component) {
        let result = (|| -> Result<(), String> {
            let artifact = component.serialize().map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
            let tmp = self.dir.join(format!(".{hash}.{}.tmp", fastrand::u64(..)));
            let mut file = Vec::with_capacity(artifact.len() + 40);
            file.extend_from_slice(CACHE_MAGIC);
            file.extend_from_slice(&Sha256::digest(&artifact));
            file.extend_from_slice(&artifact);
            std::fs::write(&tmp, &file).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, self.path(hash)).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                e.to_string()
            })
        })();
        if let Err(e) = result {
            tracing::warn!(
                "cannot write to the compiled-hook cache {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// Drops warm instances that sat idle too long, every [`WARM_SWEEP`], until
/// the sandbox is dropped.
fn spawn_warm_sweeper(pools: &Arc<WarmPools>) {
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

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasmhooks-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// Adds what to do to the compiler's message for the usual mistakes.
fn compile_hint(message: &str) -> String {
    // (A core module never gets here: it is run as a WASI command.)
    let hint = if message.contains("unexpected end") || message.contains("out of bounds") {
        "; the file is truncated (write hooks to a temporary file and rename it into place)"
    } else {
        ""
    };
    format!("{message}{hint}")
}

impl From<wit::Phase> for Phase {
    fn from(p: wit::Phase) -> Phase {
        match p {
            wit::Phase::Pre => Phase::Pre,
            wit::Phase::Post => Phase::Post,
        }
    }
}

impl From<Phase> for wit::Phase {
    fn from(p: Phase) -> wit::Phase {
        match p {
            Phase::Pre => wit::Phase::Pre,
            Phase::Post => wit::Phase::Post,
        }
    }
}
