//! The state directory's index (`index.sqlite`): one row per listed thing (training jobs,
//! transform jobs, endpoints, models, endpoint configurations) with the columns the List
//! operations filter and sort on and the summary they return, so a page is an indexed
//! query, not a read of every record, however long the history.
//!
//! Records stay the truth; the index is rebuilt from them whenever it cannot vouch for
//! itself:
//! - lost (deleted, unreadable, of another schema): rebuilt from every record;
//! - a writer killed between its record and its row: every write first marks its row
//!   *pending*, then writes the record (atomically, as before), then the row and clears the
//!   mark in one transaction. A reader that finds marks re-reads those records (a mark older
//!   than [`PENDING_GRACE`] is then dropped: its writer is gone);
//! - records added or removed by something that does not keep the index (an older smlocal,
//!   `rm -r`): the records' folder's modification time is kept beside the rows; a reader
//!   that finds it changed compares the folder's names with the rows.
//!
//! SQLite in WAL mode makes each transaction atomic and lets any number of processes (the
//! server, several `smlocal train`) read and write it at once.

use crate::state::listing::{self, ListError, ListQuery, Page};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter, types::Value as Sql};
use serde_json::Value;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The index's file name in the state directory.
pub(crate) const FILE: &str = "index.sqlite";
/// Bumped when the tables change: an index of another version is rebuilt.
const SCHEMA_VERSION: i64 = 1;
/// How long a pending mark is honoured: a writer needs milliseconds between its mark and its
/// row, so an older mark is a dead writer's.
const PENDING_GRACE: f64 = 60.0;
/// How long a writer waits for another's transaction before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The index's tables: the rows; the pending marks; each kind's records' folder's
/// modification time when the rows last matched it.
const TABLES: &str = "
    CREATE TABLE rows (kind TEXT NOT NULL, name TEXT NOT NULL, created REAL NOT NULL,
        modified REAL NOT NULL, status TEXT NOT NULL, summary TEXT NOT NULL,
        PRIMARY KEY (kind, name)) WITHOUT ROWID;
    CREATE INDEX rows_created ON rows (kind, created, name);
    CREATE INDEX rows_modified ON rows (kind, modified, name);
    CREATE INDEX rows_status ON rows (kind, status, name);
    CREATE TABLE pending (kind TEXT NOT NULL, name TEXT NOT NULL, since REAL NOT NULL,
        PRIMARY KEY (kind, name)) WITHOUT ROWID;
    CREATE TABLE synced (kind TEXT PRIMARY KEY, folder_mtime INTEGER) WITHOUT ROWID;";

/// What a row lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    TrainingJob,
    TransformJob,
    Endpoint,
    Model,
    EndpointConfig,
    TuningJob,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::TrainingJob => "training-job",
            Kind::TransformJob => "transform-job",
            Kind::Endpoint => "endpoint",
            Kind::Model => "model",
            Kind::EndpointConfig => "endpoint-config",
            Kind::TuningJob => "tuning-job",
        }
    }
}

/// One listed thing: what List operations filter and sort on, and what they return.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) created: f64,
    pub(crate) modified: f64,
    /// Empty for things without a status (models, endpoint configurations).
    pub(crate) status: String,
    /// The List operation's summary of it, as returned.
    pub(crate) summary: Value,
}

/// Where the rows of one kind come from: the records, which stay the truth.
pub(crate) trait Records {
    fn kind(&self) -> Kind;
    /// The folder whose entries are the records (its modification time changes when one is
    /// added or removed).
    fn folder(&self) -> PathBuf;
    /// The names of every record.
    fn names(&self) -> Vec<String>;
    /// A record's row; None when there is no such record (or it cannot be read).
    fn row(&self, name: &str) -> Option<Row>;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("the index '{}' cannot be used: {source}", path.display())]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// The index of one state directory, opened on first use and reopened when its file was
/// replaced or deleted under this process.
#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    open: Mutex<Option<Open>>,
}

#[derive(Debug)]
struct Open {
    conn: Connection,
    /// The file's device and inode when it was opened.
    identity: (u64, u64),
}

/// What a writer noted before it changed a record, for [`Index::wrote`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Intent {
    /// The records' folder's modification time before the change.
    folder_before: Option<i64>,
}

fn folder_mtime(folder: &Path) -> Option<i64> {
    std::fs::metadata(folder).ok().map(|m| m.mtime() * 1_000_000_000 + m.mtime_nsec())
}

fn now() -> f64 {
    crate::state::record::now()
}

