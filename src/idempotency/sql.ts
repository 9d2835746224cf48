import type { Migration, SqlDialect } from '../stores/index.js'

// Every SQL statement of the idempotency capability, per dialect. Both dialects use `$n`
// placeholders (the SQLite driver rewrites them) and the same column meanings; timestamps are
// integer epoch milliseconds, written from the application's clock so that tests can drive
// lease expiry and retention with a ManualClock (processes sharing a database need NTP-synced
// clocks; leases should be much longer than the expected skew).

/** The table that holds idempotency records. */
export const idempotencyTable = 'breakwater_idempotency'

/** The SQLSTATE `breakwater_idempotency_complete` raises when the lease is no longer held. */
export const leaseLostSqlState = 'BW001'

/**
 * The numbered migrations of the `idempotency` capability, in both dialects. Run them with the
 * stores' `runMigrations(db, 'idempotency', idempotencyMigrations)` (or `migrateIdempotency`).
 */
export const idempotencyMigrations: readonly Migration[] = [
  {
    version: 1,
    name: 'create-idempotency-records',
    sqlite: [
      `CREATE TABLE ${idempotencyTable} (
  scope TEXT NOT NULL,
  idem_key TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
  lease_token TEXT NOT NULL,
  lease_expires_at INTEGER,
  attempt INTEGER NOT NULL,
  recovery_point TEXT,
  recovery_data TEXT,
  response_status INTEGER,
  response_headers TEXT,
  response_body BLOB,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY (scope, idem_key)
)`,
      `CREATE INDEX ${idempotencyTable}_expires_at ON ${idempotencyTable} (expires_at)`,
    ],
    postgres: [
      `CREATE TABLE ${idempotencyTable} (
  scope TEXT NOT NULL,
  idem_key TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
  lease_token TEXT NOT NULL,
  lease_expires_at BIGINT,
  attempt INTEGER NOT NULL,
  recovery_point TEXT,
  recovery_data TEXT,
  response_status INTEGER,
  response_headers TEXT,
  response_body BYTEA,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  PRIMARY KEY (scope, idem_key)
)`,
      `CREATE INDEX ${idempotencyTable}_expires_at ON ${idempotencyTable} (expires_at)`,
    ],
  },
  {
    // PostgreSQL: the fenced result write as a function that raises when the lease is no
    // longer held, so that it can travel together with COMMIT (SqlTransaction.finish): a
    // failing statement turns that COMMIT into a rollback, where a zero-row UPDATE would not.
    version: 2,
    name: 'complete-or-raise',
    sqlite: [],
    postgres: [
      `CREATE FUNCTION breakwater_idempotency_complete(
  p_scope TEXT, p_key TEXT, p_token TEXT, p_status INTEGER, p_headers TEXT, p_body BYTEA,
  p_now BIGINT, p_expires BIGINT
) RETURNS VOID
LANGUAGE plpgsql AS $fn$
BEGIN
  UPDATE ${idempotencyTable}
  SET state = 'completed', lease_expires_at = NULL, response_status = p_status,
    response_headers = p_headers, response_body = p_body, updated_at = p_now,
    expires_at = p_expires
  WHERE scope = p_scope AND idem_key = p_key AND lease_token = p_token
    AND state = 'in_progress';
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '${leaseLostSqlState}',
      MESSAGE = 'breakwater: the idempotency lease was lost before the result was recorded';
  END IF;
END;
$fn$`,
    ],
  },
  {
    // PostgreSQL: the results of a group of requests in one statement (group commit, see
    // pg-groups.ts), fenced each by its own lease. It raises when any lease is lost, naming the
    // lost ones (1-based positions) in DETAIL, so that it can travel with COMMIT as
    // breakwater_idempotency_complete does; the caller runs the others again without them.
    version: 3,
    name: 'complete-all-or-raise',
    sqlite: [],
    postgres: [
      `CREATE FUNCTION breakwater_idempotency_complete_all(
  p_scopes TEXT[], p_keys TEXT[], p_tokens TEXT[], p_statuses INTEGER[], p_headers TEXT[],
  p_bodies BYTEA[], p_now BIGINT, p_expires BIGINT[]
) RETURNS VOID
LANGUAGE plpgsql AS $fn$
DECLARE
  lost BIGINT[];
BEGIN
  WITH input AS (
    SELECT * FROM unnest(p_scopes, p_keys, p_tokens, p_statuses, p_headers, p_bodies, p_expires)
      WITH ORDINALITY AS i(scope, idem_key, token, status, headers, body, expires, n)
  ), done AS (
    UPDATE ${idempotencyTable} AS r
    SET state = 'completed', lease_expires_at = NULL, response_status = i.status,
      response_headers = i.headers, response_body = i.body, updated_at = p_now,
      expires_at = i.expires
    FROM input AS i
    WHERE r.scope = i.scope AND r.idem_key = i.idem_key AND r.lease_token = i.token
      AND r.state = 'in_progress'
    RETURNING i.n
  )
  SELECT array_agg(input.n ORDER BY input.n) INTO lost
  FROM input WHERE input.n NOT IN (SELECT done.n FROM done);
  IF lost IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = '${leaseLostSqlState}',
      MESSAGE = 'breakwater: idempotency leases were lost before their results were recorded',
      DETAIL = array_to_string(lost, ',');
  END IF;
END;
$fn$`,
    ],
  },
]

