//! Pre-initialised hooks (`preinitialize = true` in NAME.toml): a component
//! hook's fresh instances start from the state its `setup` left at load,
//! instead of running `setup` before every event.

use crate::{eventually, fixture, one_hook};
use wasmhooks::{Engine, HookState, Stage};

/// The reasons of `n` pre events sent one after another.
async fn reasons(engine: &Engine, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
        let reason = verdict.reason.clone();
        seen.push(reason.unwrap_or_else(|| panic!("no reason: {verdict:?}")));
    }
    seen
}

/// Whether every one of `seen` is the same.
fn all_same(seen: &[String]) -> bool {
    seen.iter().all(|r| r == &seen[0])
}

/// `misbehave` in stamp mode denies with the clock reading its `setup` took:
/// the same in every instance when they start from the snapshot; different
/// when each instance runs `setup`: by default, or when `setup` printed to
/// stdout, which leaves a stream open and so cannot be snapshotted.
#[tokio::test]
async fn fresh_instances_start_from_the_state_setup_left_at_load() {
    let stamp = "[settings]\nmode = \"stamp\"\n";
    let (_dir, engine) = one_hook(
        "stamp",
        "misbehave",
        &format!("preinitialize = true\n{stamp}"),
    )
    .await;
    let hook = &engine.hooks()[0];
    assert_eq!(hook.state, HookState::Live, "{:?}", hook.last_error);
    assert_eq!(hook.preinitialized, Some(true));
    let seen = reasons(&engine, 3).await;
    assert!(all_same(&seen), "one setup, at load: {seen:?}");
    assert_eq!(engine.hooks()[0].errors, 0);

    let (_dir, engine) = one_hook("stamp", "misbehave", stamp).await;
    assert_eq!(engine.hooks()[0].preinitialized, Some(false), "opt-in");
    let seen = reasons(&engine, 3).await;
    assert!(!all_same(&seen), "setup ran in every instance: {seen:?}");

    let printing = format!("preinitialize = true\n{stamp}setup_print = \"hello from setup\"\n");
    let (_dir, engine) = one_hook("stamp", "misbehave", &printing).await;
    let hook = &engine.hooks()[0];
    assert_eq!(hook.state, HookState::Live, "{:?}", hook.last_error);
    assert_eq!(hook.preinitialized, Some(false), "stdout opened in setup");
    let seen = reasons(&engine, 3).await;
    assert!(!all_same(&seen), "setup ran in every instance: {seen:?}");
}

/// Each version of a hook's settings gets its own snapshot: a reload that
/// changes only the settings is seen by the next event. Warm instances
/// (`[reuse]`) start from the snapshot too.
#[tokio::test]
async fn a_settings_change_makes_a_new_snapshot() {
    let toml = |mark: &str| {
        format!(
            "preinitialize = true\n[reuse]\nevents = 2\n[settings]\nmode = \"deny\"\nmark = \"{mark}\"\n"
        )
    };
    let (dir, engine) = one_hook("mark", "misbehave", &toml("first")).await;
    assert_eq!(engine.hooks()[0].preinitialized, Some(true));
    assert_eq!(reasons(&engine, 3).await, ["first", "first", "first"]);
    let tmp = dir.path().join(".mark.toml.tmp");
    std::fs::write(&tmp, toml("second")).unwrap();
    std::fs::rename(&tmp, dir.path().join("mark.toml")).unwrap();
    eventually("the new settings are live", || async {
        reasons(&engine, 1).await == ["second"]
    })
    .await;
    assert_eq!(engine.hooks()[0].preinitialized, Some(true));
    assert_eq!(reasons(&engine, 3).await, ["second", "second", "second"]);
}

/// `setup` refusing its settings fails the load as without a snapshot; a
/// command hook, which has no `setup`, refuses the key.
#[tokio::test]
async fn a_preinitialized_hook_fails_to_load_as_any_other() {
    let toml = "preinitialize = true\n[settings]\nmode = \"deny\"\ninit_error = \"no thanks\"\n";
    let (_dir, engine) = one_hook("refuses", "misbehave", toml).await;
    let error = crate::load_error(&engine);
    assert_eq!(error.stage, Stage::Setup);
    assert!(error.reason.contains("no thanks"), "{}", error.reason);

    let toml = "preinitialize = true\n[subscription]\nmethods = [\"vm.*\"]\nphases = [\"pre\"]\n";
    let (_dir, engine) = one_hook("cmd", "command", toml).await;
    let error = crate::load_error(&engine);
    assert_eq!(error.stage, Stage::Setup);
    assert!(error.file.ends_with("cmd.toml"), "{}", error.file.display());
    assert!(error.reason.contains("`preinitialize`"), "{}", error.reason);
}