impl Index {
    pub(crate) fn new(state_root: &Path) -> Self {
        Index { path: state_root.join(FILE), open: Mutex::new(None) }
    }

    /// Runs `f` on the connection, opening it first if needed. A database found corrupt is
    /// deleted and rebuilt, and `f` tried once more.
    fn with<T>(&self, mut f: impl FnMut(&mut Connection) -> rusqlite::Result<T>) -> Result<T, IndexError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let db = |source| IndexError::Database { path: self.path.clone(), source };
        for attempt in 0..2 {
            let current = std::fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
            let result = match open.as_mut() {
                Some(o) if Some(o.identity) == current => f(&mut o.conn),
                _ => {
                    *open = None;
                    self.connect().and_then(|o| f(&mut open.insert(o).conn))
                }
            };
            match result {
                Err(e) if attempt == 0 && is_corrupt(&e) => {
                    tracing::warn!(
                        "the index {} is damaged ({e}); rebuilding it from the records",
                        self.path.display()
                    );
                    *open = None;
                    self.discard();
                }
                result => return result.map_err(db),
            }
        }
        Err(db(rusqlite::Error::InvalidQuery))
    }

    /// Removes the index's files (it is rebuilt from the records).
    fn discard(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }

    fn connect(&self) -> rusqlite::Result<Open> {
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if !self.path.exists() {
            // A write-ahead log without its database is an older index's: replaying it onto
            // a new file would make a damaged one.
            self.discard();
        }
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: readers never wait for a writer, and a commit needs no fsync (NORMAL); a
        // power cut can lose the last commits, which the records' folder check restores.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 DROP TABLE IF EXISTS rows; DROP TABLE IF EXISTS pending; DROP TABLE IF EXISTS synced;
                 {TABLES}"
            ))?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            conn.execute_batch("COMMIT")?;
        }
        let meta = std::fs::metadata(&self.path).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Open { conn, identity: (meta.dev(), meta.ino()) })
    }

    /// Marks `name`'s row pending before its record changes.
    pub(crate) fn intend(&self, records: &dyn Records, name: &str) -> Intent {
        let intent = Intent { folder_before: folder_mtime(&records.folder()) };
        let marked = self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO pending (kind, name, since) VALUES (?1, ?2, ?3)",
                params![records.kind().as_str(), name, now()],
            )
        });
        if let Err(e) = marked {
            tracing::warn!("{e}; listings will read the records instead");
        }
        intent
    }

    /// Records `name`'s new row (None: the record was removed) and clears its mark.
    pub(crate) fn wrote(&self, records: &dyn Records, intent: Intent, name: &str, row: Option<&Row>) {
        let kind = records.kind().as_str();
        let after = folder_mtime(&records.folder());
        let done = self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            match row {
                Some(row) => upsert(&tx, kind, row)?,
                None => {
                    tx.execute("DELETE FROM rows WHERE kind = ?1 AND name = ?2", params![kind, name])?;
                }
            }
            tx.execute("DELETE FROM pending WHERE kind = ?1 AND name = ?2", params![kind, name])?;
            // The folder changed by this write only: the index still knows all it holds.
            if intent.folder_before != after {
                tx.execute(
                    "UPDATE synced SET folder_mtime = ?3 WHERE kind = ?1 AND folder_mtime IS ?2",
                    params![kind, intent.folder_before, after],
                )?;
            }
            tx.commit()
        });
        if let Err(e) = done {
            tracing::warn!("{e}; its row for {name} is read from the record when next listed");
        }
    }

    /// Brings the rows of `records` up to date where the index cannot vouch for them.
    fn freshen(&self, records: &dyn Records) -> Result<(), IndexError> {
        let kind = records.kind().as_str();
        let folder = records.folder();
        let mtime = folder_mtime(&folder);
        let (synced, pending) = self.with(|c| {
            let synced: Option<Option<i64>> =
                c.query_row("SELECT folder_mtime FROM synced WHERE kind = ?1", [kind], |r| r.get(0)).optional()?;
            let pending: i64 = c.query_row("SELECT count(*) FROM pending WHERE kind = ?1", [kind], |r| r.get(0))?;
            Ok((synced, pending))
        })?;
        let stale = synced != Some(mtime);
        if !stale && pending == 0 {
            return Ok(());
        }
        // Read outside the transaction when the whole folder is needed (it may be large).
        let names: Option<Vec<String>> = stale.then(|| records.names());
        let rebuild = synced.is_none();
        let span = tracing::debug_span!("index_freshen", kind, stale, rebuild, pending);
        let _entered = span.enter();
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(names) = &names {
                if rebuild {
                    tx.execute("DELETE FROM rows WHERE kind = ?1", [kind])?;
                }
                let known: HashSet<String> = {
                    let mut q = tx.prepare("SELECT name FROM rows WHERE kind = ?1")?;
                    q.query_map([kind], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
                };
                let present: HashSet<&str> = names.iter().map(String::as_str).collect();
                for gone in known.iter().filter(|k| !present.contains(k.as_str())) {
                    tx.execute("DELETE FROM rows WHERE kind = ?1 AND name = ?2", params![kind, gone])?;
                }
                for name in names.iter().filter(|n| !known.contains(*n)) {
                    if let Some(row) = records.row(name) {
                        upsert(&tx, kind, &row)?;
                    }
                }
                tx.execute("INSERT OR REPLACE INTO synced (kind, folder_mtime) VALUES (?1, ?2)", params![kind, mtime])?;
            }
            let marks: Vec<(String, f64)> = {
                let mut q = tx.prepare("SELECT name, since FROM pending WHERE kind = ?1")?;
                q.query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?
            };
            // Re-read under the write lock: a live writer's own row, written after its
            // record, lands after this one, so the newest record always wins.
            for (name, since) in marks {
                match records.row(&name) {
                    Some(row) => upsert(&tx, kind, &row)?,
                    None => {
                        tx.execute("DELETE FROM rows WHERE kind = ?1 AND name = ?2", params![kind, name])?;
                    }
                }
                if now() - since > PENDING_GRACE {
                    tx.execute("DELETE FROM pending WHERE kind = ?1 AND name = ?2", params![kind, name])?;
                }
            }
            tx.commit()
        })
    }

    /// The page `query` asks for, from the index (made fresh first); `default_max` is the
    /// page size when the query names none. Where the index cannot be used (a read-only or
    /// full disk), the same query runs over every record loaded into memory.
    pub(crate) fn page(&self, records: &dyn Records, query: &ListQuery, default_max: usize) -> Result<Page, ListError> {
        let span = tracing::debug_span!("index_page", kind = records.kind().as_str());
        let _entered = span.enter();
        let mut list_error = None;
        let found = self.freshen(records).and_then(|()| {
            self.with(|c| match select(c, records.kind(), query, default_max) {
                Ok(page) => Ok(page),
                Err(Failure::List(e)) => {
                    list_error = Some(e);
                    Ok(Page { summaries: Vec::new(), next_token: None })
                }
                Err(Failure::Sql(e)) => Err(e),
            })
        });
        if let Some(e) = list_error {
            return Err(e);
        }
        match found {
            Ok(page) => Ok(page),
            Err(e) => {
                tracing::warn!("{e}; reading every record instead");
                match in_memory(records)
                    .map_err(Failure::Sql)
                    .and_then(|c| select(&c, records.kind(), query, default_max))
                {
                    Ok(page) => Ok(page),
                    Err(Failure::List(e)) => Err(e),
                    Err(Failure::Sql(e)) => {
                        tracing::warn!("cannot list from memory either: {e}");
                        Ok(Page { summaries: Vec::new(), next_token: None })
                    }
                }
            }
        }
    }
}