/** The statements the SQL store runs, for one dialect. */
export interface IdempotencyStatements {
  /**
   * $1 scope, $2 key, $3 fingerprint, $4 lease token, $5 lease end, $6 now, $7 expiry. Returns
   * `claimed_token` (non-null) when it claimed the key; on PostgreSQL it always returns one row,
   * which also holds the existing record's columns when the statement's snapshot shows it.
   */
  readonly claim: string
  /**
   * The claim as the first statement of the handler's own transaction (`claim:
   * 'in-transaction'`), with the same parameters. PostgreSQL: the same result columns as
   * `claim`. SQLite: `claimCounted` (no rows; it claimed when it changed one).
   */
  readonly claimInTransaction: string
  /**
   * SQLite: the claim as a plain `INSERT ... ON CONFLICT DO NOTHING` (same parameters, no
   * RETURNING), which claimed the key when it changed one row; on a conflict the store reads
   * the existing record with `select`. The store claims with it in both modes (it is SQLite's
   * `claimInTransaction` too): without RETURNING the statement costs less, and a claim usually
   * finds the key free, since on SQLite a read before the claim already decides replays and
   * mismatches. In a transaction the read that follows a conflict is exact: the transaction
   * holds SQLite's only write lock, so nothing changes the record in between.
   */
  readonly claimCounted?: string
  /** $1 scope, $2 key. */
  readonly select: string
  /** $1 scope, $2 key, $3 previous token, $4 new token, $5 lease end, $6 now. */
  readonly takeOver: string
  /** $1 scope, $2 key, $3 previous token, $4 fingerprint, $5 new token, $6 lease end, $7 now, $8 expiry. */
  readonly recycle: string
  /** $1 scope, $2 key, $3 token, $4 status, $5 headers JSON, $6 body, $7 now, $8 expiry. */
  readonly complete: string
  /**
   * The same as `complete`, for `SqlTransaction.finish` (it commits with the statement): raises
   * {@link leaseLostSqlState} instead of changing no row, so the COMMIT becomes a rollback.
   * Undefined on SQLite, where there is no round trip to save.
   */
  readonly completeOrRaise?: string
  /**
   * PostgreSQL: the claims of a group (see pg-groups.ts) as one statement. Arrays $1 scopes,
   * $2 keys, $3 fingerprints, $4 lease tokens, $5 lease ends, $7 expiries, and $6 now. One row
   * per claim, `n` its 1-based position, with `claim`'s columns.
   */
  readonly claimAll?: string
  /**
   * PostgreSQL: the results of a group as one statement that raises {@link leaseLostSqlState}
   * (DETAIL: the lost positions) when any lease is lost. Arrays $1 scopes, $2 keys, $3 tokens,
   * $4 statuses, $5 headers JSON, $6 bodies, $8 expiries, and $7 now.
   */
  readonly completeAll?: string
  /** $1 scope, $2 key, $3 token, $4 recovery point, $5 phases JSON, $6 lease end, $7 now. */
  readonly savePhase: string
  /** $1 scope, $2 key, $3 token. */
  readonly release: string
  /** $1 now, $2 batch size. */
  readonly sweep: string
}

const columns = `scope, idem_key, fingerprint, state, lease_token, lease_expires_at, attempt,
  recovery_point, recovery_data, response_status, response_headers, response_body,
  created_at, updated_at, expires_at`

