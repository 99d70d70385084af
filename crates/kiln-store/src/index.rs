//! The SQLite index of committed layers: a cache of every `result/<id>/meta.json` plus
//! what the tree cannot hold (last use, size). Several kiln processes share it: WAL mode,
//! a generous busy timeout, and every change is a single statement.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{LayerId, LayerInfo, LayerMeta, StoreError};

/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for another process's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS layers (
    id          TEXT PRIMARY KEY NOT NULL,
    parent      TEXT,
    flat        INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    last_used   INTEGER NOT NULL,
    -- strictly increasing use counter: LRU order that does not depend on clock resolution
    use_seq     INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    description TEXT NOT NULL,
    meta        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS layers_parent ON layers(parent);
CREATE INDEX IF NOT EXISTS layers_use ON layers(use_seq);
";

const SELECT_INFO: &str = "SELECT l.meta, l.last_used, l.size,
    (SELECT COUNT(*) FROM layers c WHERE c.parent = l.id) FROM layers l";

/// Whether SQLite refused because another connection holds a lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A connection to `index.sqlite`.
pub(crate) struct Index {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Index {
    /// Opens (creating) the index and brings its schema up to date.
    ///
    /// SQLite answers some conflicts at once with "database is locked" instead of waiting
    /// in its busy handler (a journal mode switch while another process creates the same
    /// new index, a lock upgrade it sees as a possible deadlock): kiln processes that open
    /// one store together retry the whole opening, for as long as the busy timeout.
    pub fn open(path: &Path) -> Result<Index, StoreError> {
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(20);
        loop {
            match Self::open_once(path) {
                Err(StoreError::Index { source, .. })
                    if is_busy(&source) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Index, StoreError> {
        let err = |source| StoreError::Index {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // The mode is persistent: switch (which needs a moment without other writers)
        // only when the index is not in WAL mode yet.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(err)?;
        let mode = if mode.eq_ignore_ascii_case("wal") {
            mode
        } else {
            conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(err)?
        };
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                "store index {}: journal mode is {mode}, not WAL",
                path.display()
            );
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let found: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::IndexVersion {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            tx.execute_batch(SCHEMA).map_err(err)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(Index {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // SQLite rolls back an unfinished statement itself; the connection stays usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Index {
            path: self.path.clone(),
            source,
        }
    }

    /// Inserts a layer, or refreshes what meta.json says about it (keeping its use record).
    /// `fresh` marks it as the most recently used layer (a commit) rather than the least
    /// (a layer found on disk without a row).
    pub fn upsert(
        &self,
        meta: &LayerMeta,
        size: u64,
        last_used: i64,
        fresh: bool,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(meta)
            .map_err(|e| StoreError::Other(format!("encoding meta: {e}")))?;
        let seq = if fresh {
            "(SELECT COALESCE(MAX(use_seq), 0) + 1 FROM layers)"
        } else {
            "0"
        };
        let sql = format!(
            "INSERT INTO layers (id, parent, flat, created, last_used, use_seq, size, description, meta)
             VALUES (?1, ?2, ?3, ?4, ?5, {seq}, ?6, ?7, ?8)
             ON CONFLICT(id) DO UPDATE SET parent = excluded.parent, flat = excluded.flat,
                created = excluded.created, size = excluded.size,
                description = excluded.description, meta = excluded.meta"
        );
        self.conn()
            .execute(
                &sql,
                params![
                    meta.id.as_str(),
                    meta.parent.as_ref().map(|p| p.as_str()),
                    meta.flat,
                    meta.created,
                    last_used,
                    size as i64,
                    meta.description,
                    json
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn get(&self, id: &LayerId) -> Result<Option<LayerInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!("{SELECT_INFO} WHERE l.id = ?1"))
            .map_err(|e| self.err(e))?;
        let row = stmt
            .query_row([id.as_str()], raw_info)
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|raw| raw.decode()).transpose()
    }

    /// Every layer, oldest first.
    pub fn list(&self) -> Result<Vec<LayerInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("{SELECT_INFO} ORDER BY l.created, l.id"))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], raw_info).map_err(|e| self.err(e))?;
        let raws = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        raws.into_iter().map(RawInfo::decode).collect()
    }

    /// Ids of every indexed layer.
    pub fn ids(&self) -> Result<Vec<String>, StoreError> {
        self.strings("SELECT id FROM layers ORDER BY id", [])
    }

    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM layers WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Marks `id` as the most recently used layer; false if it is not indexed.
    pub fn touch(&self, id: &LayerId, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .conn()
            .execute(
                "UPDATE layers SET last_used = ?2,
                    use_seq = (SELECT COALESCE(MAX(use_seq), 0) + 1 FROM layers) WHERE id = ?1",
                params![id.as_str(), now],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed > 0)
    }

    /// `id` and every layer built on it, children before their parents.
    pub fn subtree_leaves_first(&self, id: &LayerId) -> Result<Vec<String>, StoreError> {
        self.strings(
            "WITH RECURSIVE d(id, depth) AS (
                 SELECT id, 0 FROM layers WHERE id = ?1
                 UNION ALL
                 SELECT l.id, d.depth + 1 FROM layers l JOIN d ON l.parent = d.id WHERE d.depth < 100000
             ) SELECT id FROM d ORDER BY depth DESC, id",
            [id.as_str()],
        )
    }

    /// Layers nothing is built on, least recently used first.
    pub fn leaves_lru(&self) -> Result<Vec<String>, StoreError> {
        self.strings(
            "SELECT id FROM layers l WHERE NOT EXISTS (SELECT 1 FROM layers c WHERE c.parent = l.id)
             ORDER BY use_seq, last_used, created, id",
            [],
        )
    }

    /// Bytes of all layers.
    pub fn total_size(&self) -> Result<u64, StoreError> {
        let total: i64 = self
            .conn()
            .query_row("SELECT COALESCE(SUM(size), 0) FROM layers", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        Ok(total.max(0) as u64)
    }

    fn strings<P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

/// A row before its meta JSON is decoded.
struct RawInfo {
    meta: String,
    last_used: i64,
    size: i64,
    children: i64,
}

fn raw_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawInfo> {
    Ok(RawInfo {
        meta: row.get(0)?,
        last_used: row.get(1)?,
        size: row.get(2)?,
        children: row.get(3)?,
    })
}

impl RawInfo {
    fn decode(self) -> Result<LayerInfo, StoreError> {
        let meta: LayerMeta =
            serde_json::from_str(&self.meta).map_err(|e| StoreError::Corrupt {
                id: "(index row)".into(),
                message: format!("bad meta in the index: {e}; delete index.sqlite to rebuild it"),
            })?;
        Ok(LayerInfo {
            meta,
            last_used: self.last_used,
            size: self.size.max(0) as u64,
            children: self.children.max(0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many connections creating one new index at once, as the kiln processes of a test
    /// run do with a fresh shared store: every one opens it, none reports it locked.
    #[test]
    fn concurrent_opens_of_a_new_index_all_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("index.sqlite");
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let opened: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Index::open(&path).map(|_| ())
                        })
                    })
                    .collect();
                for handle in opened {
                    if let Err(e) = handle.join().unwrap() {
                        panic!("round {round}: {e}");
                    }
                }
            });
        }
    }
}