enum Failure {
    List(ListError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

/// Every record of `records` in an in-memory index.
fn in_memory(records: &dyn Records) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    conn.execute_batch(TABLES)?;
    let tx = conn.transaction()?;
    for name in records.names() {
        if let Some(row) = records.row(&name) {
            upsert(&tx, records.kind().as_str(), &row)?;
        }
    }
    tx.commit()?;
    Ok(conn)
}

/// The page `query` asks for, by one indexed query.
fn select(conn: &Connection, kind: Kind, query: &ListQuery, default_max: usize) -> Result<Page, Failure> {
    let sort_by = query.sort_by.as_deref().unwrap_or("CreationTime");
    let descending = query.sort_order.as_deref() != Some("Ascending");
    let after =
        query.next_token.as_deref().map(|t| listing::parse_token(t, sort_by)).transpose().map_err(Failure::List)?;
    if query.warm_pool_status_equals.is_some() || query.training_plan_arn_equals.is_some() {
        return Ok(Page { summaries: Vec::new(), next_token: None });
    }
    let column = match sort_by {
        "Name" => "name",
        "Status" => "status",
        _ => "created",
    };
    let mut sql = String::from("SELECT name, created, status, summary FROM rows WHERE kind = ?");
    let mut args: Vec<Sql> = vec![Sql::Text(kind.as_str().into())];
    let mut bound = |clause: &str, value: Sql| {
        sql.push_str(clause);
        args.push(value);
    };
    if let Some(s) = &query.status_equals {
        bound(" AND status = ?", Sql::Text(s.clone()));
    }
    if let Some(n) = &query.name_contains {
        bound(" AND instr(lower(name), ?) > 0", Sql::Text(n.to_ascii_lowercase()));
    }
    for (clause, value) in [
        (" AND created > ?", query.creation_time_after),
        (" AND created < ?", query.creation_time_before),
        (" AND modified > ?", query.last_modified_time_after),
        (" AND modified < ?", query.last_modified_time_before),
    ] {
        if let Some(v) = value {
            bound(clause, Sql::Real(v));
        }
    }
    if let Some((key, name)) = &after {
        let cmp = if descending { "<" } else { ">" };
        let key = match key {
            listing::Key::Number(n) => Sql::Real(*n),
            listing::Key::Text(t) => Sql::Text(t.clone()),
        };
        bound(&format!(" AND ({column}, name) {cmp} (?, "), key);
        bound("?)", Sql::Text(name.clone()));
    }
    let order = if descending { "DESC" } else { "ASC" };
    let max = query.max_results.unwrap_or(default_max).max(1);
    sql.push_str(&format!(" ORDER BY {column} {order}, name {order} LIMIT ?"));
    args.push(Sql::Integer(i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX)));
    let mut q = conn.prepare_cached(&sql)?;
    let mut rows: Vec<(String, f64, String, String)> = q
        .query_map(params_from_iter(args.iter()), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let more = rows.len() > max;
    rows.truncate(max);
    let next_token = if more {
        rows.last().map(|(name, created, status, _)| {
            let key = match column {
                "name" => listing::Key::Text(name.clone()),
                "status" => listing::Key::Text(status.clone()),
                _ => listing::Key::Number(*created),
            };
            listing::token(sort_by, &(key, name.clone()))
        })
    } else {
        None
    };
    let summaries = rows.into_iter().filter_map(|(_, _, _, s)| serde_json::from_str(&s).ok()).collect();
    Ok(Page { summaries, next_token })
}

fn upsert(tx: &rusqlite::Transaction<'_>, kind: &str, row: &Row) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO rows (kind, name, created, modified, status, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![kind, row.name, row.created, row.modified, row.status, row.summary.to_string()],
    )?;
    Ok(())
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// Records as files `<folder>/<name>` holding `created status`.
    struct Files(PathBuf);