// The claim is the heart of the protocol: one INSERT ... ON CONFLICT DO NOTHING, so the primary
// key decides which of any number of concurrent claims wins, in a single round trip. On SQLite
// a loser reads the winner's record with a second statement (in-process, so nearly free).
const claimColumns = `(scope, idem_key, fingerprint, state, lease_token, lease_expires_at, attempt, created_at, updated_at, expires_at)`
const claimValues = `($1, $2, $3, 'in_progress', $4, $5, 1, $6, $6, $7)`
const claimCounted = `INSERT INTO ${idempotencyTable} ${claimColumns}
VALUES ${claimValues}
ON CONFLICT (scope, idem_key) DO NOTHING`
const claim = `${claimCounted}
RETURNING lease_token AS claimed_token`

// The record's columns named, not `existing.*`: a prepared statement reading `*` fails on
// PostgreSQL ("cached plan must not change result type") once a migration adds a column while
// the application runs.
const existingColumns = columns
  .split(',')
  .map((column) => `existing.${column.trim()}`)
  .join(', ')

// PostgreSQL: the same INSERT, and in the same round trip the existing record, so that a replay
// costs one statement. The record is read with the statement's snapshot: a winner that
// committed before it is seen; one that committed while ON CONFLICT waited for it is not (the
// row comes back all NULL), and then the store reads the record with a second statement.
const claimOrRead = `WITH claimed AS (
  INSERT INTO ${idempotencyTable} ${claimColumns}
  VALUES ${claimValues}
  ON CONFLICT (scope, idem_key) DO NOTHING
  RETURNING lease_token
)
SELECT (SELECT lease_token FROM claimed) AS claimed_token, ${existingColumns}
FROM (SELECT 1) AS one
LEFT JOIN ${idempotencyTable} AS existing ON existing.scope = $1 AND existing.idem_key = $2`

// PostgreSQL, claim: 'leased': the same claim committed without waiting for its WAL flush
// (synchronous_commit off for this statement's own transaction only). This is safe because a
// lease claim is only ever relied on durably through a later transaction of the same server:
// WAL is flushed in order, so when the handler's transaction (result and business writes)
// commits, its flush also makes the earlier claim durable. If the server crashes before that,
// the claim may vanish, but then nothing that depended on it committed either: the holder's
// transaction fails with the crash, and the key is simply free again for a retry. It saves one
// WAL flush (a disk sync) per new key.
const claimOrReadAsync = claimOrRead.replace(
  'FROM (SELECT 1) AS one',
  "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS one",
)

// PostgreSQL, claim: 'leased', a group of claims (pg-groups.ts): claimOrReadAsync for many keys.
// Inserted in key order, so two groups that claim some of the same keys wait for each other in
// the same order and never deadlock; of two claims of one key in a group the earlier wins.
const claimAll = `WITH input AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $7::bigint[])
    WITH ORDINALITY AS i(scope, idem_key, fingerprint, token, lease_end, expires, n)
), claimed AS (
  INSERT INTO ${idempotencyTable} ${claimColumns}
  SELECT scope, idem_key, fingerprint, 'in_progress', token, lease_end, 1, $6::bigint, $6::bigint, expires
  FROM input ORDER BY scope, idem_key, n
  ON CONFLICT (scope, idem_key) DO NOTHING
  RETURNING scope, idem_key, lease_token
)
SELECT input.n, claimed.lease_token AS claimed_token, ${existingColumns}
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS one
CROSS JOIN input
LEFT JOIN claimed ON claimed.scope = input.scope AND claimed.idem_key = input.idem_key
  AND claimed.lease_token = input.token
LEFT JOIN ${idempotencyTable} AS existing
  ON existing.scope = input.scope AND existing.idem_key = input.idem_key`

const select = `SELECT ${columns} FROM ${idempotencyTable} WHERE scope = $1 AND idem_key = $2`

// Compare-and-set on the token the caller read: of several retries that find the same expired
// lease, exactly one moves the token on; the others see zero rows and read the record again.
// A record must not expire (be swept or recycled) while its lease is live, so a takeover late in
// the record's retention, like a phase renewing the lease, moves expires_at up to the lease end.
const takeOver = `UPDATE ${idempotencyTable}
SET lease_token = $4, lease_expires_at = $5, attempt = attempt + 1, updated_at = $6,
  expires_at = CASE WHEN expires_at < $5 THEN $5 ELSE expires_at END
WHERE scope = $1 AND idem_key = $2 AND lease_token = $3
  AND state = 'in_progress' AND lease_expires_at <= $6`

