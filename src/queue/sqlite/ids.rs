//! Which delivery ids are in the `deliveries` table, and at which row: kept
//! in memory so that the table needs no index on its random ids.
//!
//! An index on a random key dirties a random page of it for every row
//! inserted and deleted: once thousands of deliveries wait, each one costs
//! a page written at insert and another at the delete, twice over (the WAL,
//! then the checkpoint), and a group commit cannot share them (`cargo bench
//! --bench engine -- queue` counts them). Rows are keyed by `seq`, in the
//! order they are written; this map answers "is this id queued already?"
//! and "which row is it?".
//!
//! It is the table's, never the other way round: it is rebuilt from the
//! table on first use, whenever a transaction of this connection did not
//! commit, and whenever another connection (an operator's `wasmhooks
//! deliveries`) wrote to the file, which SQLite's `data_version` tells.
//! About 40 bytes per pending or dead delivery.

use rusqlite::Connection;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// Delivery id (hashed) → `seq`, of every row pending or dead. Delivered
/// rows (kept `delivery.history_hours`) are not in it: a day of them would
/// cost memory by the million, and only an operator looks one up.
pub(super) struct Ids {
    /// `None` until used, and after anything that may have put it out of
    /// step with the table.
    rows: Option<HashMap<u128, i64>>,
    /// Two independent hashes of an id make its 128-bit key: two ids share
    /// one with a chance of about one in 2^128 per pair.
    hash: (RandomState, RandomState),
}

impl Ids {
    pub(super) fn new() -> Ids {
        Ids {
            rows: None,
            hash: (RandomState::new(), RandomState::new()),
        }
    }

    fn key(&self, id: &str) -> u128 {
        (u128::from(self.hash.0.hash_one(id)) << 64) | u128::from(self.hash.1.hash_one(id))
    }

    /// The map, read from the table if it is not in step.
    fn rows(&mut self, conn: &Connection) -> rusqlite::Result<&mut HashMap<u128, i64>> {
        if self.rows.is_none() {
            let mut stmt = conn.prepare("SELECT id, seq FROM deliveries WHERE state < 2")?;
            let mut rows = HashMap::new();
            let mut cursor = stmt.query([])?;
            while let Some(row) = cursor.next()? {
                let id: String = row.get(0)?;
                rows.insert(self.key(&id), row.get(1)?);
            }
            self.rows = Some(rows);
        }
        Ok(self.rows.as_mut().expect("just read"))
    }

    /// The row of `id`, if it is in the table.
    pub(super) fn seq(&mut self, conn: &Connection, id: &str) -> rusqlite::Result<Option<i64>> {
        let key = self.key(id);
        Ok(self.rows(conn)?.get(&key).copied())
    }

    /// Records rows just written, once the job that wrote them succeeded.
    pub(super) fn insert(
        &mut self,
        conn: &Connection,
        rows: impl IntoIterator<Item = (String, i64)>,
    ) -> rusqlite::Result<()> {
        let keyed: Vec<(u128, i64)> = rows
            .into_iter()
            .map(|(id, seq)| (self.key(&id), seq))
            .collect();
        self.rows(conn)?.extend(keyed);
        Ok(())
    }

    /// Forgets rows just deleted or delivered, each by id and row: an id
    /// that now names another row (queued again since) keeps it.
    pub(super) fn remove<'a>(&mut self, rows: impl IntoIterator<Item = (&'a str, i64)>) {
        let keys: Vec<(u128, i64)> = rows
            .into_iter()
            .map(|(id, seq)| (self.key(id), seq))
            .collect();
        if let Some(map) = &mut self.rows {
            for (key, seq) in keys {
                if map.get(&key) == Some(&seq) {
                    map.remove(&key);
                }
            }
        }
    }

    /// Out of step with the table: read it again when next needed.
    pub(super) fn invalidate(&mut self) {
        self.rows = None;
    }
}
