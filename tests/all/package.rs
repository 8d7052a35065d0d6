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
/// (an unknown or misspelt key is refused) and gives the defaults.
#[test]
fn the_shipped_config_lists_every_setting_at_its_default() {
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
    let config: wasmhooks::config::Config = toml::from_str(&uncommented)
        .unwrap_or_else(|e| panic!("packaging/config.toml, uncommented: {e}\n{uncommented}"));
    let listed = toml::Table::try_from(&config).unwrap();
    let default = toml::Table::try_from(wasmhooks::config::Config::default()).unwrap();
    for (key, value) in &default {
        match (key.as_str(), value) {
            // Where the unit puts them, not the defaults of a user's shell.
            ("cache_dir" | "state_dir", _) => assert!(listed.contains_key(key), "{key} is listed"),
            ("queue", _) => {
                let nats = wasmhooks::config::NatsConfig::default();
                let nats = toml::Table::try_from(nats).unwrap();
                let listed = &listed["queue"]["nats"];
                for (key, value) in nats {
                    assert_eq!(listed.get(&key), Some(&value), "[queue.nats] {key}");
                }
            }
            ("sources", _) => assert!(listed["sources"].get("xo").is_some(), "[sources.xo]"),
            (_, toml::Value::Table(table)) => {
                for (inner, value) in table {
                    assert_eq!(listed[key].get(inner), Some(value), "[{key}] {inner}");
                }
            }
            _ => assert_eq!(listed.get(key), Some(value), "{key}"),
        }
    }
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
    // A run before this one may have stopped half-way.
    let _ = Command::new("dpkg").args(["--purge", "wasmhooks"]).output();
    let _ = std::fs::remove_dir_all("/etc/wasmhooks");
    run(Command::new("dpkg").arg("-i").arg(&deb));
    let verified = run(Command::new("systemd-analyze").args(["verify", UNIT]));
    assert!(
        !verified.contains("wasmhooks.service"),
        "systemd-analyze verify complains about the unit:\n{verified}"
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
    let ready = notify.next(Duration::from_secs(120));
    assert!(ready.contains("READY=1"), "{ready}");
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

    // `systemctl reload`: with the watcher off, only SIGHUP can load it.
    for file in ["filter.wasm", "filter.toml"] {
        std::fs::copy(examples.join(file), Path::new(HOOKS).join(file)).unwrap();
    }
    engine.signal("HUP");
    notify.next_matching("RELOADING=1", Duration::from_secs(60));
    notify.next_matching("READY=1", Duration::from_secs(60));
    let hooks = json_of(client.get(format!("{base}/v1/hooks"))).await;
    assert!(live(&hooks).contains("filter"), "{hooks}");

    // The watchdog pings (WatchdogSec=, here shortened).
    notify.next_matching("WATCHDOG=1", Duration::from_secs(60));

    engine.signal("TERM");
    notify.next_matching("STOPPING=1", Duration::from_secs(60));
    let status = engine.wait();
    assert!(status.success(), "the engine stops cleanly: {status}");

    // Every system call it made is one `SystemCallFilter=` allows.
    let allowed = syscall_set(unit.get("SystemCallFilter"));
    let made = engine_syscalls(&trace);
    let refused: Vec<&String> = made.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter= would refuse {refused:?} (the engine made {made:?})"
    );

    // Removing keeps the state and the hooks; purging removes the state.
    run(Command::new("dpkg").args(["-r", "wasmhooks"]));
    assert!(!Path::new("/usr/bin/wasmhooks").exists());
    assert!(Path::new(STATE).join("wasmhooks.db").exists());
    assert!(Path::new(HOOKS).join("deny.wasm").exists());
    run(Command::new("dpkg").args(["--purge", "wasmhooks"]));
    assert!(!Path::new(STATE).exists());
    assert!(Path::new(HOOKS).join("deny.wasm").exists());
    std::fs::remove_dir_all("/etc/wasmhooks").unwrap();
}

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
    /// else (systemd's way), under strace. Two overrides, as `systemctl
    /// edit` would make: any free port, and the watcher off so that only
    /// a reload loads a new hook; and a watchdog of a second.
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
            .env("WASMHOOKS_NO_WATCH", "true")
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
        run(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string()));
    }

    /// strace's child: setpriv, which executes the engine in its place.
    fn pid(&self) -> u32 {
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        let children = std::fs::read_to_string(children).unwrap_or_default();
        let pid = children.split_whitespace().next();
        pid.expect("strace has started the engine").parse().unwrap()
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Killing strace alone would leave the engine running, detached.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid().to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A notify socket, as systemd listens on (`NOTIFY_SOCKET`).
struct Notify {
    socket: UnixDatagram,
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
        Notify { socket, path }
    }

    /// The next message, within `timeout`.
    fn next(&self, timeout: Duration) -> String {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// The next message holding `what`, skipping others (watchdog pings).
    fn next_matching(&self, what: &str, timeout: Duration) -> String {
        loop {
            let message = self.next(timeout);
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
