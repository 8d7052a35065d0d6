//! The Debian package (`cargo deb`, packaging/): installed with `dpkg` on
//! this machine, its unit checked by `systemd-analyze verify`, and the
//! packaged binary run with the unit's `ExecStart=` and environment as the
//! unit's user, talking to a notify socket as systemd would. Needs root
//! (as `scripts/install-guest-toolchains.sh` does, for apt).

use crate::{Receiver, fixture_bytes, guests, json_of};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const UNIT: &str = "/usr/lib/systemd/system/wasmhooks.service";
const HOOKS: &str = "/etc/wasmhooks/hooks";
const STATE: &str = "/var/lib/wasmhooks";

/// Every setting in the shipped `config.toml` is commented out at its
/// default, and every setting there is: uncommented, the file parses
/// (an unknown or misspelt key is refused), has the keys of a `Config`
/// with every optional setting set, and gives the defaults.
#[test]
fn the_shipped_config_lists_every_setting_at_its_default() {
    use wasmhooks::config::{
        ArchiveConfig, BucketConfig, Config, NatsConfig, QueueConfig, TrustConfig, XoSourceConfig,
    };
    let shipped = std::fs::read_to_string(guests::root().join("packaging/config.toml")).unwrap();
    // A commented line that is TOML on its own is a setting or a table;
    // `queue = "sqlite"` gives way to its alternative, `[queue.nats]`.
    let uncommented: String = shipped
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| line.parse::<toml::Table>().is_ok() || is_table_header(line))
        .filter(|line| !line.starts_with("queue ="))
        .map(|line| format!("{line}\n"))
        .collect();
    let config: Config = toml::from_str(&uncommented)
        .unwrap_or_else(|e| panic!("packaging/config.toml, uncommented: {e}\n{uncommented}"));
    let listed = toml::Table::try_from(&config).unwrap();

    // Every key, nested ones included: a missing one would take its
    // default silently, so the keys are compared, not only the values.
    let xo = config.sources.xo.clone().expect("[sources.xo] is listed");
    let mut full = Config {
        cache_dir: Some("/".into()),
        state_dir: Some("/".into()),
        queue: QueueConfig::Nats(NatsConfig {
            credentials: Some("/".into()),
            ..NatsConfig::default()
        }),
        archive: Some(ArchiveConfig::default()),
        hooks_bucket: Some(BucketConfig {
            credentials: Some("/".into()),
            ..BucketConfig::default()
        }),
        trust: Some(TrustConfig {
            keys: vec!["/".into()],
        }),
        ..Config::default()
    };
    full.sources.xo = Some(XoSourceConfig {
        ca_file: Some("/".into()),
        ..xo.clone()
    });
    let raw: toml::Table = uncommented.parse().unwrap();
    let (shipped, all) = (
        keys(&raw, ""),
        keys(&toml::Table::try_from(&full).unwrap(), ""),
    );
    let missing: Vec<_> = all.difference(&shipped).collect();
    let unknown: Vec<_> = shipped.difference(&all).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "packaging/config.toml lacks {missing:?} and has {unknown:?} besides the settings"
    );

    // And the defaults, but where the unit puts the folders.
    let mut default = toml::Table::try_from(Config::default()).unwrap();
    default.remove("cache_dir");
    default.remove("state_dir");
    default.remove("queue");
    default.remove("sources");
    default.remove("trust");
    default.remove("hooks_bucket");
    for (key, value) in &default {
        assert_eq!(listed.get(key), Some(value), "{key}");
    }
    let nats = toml::Table::try_from(NatsConfig::default()).unwrap();
    for (key, value) in nats {
        assert_eq!(
            listed["queue"]["nats"].get(&key),
            Some(&value),
            "[queue.nats] {key}"
        );
    }
    assert_eq!(
        config.archive,
        Some(ArchiveConfig::default()),
        "[archive] at its defaults"
    );
    // XO's two required settings, and the defaults of the others.
    let required = format!("url = {:?}\ntoken = \"x\"\n", xo.url);
    let xo_default: XoSourceConfig = toml::from_str(&required).unwrap();
    let xo_default = toml::Table::try_from(xo_default).unwrap();
    for (key, value) in xo_default
        .iter()
        .filter(|(k, _)| *k != "url" && *k != "token")
    {
        assert_eq!(
            listed["sources"]["xo"].get(key),
            Some(value),
            "[sources.xo] {key}"
        );
    }
}

/// Every key of `table`, nested ones as `a.b`, tables themselves aside.
fn keys(table: &toml::Table, prefix: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) if !path.ends_with("collections") => {
                all.extend(keys(inner, &format!("{path}.")))
            }
            _ => {
                all.insert(path);
            }
        }
    }
    all
}

