//! Errors of the sink boundary, one enum per phase: [`StartError`] while connecting and checking the
//! table (the process refuses to start), [`WriteError`] per record.
//!
//! Guarantee: every database error of a write is put in one [`Scope`]: `Transient` (retried with the
//! shard's retry policy), `Record` (this record's values were refused: dead-letter it) or `Systemic`
//! (the table, the session or the credentials are wrong: no record would succeed, so the shard stops
//! uncommitted instead of dead-lettering everything). Messages name columns and classes, never values.

use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use thiserror::Error;

use crate::retry::Retryable;
pub use crate::retry::Scope;

/// Start-up errors: the session, the table or the mapping is not usable. Never retried per record.
#[derive(Debug, Error)]
pub enum StartError {
    /// The live table or the writer schema does not fit the configured mapping.
    #[error("{0}")]
    Schema(String),
    /// A mapped column is not in the live table.
    #[error("column '{column}' (mapped from field '{field}') does not exist in table {table}")]
    MissingColumn {
        column: String,
        field: String,
        table: String,
    },
    /// A field the table needs is not among the decoded (or enriched) fields.
    #[error("{role} field '{field}' is not decoded")]
    FieldNotDecoded { role: &'static str, field: String },
    /// The table does not exist (no columns in system_schema).
    #[error("table {0} does not exist")]
    NoTable(String),
    /// The database refused to prepare a statement.
    #[error("cannot prepare `{cql}`: {message}")]
    Prepare { cql: String, message: String },
    /// Reading system_schema failed.
    #[error("reading the columns of {table}: {message}")]
    Columns { table: String, message: String },
    /// No session could be built (unreachable nodes, wrong credentials, TLS handshake).
    #[error("cannot connect to {nodes}: {message}")]
    Connect { nodes: String, message: String },
    /// The TLS context could not be built from the configured files.
    #[error("TLS {what}: {message}")]
    Tls { what: String, message: String },
    /// `on_tombstone = "delete"`, but a primary-key column is not mapped from Kafka metadata, so a
    /// tombstone (which has no value fields) cannot say which row to delete.
    #[error(
        "table {table} deletes on tombstones, but its primary-key column '{column}' is {source_of}: \
         a tombstone has no value fields; map it from kafka.key (or other kafka.* metadata)"
    )]
    KeyNotFromKafka {
        table: String,
        column: String,
        /// `mapped from field 'x'` or `not mapped`.
        source_of: String,
    },
}

impl StartError {
    /// Only a connection attempt can succeed later; everything else needs an operator.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StartError::Connect { .. })
    }
}

/// Per-record write errors.
#[derive(Debug, Error)]
pub enum WriteError {
    /// A record's value does not fit its column: permanent for that record.
    #[error("column '{column}': {reason}")]
    Mapping {
        column: String,
        reason: &'static str,
    },
    /// The database refused the write or did not answer.
    #[error("write failed ({class}): {message}")]
    Db {
        scope: Scope,
        class: &'static str,
        message: String,
    },
}

impl WriteError {
    pub fn scope(&self) -> Scope {
        match self {
            WriteError::Mapping { .. } => Scope::Record,
            WriteError::Db { scope, .. } => *scope,
        }
    }

    /// Classifies a driver error.
    pub fn from_execution(e: ExecutionError) -> WriteError {
        let (scope, class) = classify(&e);
        WriteError::Db {
            scope,
            class,
            message: e.to_string(),
        }
    }
}

impl Retryable for WriteError {
    fn is_retryable(&self) -> bool {
        self.scope() == Scope::Transient
    }

    /// The error class for dead-letter headers and metric labels.
    fn class(&self) -> &'static str {
        match self {
            WriteError::Mapping { .. } => "mapping",
            WriteError::Db { class, .. } => class,
        }
    }
}

fn classify(e: &ExecutionError) -> (Scope, &'static str) {
    use Scope::*;
    match e {
        ExecutionError::RequestTimeout(_) => (Transient, "timeout"),
        ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => {
            (Transient, "unavailable")
        }
        ExecutionError::BadQuery(_) => (Record, "invalid"),
        ExecutionError::LastAttemptError(a) => classify_attempt(a),
        // Re-preparing failed (a dropped table or column), keyspace or schema trouble.
        _ => (Systemic, "schema"),
    }
}

/// Cassandra and ScyllaDB answer a statement that no longer matches the table (re-prepared after a
/// column or table was dropped) with the same `Invalid` code as a refused value; their messages tell
/// the two apart.
fn about_the_table(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "undefined column",
        "unconfigured table",
        "keyspace",
        "unknown identifier",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

fn classify_attempt(a: &RequestAttemptError) -> (Scope, &'static str) {
    use Scope::*;
    match a {
        RequestAttemptError::DbError(DbError::Invalid, message) if about_the_table(message) => {
            (Systemic, "schema")
        }
        RequestAttemptError::DbError(db, _) => match db {
            DbError::WriteTimeout { .. } | DbError::ReadTimeout { .. } => (Transient, "timeout"),
            DbError::Unavailable { .. } | DbError::IsBootstrapping => (Transient, "unavailable"),
            DbError::Overloaded | DbError::RateLimitReached { .. } => (Transient, "overloaded"),
            // A replica failed the request (a read too: a lookup over many tombstones). About the
            // replica, not the statement: retried, never a stop for a schema that is fine.
            DbError::WriteFailure { .. }
            | DbError::ReadFailure { .. }
            | DbError::ServerError
            | DbError::TruncateError => (Transient, "server"),
            // The values of this record were refused (an empty partition key, a value too large).
            DbError::Invalid => (Record, "invalid"),
            DbError::Unauthorized => (Systemic, "unauthorized"),
            DbError::AuthenticationError => (Systemic, "authentication"),
            // A statement that no longer matches the table (a dropped column), a protocol mismatch.
            _ => (Systemic, "schema"),
        },
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_) => (Record, "invalid"),
        RequestAttemptError::RepreparedIdChanged { .. }
        | RequestAttemptError::UnexpectedResponse(_) => (Systemic, "schema"),
        _ => (Transient, "connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(e: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "m".into()))
    }

    #[test]
    fn database_errors_are_scoped_by_what_they_are_about() {
        let cases = [
            (db(DbError::Overloaded), Scope::Transient, "overloaded"),
            (db(DbError::Invalid), Scope::Record, "invalid"),
            (
                ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                    DbError::Invalid,
                    "Undefined column name duration_ms in table ks.events".into(),
                )),
                Scope::Systemic,
                "schema",
            ),
            // Fails on the old code: a replica's read failure stopped the shard as "schema".
            (
                db(DbError::ReadFailure {
                    consistency: scylla::statement::Consistency::One,
                    received: 0,
                    required: 1,
                    numfailures: 1,
                    data_present: false,
                }),
                Scope::Transient,
                "server",
            ),
            (db(DbError::Unauthorized), Scope::Systemic, "unauthorized"),
            (db(DbError::SyntaxError), Scope::Systemic, "schema"),
            (db(DbError::ProtocolError), Scope::Systemic, "schema"),
            (
                ExecutionError::RequestTimeout(std::time::Duration::from_secs(1)),
                Scope::Transient,
                "timeout",
            ),
        ];
        for (e, scope, class) in cases {
            let w = WriteError::from_execution(e);
            assert_eq!((w.scope(), w.class()), (scope, class), "{w}");
            assert_eq!(w.is_retryable(), scope == Scope::Transient);
        }
    }
}