    impl Files {
        fn write(&self, index: &Index, name: &str, created: f64, status: &str) {
            let intent = index.intend(self, name);
            std::fs::write(self.0.join(name), format!("{created} {status}")).unwrap();
            index.wrote(self, intent, name, self.row(name).as_ref());
        }
    }

    impl Records for Files {
        fn kind(&self) -> Kind {
            Kind::TrainingJob
        }
        fn folder(&self) -> PathBuf {
            self.0.clone()
        }
        fn names(&self) -> Vec<String> {
            std::fs::read_dir(&self.0).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect()
        }
        fn row(&self, name: &str) -> Option<Row> {
            let text = std::fs::read_to_string(self.0.join(name)).ok()?;
            let (created, status) = text.split_once(' ')?;
            let created = created.parse().ok()?;
            Some(Row {
                name: name.into(),
                created,
                modified: created,
                status: status.into(),
                summary: json!({"Name": name, "Status": status}),
            })
        }
    }

    fn setup() -> (tempfile::TempDir, Files, Index) {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("jobs");
        std::fs::create_dir(&folder).unwrap();
        let index = Index::new(dir.path());
        (dir, Files(folder), index)
    }

    fn all(index: &Index, files: &Files, query: ListQuery) -> Vec<String> {
        let mut query = ListQuery { max_results: query.max_results.or(Some(3)), ..query };
        let mut names = Vec::new();
        loop {
            let page = index.page(files, &query, 10).unwrap();
            names.extend(page.summaries.iter().map(|s| s["Name"].as_str().unwrap().to_string()));
            match page.next_token {
                Some(t) => query.next_token = Some(t),
                None => return names,
            }
        }
    }

