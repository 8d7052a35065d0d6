//! The WebAssembly side: one wasmtime engine per process, the `hook` world's
//! bindings, and a fresh, limited `Store` for every call.
//!
//! Limits on every call: a wall-clock deadline (epoch interruption, checked
//! every [`EPOCH_TICK`], plus an async timeout for time spent in host calls),
//! a memory cap (a [`ResourceLimiter`]), and WASI with nothing granted: no
//! files, no environment, no sockets, stdio captured into the log.
//!
//! This file is the engine, its instance pool and linker, compiling and
//! linking; beside it: `cache` (compiled hooks on disk), `host` (what a
//! store holds: WASI context, memory limiter, the `log` import), `session`
//! (a store run under a deadline, its stdio logged), `warm` (instances kept
//! for `[reuse]`), `component` (the `hook` world's ABI), `preinit` (hooks
//! started from the state `setup` left at load) and `command` (the WASI
//! command ABI).

use crate::config::{Config, HookLimits};
use crate::event::Phase;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

pub(crate) mod command;

mod cache;
mod component;
mod cpu;
mod error;
mod host;
mod preinit;
mod session;
mod warm;

use cache::DiskCache;
pub(crate) use component::HookPre;
pub(crate) use error::CacheError;
pub use error::SandboxError;
pub(crate) use host::HostState;
use host::MemoryLimiter;
pub(crate) use preinit::SetUp;
use session::Session;
pub(crate) use warm::{WarmPool, built_by_go};
use warm::{WarmPools, spawn_warm_sweeper};

/// How often the epoch advances: the granularity of deadlines, and how often
/// a busy guest yields to the async runtime.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Extra running time past the deadline before the call's timer stops it.
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
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
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
    /// Stopped at its deadline (the first), after running this long.
    Timeout(Duration, Duration),
    MemoryCap(usize),
    Trap(String),
    Returned(String),
}

/// A hook ready to run: linked once, instantiated per call.
#[derive(Clone)]
pub(crate) struct Prepared {
    pub name: Arc<str>,
    pub linked: Linked,
    pub settings_json: Arc<str>,
    pub limits: HookLimits,
    /// Warm instances, for a hook that opted into `[reuse]`.
    pub warm: Option<Arc<WarmPool>>,
}

/// A hook linked once, ready to instantiate per call, by its ABI.
#[derive(Clone)]
pub(crate) enum Linked {
    /// A component of the `hook` world: `setup`, then `handle`.
    Hook(HookPre),
    /// A component of the `hook` world pre-initialised from the state its
    /// `setup` left at load (see `preinit.rs`): `handle` alone.
    Initialized(HookPre),
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
    /// Compiles run one at a time: each one already uses every core
    /// (parallel compilation), and a thousand hooks loading at once must
    /// neither compile the same content a thousand times nor nest a
    /// thousand compiles on the compiler pool's stacks (which overflowed).
    compiling: tokio::sync::Mutex<()>,
    /// One permit per pool slot: callers wait for a slot instead of failing.
    slots: Semaphore,
    /// One permit per CPU: a call's wasm runs, and its deadline counts,
    /// only while it holds one (see `cpu.rs`).
    cpus: Arc<Semaphore>,
    /// One permit per warm instance the pool has room for.
    warm_slots: Arc<Semaphore>,
    /// Every hook version's warm pool, swept for idle instances.
    warm_pools: Arc<WarmPools>,
}

impl Sandbox {
    /// Sets up the engine (pooling allocator if it can reserve its memory,
    /// else on-demand with a warning), the linker, and the epoch ticker.
    pub(crate) fn new(config: &Config) -> Result<Sandbox, SandboxError> {
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
                Engine::new(&wasm_config).map_err(SandboxError::Setup)?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(SandboxError::Setup)?;
        // 0.4.0's `log`; older hooks link to it too (its types are the same).
        component::v4::Hook::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |s| s,
        )
        .map_err(SandboxError::Setup)?;
        spawn_epoch_ticker(&engine);
        let warm_pools = Arc::new(WarmPools::default());
        spawn_warm_sweeper(&warm_pools);
        let disk = config.cache_dir.as_ref().and_then(|dir| {
            let disk = DiskCache::open(dir.clone(), &engine)?;
            disk.prune();
            Some(Arc::new(disk))
        });
        Ok(Sandbox {
            engine,
            linker,
            compiled: Mutex::default(),
            disk,
            compiling: tokio::sync::Mutex::new(()),
            slots: Semaphore::new(slots as usize),
            cpus: Arc::new(Semaphore::new(cpus(slots))),
            warm_slots: Arc::new(Semaphore::new(config.max_warm_instances as usize)),
            warm_pools,
        })
    }

    /// Forgets compiled components other than these (by content hash).
    pub(crate) fn retain_compiled<'a>(&self, keep: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = keep.into_iter().collect();
        self.compiled
            .lock()
            .unwrap()
            .retain(|hash, _| keep.contains(hash.as_str()));
    }

    /// Compiles a component, once per content hash, on a blocking thread
    /// so the async runtime's workers stay free.
    pub(crate) async fn compile(
        &self,
        hash: &str,
        bytes: Vec<u8>,
    ) -> Result<Component, SandboxError> {
        if let Some(component) = self.compiled.lock().unwrap().get(hash) {
            return Ok(component.clone());
        }
        let _turn = self.compiling.lock().await;
        // Another load of the same content may have compiled it meanwhile.
        if let Some(component) = self.compiled.lock().unwrap().get(hash) {
            return Ok(component.clone());
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(SandboxError::NotWasm);
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
            let component =
                Component::from_binary(&engine, &bytes).map_err(SandboxError::Compile)?;
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
            Ok::<_, SandboxError>(component)
        })
        .await
        .map_err(SandboxError::CompilerThread)??;
        self.compiled
            .lock()
            .unwrap()
            .insert(hash.to_owned(), component.clone());
        Ok(component)
    }

    /// Links a component, once per load: a component of the `hook` world,
    /// or a WASI command (exporting `wasi:cli/run`).
    pub(crate) fn link(&self, component: &Component) -> Result<Linked, SandboxError> {
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(SandboxError::Imports)?;
        match HookPre::new(instance_pre.clone()) {
            Ok(pre) => Ok(Linked::Hook(pre)),
            Err(hook_error) => CommandPre::new(instance_pre)
                .map(Linked::Command)
                .map_err(|_| SandboxError::NotAHook(hook_error)),
        }
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
            cpus: self.cpus.clone(),
        }
    }
}

/// Calls that run at once: one per CPU the process may use, so that a
/// running call is not sharing its CPU with other calls (which would eat
/// into its deadline), and at most `slots`.
fn cpus(slots: u32) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(slots as usize)
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
