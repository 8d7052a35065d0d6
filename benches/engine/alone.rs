//! The floor under `engine.pre`: the same component run by wasmtime alone,
//! a fresh instance per event, `setup` then `handle`, in a store configured
//! as the engine configures its own (pooling allocator, memory settings,
//! async calls, epoch deadline), with nothing else: no slot or CPU permit,
//! no task, no limits, no outcome checks, no verdict.

use ::wasmhooks::{Event, Phase};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "hook",
        exports: { default: async },
    });
}
use bindings::wasmhooks::hook::types as wit;
use bindings::{Hook, HookImports, HookPre};

pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for State {}

impl HookImports for State {
    fn log(&mut self, _: wit::Level, _: String) {}
}

pub struct Alone {
    engine: Engine,
    pre: HookPre<State>,
    settings: String,
}

impl Alone {
    /// With the pool an engine of `engine` settings has.
    pub fn new(wasm: &[u8], settings: &str, engine: &::wasmhooks::config::Config) -> Alone {
        // Keep in step with `Sandbox::new` (src/sandbox/mod.rs).
        let instances = engine.max_concurrent_calls + engine.max_warm_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_memory_size(engine.limits.max_memory_mib as usize * 1024 * 1024)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(128 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).unwrap();
        let component = wasmtime::component::Component::new(&engine, wasm).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        Hook::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).unwrap();
        let pre = HookPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Alone {
            engine,
            pre,
            settings: settings.to_owned(),
        }
    }

    /// Whether the hook vetoed `event`.
    pub async fn denies(&self, event: &Event) -> bool {
        let state = State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.set_epoch_deadline(1_000);
        let hook = self.pre.instantiate_async(&mut store).await.unwrap();
        hook.call_setup(&mut store, &self.settings)
            .await
            .unwrap()
            .unwrap();
        let event = wit::Event {
            call_id: event.call_id().to_owned(),
            phase: match event.phase() {
                Phase::Pre => wit::Phase::Pre,
                Phase::Post => wit::Phase::Post,
                Phase::Observed => wit::Phase::Observed,
                Phase::System => wit::Phase::System,
            },
            method: event.method().to_owned(),
            timestamp_ms: event.timestamp_ms(),
            payload: event.payload().to_owned(),
        };
        let outcome = hook.call_handle(&mut store, &event).await.unwrap().unwrap();
        outcome.deny.is_some()
    }
}