    #[test]
    fn pages_come_from_the_index_in_every_order() {
        let (_dir, files, index) = setup();
        for i in 0..10 {
            files.write(&index, &format!("job-{i}"), f64::from(i % 4), if i % 2 == 0 { "Completed" } else { "Failed" });
        }
        let newest = all(&index, &files, ListQuery::default());
        assert_eq!(newest, ["job-7", "job-3", "job-6", "job-2", "job-9", "job-5", "job-1", "job-8", "job-4", "job-0"]);
        let by_name =
            ListQuery { sort_by: Some("Name".into()), sort_order: Some("Ascending".into()), ..Default::default() };
        let sorted: Vec<String> = (0..10).map(|i| format!("job-{i}")).collect();
        assert_eq!(all(&index, &files, by_name), sorted);
        let failed = ListQuery {
            status_equals: Some("Failed".into()),
            name_contains: Some("JOB-".into()),
            ..Default::default()
        };
        assert_eq!(all(&index, &files, failed), ["job-7", "job-3", "job-9", "job-5", "job-1"]);
        let by_status = ListQuery { sort_by: Some("Status".into()), ..Default::default() };
        let got = all(&index, &files, by_status);
        assert_eq!(&got[..5], ["job-9", "job-7", "job-5", "job-3", "job-1"]);
        let bad = ListQuery { next_token: Some("Name:tjob-1:job-1".into()), ..Default::default() };
        assert!(index.page(&files, &bad, 10).is_err());
    }

    #[test]
    fn a_job_created_between_pages_does_not_shift_the_next_page() {
        let (_dir, files, index) = setup();
        for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            files.write(&index, name, i as f64, "Completed");
        }
        let first = index.page(&files, &ListQuery { max_results: Some(2), ..Default::default() }, 10).unwrap();
        files.write(&index, "newest", 9.0, "InProgress");
        let query = ListQuery { max_results: Some(2), next_token: first.next_token, ..Default::default() };
        let rest = index.page(&files, &query, 10).unwrap();
        assert_eq!(
            rest.summaries,
            [json!({"Name": "b", "Status": "Completed"}), json!({"Name": "a", "Status": "Completed"})]
        );
        assert_eq!(rest.next_token, None);
    }

    #[test]
    fn an_unusable_index_lists_from_the_records() {
        let (dir, files, _) = setup();
        files.write(&Index::new(dir.path()), "a", 1.0, "Completed");
        // A folder where the file would be: it cannot be opened.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join(FILE)).unwrap();
        let index = Index::new(&blocked);
        assert_eq!(all(&index, &files, ListQuery::default()), ["a"]);
    }

    #[test]
    fn a_writer_killed_before_its_row_is_caught_up_by_the_next_reader() {
        let (_dir, files, index) = setup();
        files.write(&index, "a", 1.0, "InProgress");
        assert_eq!(all(&index, &files, ListQuery::default()), ["a"]);
        // Killed after its record, before its row: the mark stays.
        let _intent = index.intend(&files, "a");
        std::fs::write(files.0.join("a"), "1 Failed").unwrap();
        let other = Index::new(files.0.parent().unwrap());
        let page = other.page(&files, &ListQuery::default(), 10).unwrap();
        assert_eq!(page.summaries, [json!({"Name": "a", "Status": "Failed"})]);
    }

    #[test]
    fn records_changed_behind_its_back_and_a_deleted_index_are_found() {
        let (dir, files, index) = setup();
        for name in ["a", "b", "c"] {
            files.write(&index, name, 1.0, "Completed");
        }
        // Something that keeps no index adds one record and removes another.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(files.0.join("d"), "2 InProgress").unwrap();
        std::fs::remove_file(files.0.join("a")).unwrap();
        assert_eq!(all(&index, &files, ListQuery::default()), ["d", "c", "b"]);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("{FILE}{suffix}")));
        }
        assert_eq!(all(&index, &files, ListQuery::default()), ["d", "c", "b"]);
        assert!(dir.path().join(FILE).exists(), "the index was made again");
        // Garbage where the index was: rebuilt.
        drop(index);
        std::fs::write(dir.path().join(FILE), vec![7u8; 8192]).unwrap();
        let index = Index::new(dir.path());
        assert_eq!(all(&index, &files, ListQuery::default()), ["d", "c", "b"]);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let (_dir, files, _index) = setup();
        let folder = files.0.clone();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let folder = folder.clone();
                std::thread::spawn(move || {
                    let files = Files(folder.clone());
                    let index = Index::new(folder.parent().unwrap());
                    for i in 0..50 {
                        files.write(&index, &format!("t{t}-{i:02}"), f64::from(i), "Completed");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let index = Index::new(folder.parent().unwrap());
        let names = all(&index, &files, ListQuery { max_results: Some(100), ..Default::default() });
        let unique: BTreeMap<&String, ()> = names.iter().map(|n| (n, ())).collect();
        assert_eq!((names.len(), unique.len()), (200, 200));
    }
}
