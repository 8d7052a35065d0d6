//! Hooks pre-initialised at load (`preinitialize = true` in NAME.toml):
//! every fresh instance starts from the state that `setup` left, instead of
//! running `setup` again before each event.
//!
//! At load, wasmtime-wizer instruments the component (it adds exports that
//! read each core instance's memories and globals); the instrumented
//! component is instantiated under the hook's limits and set up with its
//! settings, like any `setup`; then its state is written into a new
//! component, as data segments and global initialisers. That component is
//! compiled (cached by its content hash, like any hook) and instantiated
//! once per event, so isolation stays per event while `setup` runs once per
//! load; the pooling allocator maps its memory image copy-on-write.
//!
//! A hook is set up per event instead, as before, when wizer cannot rewrite
//! the component (nested components, table mutations, and the like), or
//! when `setup` left the instance holding a host resource (a stream it opened
//! to write to stdout, say), which a new instance would not have. What a
//! hook's author must know (in docs/writing-hooks.md): whatever `setup` read
//! from a clock or a random source is frozen into every instance, and what it
//! logs appears once, at load. It is opt-in because it costs two more
//! compiles per load (the instrumented component and the snapshot).

use super::component::HookPre;
use super::{Failure, HostState, Linked, Prepared, Sandbox, SandboxError, Subscription};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::{ComponentNamedList, Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

/// A hook of the `hook` world after its `setup` at load.
pub(crate) struct SetUp {
    pub subscription: Subscription,
    /// The pre-initialised component, linked, when it could be made.
    pub initialized: Option<Linked>,
    /// Content hash of the pre-initialised component (its compiled key).
    pub initialized_hash: Option<String>,
}

/// How far pre-initialisation went.
enum Preinit {
    /// Refused before `setup` ran: why.
    Refused(String),
    /// `setup` ran, but no snapshot could be made: why.
    SetUpOnly(Subscription, String),
    Done(SetUp),
}

impl SetUp {
    /// A hook set up without a snapshot.
    pub(crate) fn alone(subscription: Subscription) -> SetUp {
        SetUp {
            subscription,
            initialized: None,
            initialized_hash: None,
        }
    }
}

impl Sandbox {
    /// Runs the hook's `setup` once, at load, and pre-initialises it from the
    /// state `setup` left when it can (see the module's doc); when it cannot,
    /// says why in the log and returns the subscription alone. The work runs
    /// on a blocking thread: instrumenting and rewriting a large component
    /// (CPython's, say) takes milliseconds of CPU.
    pub(crate) async fn set_up(
        self: &Arc<Self>,
        hook: &Prepared,
        bytes: Arc<[u8]>,
    ) -> Result<SetUp, Failure> {
        let (sandbox, job) = (self.clone(), hook.clone());
        let runtime = tokio::runtime::Handle::current();
        let preinit = tokio::task::spawn_blocking(move || {
            runtime.block_on(sandbox.preinitialize(&job, &bytes))
        })
        .await;
        let (subscription, why_not) = match preinit {
            Ok(Ok(Preinit::Done(set_up))) => return Ok(set_up),
            // `setup` itself failed: the hook's own failure.
            Ok(Err(failure)) => return Err(failure),
            Ok(Ok(Preinit::SetUpOnly(subscription, why))) => (Some(subscription), why),
            Ok(Ok(Preinit::Refused(why))) => (None, why),
            Err(panic) => (None, format!("the pre-initialiser failed: {panic}")),
        };
        tracing::warn!(
            hook = %hook.name,
            "not pre-initialised ({why_not}); each fresh instance runs `setup` before `handle`"
        );
        Ok(SetUp::alone(match subscription {
            Some(subscription) => subscription,
            None => self.setup(hook).await?,
        }))
    }

    /// Instruments, sets up, snapshots, compiles and links; the error is
    /// `setup`'s own failure.
    async fn preinitialize(&self, hook: &Prepared, bytes: &[u8]) -> Result<Preinit, Failure> {
        let mut wizer = Wizer::new();
        wizer.keep_init_func(true);
        let (cx, instrumented) = match wizer.instrument_component(bytes) {
            Ok(instrumented) => instrumented,
            Err(e) => {
                return Ok(Preinit::Refused(format!(
                    "wizer cannot instrument it: {e:#}"
                )));
            }
        };
        let key = format!("{:x}", Sha256::digest(&instrumented));
        let pre = match self.link_hook(&key, instrumented).await {
            Ok(pre) => pre,
            Err(e) => return Ok(Preinit::Refused(format!("the instrumented component: {e}"))),
        };
        let (subscription, snapshot) = self
            .call(hook, None, async |store, _| {
                let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
                let bindings = pre.bind(&mut *store, &instance)?;
                let subscription = match bindings
                    .call_setup(&mut *store, &hook.settings_json)
                    .await?
                {
                    Ok(s) => s,
                    Err(message) => return Ok(Err(message)),
                };
                if let Some(held) = held_resources(store) {
                    return Ok(Ok((subscription, Err(held))));
                }
                let mut reader = Reader {
                    store,
                    instance,
                    error: None,
                };
                let snapshot = wizer.snapshot_component(&cx, &mut reader).await;
                let snapshot = match (reader.error, snapshot) {
                    (Some(e), _) => Err(format!("reading its state failed: {e}")),
                    (None, Err(e)) => Err(format!("wizer cannot rewrite it: {e:#}")),
                    (None, Ok(bytes)) => Ok(bytes),
                };
                Ok(Ok((subscription, snapshot)))
            })
            .await?;
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(why) => return Ok(Preinit::SetUpOnly(subscription, why)),
        };
        let hash = format!("{:x}", Sha256::digest(&snapshot));
        match self.link_hook(&hash, snapshot).await {
            Ok(pre) => Ok(Preinit::Done(SetUp {
                subscription,
                initialized: Some(Linked::Initialized(pre)),
                initialized_hash: Some(hash),
            })),
            Err(e) => Ok(Preinit::SetUpOnly(
                subscription,
                format!("the snapshot: {e}"),
            )),
        }
    }

    /// Compiles (cached by `hash`) and links a component of the `hook` world.
    async fn link_hook(&self, hash: &str, bytes: Vec<u8>) -> Result<HookPre, SandboxError> {
        match self.link(&self.compile(hash, bytes).await?)? {
            Linked::Hook(pre) => Ok(pre),
            _ => Err(SandboxError::NotHookWorld),
        }
    }
}