fn is_table_header(line: &str) -> bool {
    line.starts_with('[') && line.ends_with(']') && !line.contains(' ')
}

/// Build, install, verify, run as the unit would, remove, purge.
#[tokio::test(flavor = "multi_thread")]
async fn the_debian_package_installs_a_service_that_serves_the_shipped_hooks() {
    require_root_and(&["dpkg", "systemd-analyze", "setpriv", "strace", "adduser"]);
    guests::require_tools("the Debian package", &["cargo-deb"]);
    guests::wasm("deny"); // builds the example hooks the package ships
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("wasmhooks.deb");
    // The test build's binary (the dev profile), so CI builds the engine
    // once; a release package is `cargo deb` alone.
    run(Command::new(guests::toolchains().join("bin/cargo-deb"))
        .args(["--no-build", "--profile", "dev", "--fast", "--quiet", "-o"])
        .arg(&deb)
        .current_dir(guests::root()));
    let installed = Installed::install(&deb);
    let verified = run(Command::new("systemd-analyze").args(["verify", UNIT]));
    assert!(
        !verified.contains("wasmhooks.service"),
        "systemd-analyze verify complains about the unit:\n{verified}"
    );
    let config = std::fs::metadata(CONFIG).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&config.permissions()) & 0o777,
        0o640,
        "{CONFIG} may hold secrets"
    );

    // What an administrator does: take a shipped example, write a hook of
    // their own, start the service.
    let examples = Path::new("/usr/share/wasmhooks/examples");
    for file in ["deny.wasm", "deny.toml", "forward.wasm"] {
        std::fs::copy(examples.join(file), Path::new(HOOKS).join(file)).unwrap();
    }
    let receiver = Receiver::start().await;
    std::fs::write(
        Path::new(HOOKS).join("forward.toml"),
        format!(
            "allow_hosts = [\"127.0.0.1\"]\n[settings]\nurl = \"{}\"\nmethods = [\"vm.*\"]\nphases = [\"post\"]\n",
            receiver.url("/cmdb")
        ),
    )
    .unwrap();

    let unit = Unit::read(UNIT);
    assert_eq!(unit.get("Type"), ["notify"]);
    let user = &unit.get("User")[0];
    let notify = Notify::bind(dir.path());
    let trace = dir.path().join("syscalls");
    let mut engine = unit.start(&notify, &trace);
    let ready = notify.next_matching("READY=1", Duration::from_secs(120));
    assert!(
        ready.contains("STATUS=hooks live: 2, failing to load: 0"),
        "{ready}"
    );
    let addr = engine.addr();
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    // Ready means the hooks are loaded: no waiting for them here.
    let hooks = json_of(client.get(format!("{base}/v1/hooks"))).await;
    let live = |hooks: &serde_json::Value| -> BTreeSet<String> {
        let hooks = hooks.as_array().unwrap().iter();
        let live = hooks.filter(|h| h["state"] == "live");
        live.map(|h| h["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        live(&hooks),
        BTreeSet::from(["deny".into(), "forward".into()])
    );
    let ok = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(ok.status().is_success());
    // The shipped deny example vetoes deleting its protected VM.
    let verdict = json_of(
        client
            .post(format!("{base}/v1/events"))
            .body(fixture_bytes("vm.delete.pre")),
    )
    .await;
    assert_eq!(verdict["allowed"], false, "{verdict}");
    // A delivery, from the unit's user, through its queue in the state dir.
    let accepted = client
        .post(format!("{base}/v1/events"))
        .body(fixture_bytes("vm.start.post"))
        .send()
        .await
        .unwrap();
    assert!(accepted.status().is_success());
    receiver.wait_for(1).await;
    let db = std::fs::metadata(Path::new(STATE).join("wasmhooks.db")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&db),
        uid_of(user),
        "the queue belongs to the unit's user"
    );

    // `systemctl reload`: RELOADING, then READY once the folder is read
    // (that only a reload loads a file is `Engine::reload`'s test; here
    // the watcher runs, as the unit ships it).
    for file in ["filter.toml", "filter.wasm"] {
        std::fs::copy(examples.join(file), Path::new(HOOKS).join(file)).unwrap();
    }
    engine.signal("HUP");
    notify.next_matching("RELOADING=1", Duration::from_secs(60));
    let ready = notify.next_matching("READY=1", Duration::from_secs(60));
    assert!(
        ready.contains("STATUS=hooks live: 3, failing to load: 0"),
        "{ready}"
    );
    let hooks = json_of(client.get(format!("{base}/v1/hooks"))).await;
    assert!(live(&hooks).contains("filter"), "{hooks}");
    // The watchdog still pings after the reload (WatchdogSec=, shortened).
    notify.next_matching("WATCHDOG=1", Duration::from_secs(60));

    engine.signal("TERM");
    notify.next_matching("STOPPING=1", Duration::from_secs(60));
    let status = engine.wait();
    assert!(status.success(), "the engine stops cleanly: {status}");

    // Every system call it made, its watcher's included, is one
    // `SystemCallFilter=` allows.
    let allowed = syscall_set(unit.get("SystemCallFilter"));
    let made = engine_syscalls(&trace);
    assert!(
        made.contains("inotify_add_watch"),
        "the watcher ran: {made:?}"
    );
    let refused: Vec<&String> = made.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter= would refuse {refused:?} (the engine made {made:?})"
    );

    // Removing keeps the state, the configuration and the hooks; purging
    // removes the state, the cache and the configuration, not the hooks.
    run(Command::new("dpkg").args(["-r", "wasmhooks"]));
    assert!(!Path::new("/usr/bin/wasmhooks").exists());
    assert!(Path::new(STATE).join("wasmhooks.db").exists());
    assert!(Path::new(CONFIG).exists());
    assert!(Path::new(HOOKS).join("deny.wasm").exists());
    run(Command::new("dpkg").args(["--purge", "wasmhooks"]));
    assert!(!Path::new(STATE).exists());
    assert!(!Path::new("/var/cache/wasmhooks").exists());
    assert!(!Path::new(CONFIG).exists());
    assert!(Path::new(HOOKS).join("deny.wasm").exists());
    drop(installed);
}

