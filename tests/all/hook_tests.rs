//! `wasmhooks test`: a hook's test cases, run through the real command on
//! real hooks (the deny, forward and fanout examples, and a hook that
//! loops), passing and failing, with the report, the exit code and the
//! JUnit XML read back; and a malformed test file named with its line.

use crate::{install, root};
use std::path::Path;
use std::process::{Command, Output};

const PROTECTED: &str = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";

fn wasmhooks_test(dir: &Path, args: &[&str]) -> Output {
    // A generous deadline: the other tests load this 2-core machine.
    std::fs::write(dir.join("engine.toml"), "[limits]\ndeadline_ms = 5000\n").unwrap();
    Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
        .arg("test")
        .args(args)
        .args(["--config", "engine.toml"])
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails unless the report says each of `lines`.
fn says(report: &str, lines: &[&str]) {
    for says in lines {
        assert!(report.contains(says), "{says:?} in:\n{report}");
    }
}

/// The JUnit XML the run wrote in `dir`, and as read back.
fn junit_in(dir: &Path) -> (String, quick_junit::Report) {
    let xml = std::fs::read_to_string(dir.join("report.xml")).unwrap();
    let junit = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    (xml, junit)
}

/// The XO fixtures the cases read, in `dir/fixtures/`, and the deny and
/// forward examples with their settings.
fn examples(dir: &Path) {
    install(
        dir,
        "deny",
        "deny",
        Some(&format!("[settings]\nprotected = [\"{PROTECTED}\"]\n")),
    );
    install(
        dir,
        "forward",
        "forward",
        Some("[settings]\nurl = \"https://ci.example/hooks/xo\"\n"),
    );
    let to = dir.join("fixtures");
    std::fs::create_dir_all(&to).unwrap();
    for name in [
        "vm.delete.pre",
        "vm.start.pre",
        "vm.start.post",
        "vm.create.post",
    ] {
        let file = format!("{name}.json");
        std::fs::copy(root().join("tests/fixtures/xo").join(&file), to.join(&file)).unwrap();
    }
}

/// The deny, forward and fanout examples and a looping hook, each with
/// cases that hold: every case passes, and the command says so and exits 0.
#[test]
fn passing_cases_pass() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    examples(dir);
    install(
        dir,
        "fanout",
        "fanout",
        Some(
            "[settings]\ncmdb_url = \"https://cmdb.example/vms\"\n\
             billing_url = \"https://billing.example/usage\"\n",
        ),
    );
    install(
        dir,
        "spin",
        "misbehave",
        Some("deadline_ms = 100\n[settings]\nmode = \"loop\"\n"),
    );
    // More cases of deny, in a folder of them.
    std::fs::create_dir(dir.join("deny.tests")).unwrap();
    let files = [
        (
            "deny.tests/stop.test.toml",
            r#"
[[case]]
name = "a protected VM cannot be stopped either"
event = "../fixtures/vm.delete.pre.json"
set = { method = "vm.stop" }
expect = { allowed = false }
"#
            .to_owned(),
        ),
        (
            "deny.test.toml",
            format!(
                r#"
[[case]]
name = "a protected VM cannot be deleted"
event = "fixtures/vm.delete.pre.json"
expect = {{ allowed = false, reason = "*{PROTECTED}*protected*" }}

[[case]]
name = "another VM can be"
event = "fixtures/vm.delete.pre.json"
set = {{ "params.id" = "another-vm" }}
expect = {{ allowed = true, deliveries = 0 }}

[[case]]
name = "with every VM protected"
event = {{ callId = "c1", method = "vm.delete", type = "pre", timestamp = 1, params = {{ id = "x" }} }}
settings = {{ protected = ["*"] }}
expect = {{ allowed = false }}

[[case]]
name = "vm.start is not its business"
event = "fixtures/vm.start.pre.json"
expect = {{ called = false }}
"#
            ),
        ),
        (
            "forward.test.toml",
            r#"
[[case]]
name = "a vm.start post event goes to CI as it is"
event = "fixtures/vm.start.post.json"
[case.expect]
deliveries = 1
[[case.expect.delivery]]
url = "https://ci.example/*"
headers = { content-type = "application/json*" }
body = { method = "vm.start", type = "post", params = { id = "1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21" } }

[[case]]
name = "settings without a url are refused"
event = "fixtures/vm.start.post.json"
settings = {}
expect = { failure = "setup", message = "*url*" }
"#
            .to_owned(),
        ),
        (
            "fanout.test.toml",
            r#"
[[case]]
name = "a created VM is one record to the CMDB and one to billing"
event = "fixtures/vm.create.post.json"
[case.expect]
deliveries = 2
[[case.expect.delivery]]
url = "https://cmdb.example/vms"
[[case.expect.delivery]]
url = "https://billing.example/usage"
"#
            .to_owned(),
        ),
        (
            "spin.test.toml",
            r#"
[[case]]
name = "a hook that loops is stopped at its deadline"
event = "fixtures/vm.start.pre.json"
expect = { failure = "timeout", message = "*deadline*" }
"#
            .to_owned(),
        ),
    ];
    for (file, cases) in files {
        std::fs::write(dir.join(file), cases).unwrap();
    }
    let out = wasmhooks_test(dir, &["--junit", "report.xml"]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    says(
        &report,
        &[
            "9 cases in 5 files: 9 passed, 0 failed",
            "deny.test.toml\n  ok    a protected VM cannot be deleted",
            "spin.test.toml\n  ok    a hook that loops is stopped at its deadline",
            "deny.tests/stop.test.toml\n  ok    a protected VM cannot be stopped either",
        ],
    );
    let (xml, junit) = junit_in(dir);
    assert_eq!(
        (junit.tests, junit.failures, junit.errors),
        (9, 0, 0),
        "{xml}"
    );
    assert_eq!(junit.test_suites.len(), 5);
}

/// Cases that do not hold: each fails with what was expected against what
/// the hook did, the others still run, and so do the files after one that
/// cannot run (its hook missing); the command exits 2 (1 for failures
/// alone), and the JUnit XML says which failed and why.
#[test]
fn failing_cases_fail_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    examples(dir);
    std::fs::write(dir.join("broken.wasm"), b"not WebAssembly").unwrap();
    let cases = [
        (
            "deny.test.toml",
            r#"
[[case]]
name = "claims a protected VM may be deleted"
event = "fixtures/vm.delete.pre.json"
expect = { allowed = true }

[[case]]
name = "holds"
event = "fixtures/vm.delete.pre.json"
expect = { allowed = false }

[[case]]
name = "claims an answer on an event it does not subscribe to"
event = "fixtures/vm.start.pre.json"
expect = { allowed = true, deliveries = 0 }
"#,
        ),
        (
            "forward.test.toml",
            r#"
[[case]]
name = "claims the wrong body and receiver"
event = "fixtures/vm.start.post.json"
[case.expect]
[[case.expect.delivery]]
url = "https://elsewhere.example/*"
body = { method = "vm.stop" }

[[case]]
name = "claims it times out"
event = "fixtures/vm.start.post.json"
expect = { failure = "timeout" }
"#,
        ),
        (
            "broken.test.toml",
            r#"
[[case]]
name = "claims setup refuses, when it does not even load"
event = "fixtures/vm.start.post.json"
expect = { failure = "setup" }
"#,
        ),
        (
            "missing.test.toml",
            r#"
hook = "nowhere.wasm"
[[case]]
name = "cannot run"
event = "fixtures/vm.start.post.json"
expect = { deliveries = 0 }
"#,
        ),
    ];
    for (file, cases) in cases {
        std::fs::write(dir.join(file), cases).unwrap();
    }
    let out = wasmhooks_test(dir, &["--junit", "report.xml"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    says(
        &report,
        &[
            "6 cases in 4 files: 1 passed, 5 failed; 1 file could not run",
            "FAIL  claims a protected VM may be deleted",
            "expected allowed, got denied: \"VM 0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d is protected",
            "ok    holds",
            "expected an answer from the hook, but it was not called",
            "delivery 1: expected a URL like \"https://elsewhere.example/*\", got \"https://ci.example/hooks/xo\"",
            "delivery 1: expected the body to hold {\"method\":\"vm.stop\"}, but at /method it has \"vm.start\"",
            "expected failure timeout, got allowed, with 1 delivery",
            "expected failure setup, got failure load",
            "missing.test.toml\n  ERROR test file missing.test.toml: the hook nowhere.wasm is not there",
        ],
    );
    let (xml, junit) = junit_in(dir);
    assert_eq!(
        (junit.tests, junit.failures, junit.errors),
        (7, 5, 1),
        "{xml}"
    );
    let message_of = |name: &str| {
        let case = junit
            .test_suites
            .iter()
            .flat_map(|s| &s.test_cases)
            .find(|c| c.name.as_str() == name)
            .unwrap_or_else(|| panic!("no case {name} in {xml}"));
        match &case.status {
            quick_junit::TestCaseStatus::NonSuccess { message, .. } => {
                message.as_ref().map(|m| m.to_string()).unwrap_or_default()
            }
            _ => panic!("{name} passed: {xml}"),
        }
    };
    let message = message_of("claims a protected VM may be deleted");
    assert!(
        message.starts_with("expected allowed, got denied"),
        "{message}"
    );
    let message = message_of("(the test file)");
    assert!(message.contains("nowhere.wasm is not there"), "{message}");
}

/// A malformed test file is an error naming the file and the line, and so
/// is a key the format does not know; no case runs.
#[test]
fn a_malformed_test_file_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    examples(dir);
    let files = [
        (
            "[[case]]\nname = \"a\"\nevent = \"fixtures/vm.delete.pre.json\"\nexpect = { allowed = \n",
            "line 4",
        ),
        (
            "[[case]]\nname = \"a\"\nevent = \"fixtures/vm.delete.pre.json\"\nexpect = { alowed = false }\n",
            "alowed",
        ),
        ("# no cases\n", "no cases"),
        (
            "[[case]]\nname = \"a\"\nevent = \"fixtures/vm.delete.pre.json\"\nset = { params.id = \"x\" }\nexpect = { allowed = true }\n",
            "quote a dotted path",
        ),
    ];
    for (content, says) in files {
        std::fs::write(dir.join("deny.test.toml"), content).unwrap();
        let out = wasmhooks_test(dir, &["deny.test.toml"]);
        let report = text(&out);
        assert!(!out.status.success(), "{report}");
        assert!(report.contains("deny.test.toml"), "{report}");
        assert!(report.contains(says), "{says:?} in:\n{report}");
    }
    // A folder with no test file says what to write.
    let empty = tempfile::tempdir().unwrap();
    let out = wasmhooks_test(empty.path(), &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("NAME.test.toml"), "{}", text(&out));
}