/// Says so if the instance still holds host resources: a snapshot would
/// keep their handles, which mean nothing in another instance.
fn held_resources(store: &mut Store<HostState>) -> Option<String> {
    (!store.data().table.is_empty()).then(|| {
        "`setup` left host resources open, such as a stdio stream (written to \
         in `setup`, or opened by the language's runtime, as Go's does); to be \
         pre-initialised, a hook writes nothing to stdout or stderr in `setup` \
         (the `log` import is fine)"
            .to_owned()
    })
}

/// Reads an instrumented instance's state through wizer's accessor exports.
/// A failed call (not expected: the accessors are wizer's own code) is kept
/// in `error` and read as zero, so that wizer's trait needs no panic.
struct Reader<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    error: Option<String>,
}

impl Reader<'_> {
    async fn call<R>(&mut self, instance: &str, func: &str) -> Option<R>
    where
        R: Lift + Send + Sync + 'static,
        (R,): ComponentNamedList + Lift,
    {
        if self.error.is_some() {
            return None;
        }
        let result = async {
            let store = &mut *self.store;
            let (_, parent) = self
                .instance
                .get_export(&mut *store, None, instance)
                .ok_or_else(|| wasmtime::format_err!("no export `{instance}`"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *store, Some(&parent), func)
                .ok_or_else(|| wasmtime::format_err!("no export `{instance}#{func}`"))?;
            let func = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *store, index)?;
            Ok::<_, wasmtime::Error>(func.call_async(&mut *store, ()).await?.0)
        }
        .await;
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.error = Some(format!("{instance}#{func}: {e:#}"));
                None
            }
        }
    }
}

impl ComponentInstanceState for Reader<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        match self.call::<WasmList<u8>>(instance, func).await {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func)
            .await
            .unwrap_or_default()
            .to_bits()
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func)
            .await
            .unwrap_or_default()
            .to_bits()
    }
}
