//! `queue`: the SQLite queue alone, with the batches the engine writes on
//! the sidecar path (an accepted post event's key and its one delivery in
//! one commit), fsync on; against SQLite's own floor for the same rows:
//! the same columns inserted into a table with no index, in as many
//! transactions as the queue's run took, with the same settings (WAL,
//! `synchronous = FULL`). CPU is the whole process's, per delivery.

use crate::measure::cpu_split;
use crate::setup::fixture;
use std::sync::Arc;
use wasmhooks::bench::BenchQueue;

/// Concurrent writers, as the sidecar bench's callers.
const CALLERS: usize = 64;
/// A delivery's receiver (never reached: nothing is sent).
const URL: &str = "http://127.0.0.1:9/sink";

pub(crate) async fn queue() {
    let n: usize = std::env::var("BENCH_QUEUE").map_or(20_000, |v| v.parse().unwrap());
    let body = fixture("vm.start.post");
    println!(
        "queue: SQLite alone, fsync on, {n} deliveries of {} bytes, {CALLERS} writers; CPU and 4 KiB pages written per delivery",
        body.len()
    );
    let (claimed, claimed_tx) = claimed_at_commit(n, &body, true).await;
    let (unkept, unkept_tx) = claimed_at_commit(n, &body, false).await;
    let (queued, commits, queued_tx) = queued_then_claimed(n, &body).await;
    let floor = tokio::task::spawn_blocking({
        let body = body.clone();
        move || insert_only(n, claimed_tx, &body)
    })
    .await
    .unwrap();
    let row = |what: &str, tx: u64, c: Cost| {
        println!(
            "  {what:<44} {tx:>5} transactions  {:>6.1} µs CPU ({:>4.1} in the kernel)  {:>5.2} pages  ({:.1}x the floor's CPU)",
            c.cpu,
            c.system,
            c.pages,
            c.cpu / floor.cpu
        )
    };
    row("SQLite insert-only floor, same rows", claimed_tx, floor);
    row("commit (claimed at once) + finish", claimed_tx, claimed);
    row("  the same, attempt history off", unkept_tx, unkept);
    row(
        "commit + claim + finish (target <= 15 µs)",
        queued_tx,
        queued,
    );
    row("  of which the commits", 0, commits);
}

/// Bytes this process has written so far (`wchar` in /proc/self/io): for
/// SQLite in WAL mode, the pages its commits wrote, 4 KiB and a 24-byte
/// frame header each (checkpoints, which copy them into the database
/// file, are part of it too).
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU (µs), the kernel's share of it, and pages written, per delivery.
#[derive(Clone, Copy)]
struct Cost {
    cpu: f64,
    system: f64,
    pages: f64,
}

/// Where the process stands: CPU (user, system) and bytes written.
type Mark = ((f64, f64), u64);

impl Cost {
    fn since(start: Mark, n: usize) -> Cost {
        let ((user, system), bytes) = now();
        let per = |s: f64| s * 1e6 / n as f64;
        Cost {
            cpu: per(user - start.0.0 + system - start.0.1),
            system: per(system - start.0.1),
            pages: (bytes - start.1) as f64 / 4120.0 / n as f64,
        }
    }
}

fn now() -> Mark {
    (cpu_split(), written())
}

fn key(tag: &str, i: usize) -> String {
    let call = format!("{tag}-{i}");
    format!("8:vm.start{}:{call}post", call.len())
}

fn id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// `CALLERS` writers commit `n` events between them, each with its key and
/// one delivery (`claimed` at once, or queued), and then, if `finish`,
/// record that delivery as delivered.
async fn write_all(queue: &Arc<BenchQueue>, n: usize, body: &[u8], claimed: bool, finish: bool) {
    let writers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (queue, body) = (queue.clone(), body.to_vec());
            tokio::spawn(async move {
                for i in (c..n).step_by(CALLERS) {
                    let id = id();
                    let key = key(if claimed { "claimed" } else { "queued" }, i);
                    queue
                        .commit(key, id.clone(), URL, body.clone(), claimed)
                        .await
                        .unwrap();
                    if finish {
                        queue.delivered(id).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

/// The engine's path when the receiver has a free slot: the delivery is
/// written claimed in its event's commit, then finished once sent, and
/// kept as delivered with its attempt if `history` (the default), else
/// deleted.
async fn claimed_at_commit(n: usize, body: &[u8], history: bool) -> (Cost, u64) {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(BenchQueue::open(dir.path(), true, history).unwrap());
    let (start, tx) = (now(), BenchQueue::transactions());
    write_all(&queue, n, body, true, true).await;
    (Cost::since(start, n), BenchQueue::transactions() - tx)
}

/// The engine's path when the receiver has no room: the deliveries are
/// queued in their events' commits, then the pump claims them (up to 64 at
/// a time) and each is finished once sent. Returns the cost of the whole
/// and of the commits alone, and the transactions taken.
async fn queued_then_claimed(n: usize, body: &[u8]) -> (Cost, Cost, u64) {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(BenchQueue::open(dir.path(), true, true).unwrap());
    let (start, tx) = (now(), BenchQueue::transactions());
    write_all(&queue, n, body, false, false).await;
    let commits = Cost::since(start, n);
    let mut taken = 0;
    while taken < n {
        let ids = queue.claim(64).await.unwrap();
        assert!(!ids.is_empty(), "every delivery committed is claimed");
        taken += ids.len();
        let finishing: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.delivered(id).await.unwrap() })
            })
            .collect();
        for f in finishing {
            f.await.unwrap();
        }
    }
    (
        Cost::since(start, n),
        commits,
        BenchQueue::transactions() - tx,
    )
}

/// SQLite's floor for the same rows: inserted into a table of the same
/// columns with no index, in `transactions` transactions.
fn insert_only(n: usize, transactions: u64, body: &[u8]) -> Cost {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("floor.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE rows (id TEXT, hook TEXT, receiver TEXT, url TEXT, headers TEXT,
             body BLOB, signed INTEGER, created_ms INTEGER, next_ms INTEGER);",
    )
    .unwrap();
    let per = n.div_ceil(transactions.max(1) as usize);
    let start = now();
    let mut done = 0;
    while done < n {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO rows VALUES (?1, 'forward', '127.0.0.1:9', ?2, '[]', ?3, 0, ?4, ?4)",
                )
                .unwrap();
            for _ in 0..per.min(n - done) {
                insert
                    .execute(rusqlite::params![id(), URL, body, 1_765_000_000_000i64])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        done += per;
    }
    Cost::since(start, n)
}