const recycle = `UPDATE ${idempotencyTable}
SET fingerprint = $4, state = 'in_progress', lease_token = $5, lease_expires_at = $6, attempt = 1,
  recovery_point = NULL, recovery_data = NULL, response_status = NULL, response_headers = NULL,
  response_body = NULL, created_at = $7, updated_at = $7, expires_at = $8
WHERE scope = $1 AND idem_key = $2 AND lease_token = $3 AND expires_at <= $7`

// Fenced by the lease token: a holder whose lease was taken over writes nothing, and because
// this runs in the handler's transaction, its business writes roll back with it. On
// PostgreSQL the UPDATE also row-locks the record until COMMIT, so a concurrent takeover waits
// and then sees the completed record.
const complete = `UPDATE ${idempotencyTable}
SET state = 'completed', lease_expires_at = NULL, response_status = $4, response_headers = $5,
  response_body = $6, updated_at = $7, expires_at = $8
WHERE scope = $1 AND idem_key = $2 AND lease_token = $3 AND state = 'in_progress'`

const savePhase = `UPDATE ${idempotencyTable}
SET recovery_point = $4, recovery_data = $5, lease_expires_at = $6, updated_at = $7,
  expires_at = CASE WHEN expires_at < $6 THEN $6 ELSE expires_at END
WHERE scope = $1 AND idem_key = $2 AND lease_token = $3 AND state = 'in_progress'`

const release = `DELETE FROM ${idempotencyTable}
WHERE scope = $1 AND idem_key = $2 AND lease_token = $3 AND state = 'in_progress'`

const shared = { claim, select, takeOver, recycle, complete, savePhase, release }

/** The statements, per dialect. */
export const idempotencyStatements: Readonly<Record<SqlDialect, IdempotencyStatements>> = {
  // PostgreSQL: the batch is picked by primary key in a sub-select with LIMIT, so each DELETE
  // is short (few row locks, a small WAL burst, no long transaction holding back vacuum) and
  // never a table-wide lock; FOR UPDATE SKIP LOCKED passes over rows a live transaction holds
  // (a handler recording its result right now) instead of queueing behind it. The outer
  // condition is repeated because a row may have been recycled since the sub-select saw it.
  // In the handler's transaction (claim: 'in-transaction') the same CTE is the claim: its
  // INSERT waits on the primary key's unique index while another open transaction holds an
  // uncommitted claim of the key, then either conflicts (that one committed: the record is read
  // with a second statement, as the snapshot predates the commit) or inserts (it rolled back).
  postgres: {
    ...shared,
    claim: claimOrReadAsync,
    // Never the asynchronous form here: the setting would hold for the handler's whole
    // transaction, its business writes included.
    claimInTransaction: claimOrRead,
    completeOrRaise:
      'SELECT breakwater_idempotency_complete($1, $2, $3, $4::integer, $5, $6, $7::bigint, $8::bigint)',
    claimAll,
    completeAll:
      'SELECT breakwater_idempotency_complete_all($1::text[], $2::text[], $3::text[], $4::integer[], $5::text[], $6::bytea[], $7::bigint, $8::bigint[])',
    sweep: `DELETE FROM ${idempotencyTable}
WHERE (scope, idem_key) IN (
  SELECT scope, idem_key FROM ${idempotencyTable}
  WHERE expires_at <= $1
  ORDER BY expires_at
  LIMIT $2
  FOR UPDATE SKIP LOCKED
) AND expires_at <= $1`,
  },
  // SQLite has a single writer: a bounded batch by rowid keeps the write lock short, so claims
  // from requests queue behind the sweeper for milliseconds, not for a whole table scan.
  sqlite: {
    ...shared,
    // Inside the handler's transaction (claim: 'in-transaction') the transaction holds the
    // database's only write lock (BEGIN IMMEDIATE), so no other writer can interleave between
    // the claim and the read of an existing record that follows a conflict. A replay's
    // transaction is rolled back.
    claimInTransaction: claimCounted,
    claimCounted,
    sweep: `DELETE FROM ${idempotencyTable}
WHERE rowid IN (
  SELECT rowid FROM ${idempotencyTable} WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2
)`,
  },
}