/// The package, installed by this test: purged with what the test put in
/// `/etc/wasmhooks` when dropped, whether the test passed or not.
struct Installed;

impl Installed {
    /// Installs `deb`, refusing to replace a wasmhooks this test did not
    /// install (a real one: the test would wipe its queue and hooks). Where
    /// systemd runs, the package's scripts do not start the service
    /// (`policy-rc.d`), so that the test's engine is the only one.
    fn install(deb: &Path) -> Installed {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", "wasmhooks"])
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&status.stdout);
        let ours = Path::new(MARK).exists();
        assert!(
            !status.contains("installed") || ours,
            "a wasmhooks package is installed on this machine ({status}); the package \
             test would replace it and wipe its queue: remove it, or run the tests elsewhere"
        );
        let installed = Installed;
        if ours {
            installed.clean(); // left by a run that was killed
        }
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let blocked = !policy.exists();
        if blocked {
            std::fs::write(policy, "#!/bin/sh\n# wasmhooks' package test\nexit 101\n").unwrap();
            let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
            std::fs::set_permissions(policy, executable).unwrap();
        }
        let result = Command::new("dpkg").arg("-i").arg(deb).output();
        if blocked {
            let _ = std::fs::remove_file(policy);
        }
        std::fs::create_dir_all(HOOKS).unwrap();
        std::fs::write(MARK, "").unwrap();
        let output = result.unwrap();
        assert!(
            output.status.success(),
            "dpkg -i failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        installed
    }

    fn clean(&self) {
        let _ = Command::new("dpkg").args(["--purge", "wasmhooks"]).output();
        let _ = std::fs::remove_dir_all("/etc/wasmhooks");
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.clean();
    }
}

const CONFIG: &str = "/etc/wasmhooks/config.toml";
/// Says the package was installed by this test, not by an administrator.
const MARK: &str = "/etc/wasmhooks/hooks/.installed-by-the-package-test";

/// Fails, saying why, unless this runs as root with `tools` installed.
fn require_root_and(tools: &[&str]) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the package test installs a .deb: run the tests as root, as CI does"
    );
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "`{tool}` is missing (Debian: apt-get install dpkg systemd strace util-linux adduser)"
        );
    }
}

/// Runs `command`, failing with its output unless it succeeds; returns
/// what it printed on both streams.
fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

fn uid_of(user: &str) -> u32 {
    let id = run(Command::new("id").args(["-u", user]));
    id.trim().parse().unwrap()
}

/// The `[Service]` settings of a unit file: each key with its values, in
/// order.
struct Unit(HashMap<String, Vec<String>>);

impl Unit {
    fn read(path: &str) -> Unit {
        let mut settings: HashMap<String, Vec<String>> = HashMap::new();
        let text = std::fs::read_to_string(path).unwrap();
        let service = text.split("[Service]").nth(1).unwrap();
        let service = service.split("\n[").next().unwrap();
        for line in service.lines().filter(|l| !l.starts_with('#')) {
            if let Some((key, value)) = line.split_once('=') {
                settings
                    .entry(key.to_owned())
                    .or_default()
                    .push(value.to_owned());
            }
        }
        Unit(settings)
    }

    fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// Starts `ExecStart=` as `User=`, with `Environment=` and nothing
    /// else (systemd's way), under strace. The unit's hardening is not
    /// applied: systemd is not running here. One override, as `systemctl
    /// edit` would make it: any free port; and a watchdog of a second.
    fn start(&self, notify: &Notify, trace: &Path) -> Engine {
        let user = &self.get("User")[0];
        let group = &self.get("Group")[0];
        let exec: Vec<&str> = self.get("ExecStart")[0].split_whitespace().collect();
        let mut command = Command::new("strace");
        command
            .args(["-f", "-qq", "-o"])
            .arg(trace)
            .args([
                "setpriv",
                &format!("--reuid={user}"),
                &format!("--regid={group}"),
                "--init-groups",
                "--",
            ])
            .args(&exec)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", "1000000")
            .stderr(Stdio::piped());
        for assignment in self.get("Environment") {
            let (key, value) = assignment.split_once('=').unwrap();
            command.env(key, value);
        }
        command
            .env("WASMHOOKS_LISTEN", "127.0.0.1:0")
            .env("NO_COLOR", "1");
        let mut child = command.spawn().expect("strace runs");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("engine: {line}");
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split(':').take(2).collect::<Vec<_>>().join(":");
                    let _ = tx.send(addr);
                }
            }
        });
        Engine { child, addr: rx }
    }
}

/// The packaged engine, under strace and setpriv.
struct Engine {
    child: std::process::Child,
    addr: std::sync::mpsc::Receiver<String>,
}

impl Engine {
    fn addr(&self) -> String {
        self.addr
            .recv_timeout(Duration::from_secs(60))
            .expect("the engine says where it listens")
    }

    /// Sends a signal to the engine itself, not to strace.
    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the engine runs");
        run(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string()));
    }

    /// strace's child: setpriv, which executes the engine in its place;
    /// `None` once it has exited.
    fn pid(&self) -> Option<u32> {
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        let children = std::fs::read_to_string(children).unwrap_or_default();
        children.split_whitespace().next()?.parse().ok()
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Killing strace alone would leave the engine running, detached.
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A notify socket, as systemd listens on (`NOTIFY_SOCKET`), read on a
/// thread of its own so that the engine never waits on a full one.
struct Notify {
    messages: std::sync::mpsc::Receiver<String>,
    path: std::path::PathBuf,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        use std::os::unix::fs::PermissionsExt;
        // The unit's user must reach it through the temp dir.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (tx, messages) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        Notify { messages, path }
    }

    /// The next message holding `what`, skipping others (watchdog pings),
    /// within `timeout` in all.
    fn next_matching(&self, what: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let message = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {what} from the engine in {timeout:?}: {e}"));
            if message.contains(what) {
                return message;
            }
        }
    }
}

/// The system calls `SystemCallFilter=` allows: its groups expanded by
/// `systemd-analyze syscall-filter`, nested groups included.
fn syscall_set(filters: &[String]) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut groups: Vec<String> = filters
        .iter()
        .flat_map(|f| f.split_whitespace().map(str::to_owned))
        .collect();
    assert!(
        groups.iter().all(|g| !g.starts_with('~')),
        "a deny list (~…) in SystemCallFilter= is not handled by this test: {groups:?}"
    );
    let mut seen = BTreeSet::new();
    while let Some(group) = groups.pop() {
        if !seen.insert(group.clone()) {
            continue;
        }
        if !group.starts_with('@') {
            allowed.insert(group);
            continue;
        }
        let listed = run(Command::new("systemd-analyze").args(["syscall-filter", &group]));
        for item in listed.lines().skip(1).map(str::trim) {
            if !item.is_empty() && !item.starts_with('#') {
                groups.push(item.to_owned());
            }
        }
    }
    allowed
}

/// The system calls the engine made, from strace's log: those after it
/// was executed (not setpriv's before).
fn engine_syscalls(trace: &Path) -> BTreeSet<String> {
    let log = std::fs::read_to_string(trace).unwrap();
    let start = log
        .find("execve(\"/usr/bin/wasmhooks\"")
        .expect("strace saw the engine start");
    log[start..]
        .lines()
        .skip(1)
        .filter_map(|line| {
            // `PID name(args…) = result`, or `PID <... name resumed>…`;
            // signals (`--- SIGHUP …`) and exits (`+++ …`) name none.
            let rest = line.split_once(' ')?.1.trim_start();
            let rest = rest.strip_prefix("<... ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}
