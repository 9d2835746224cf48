import type { AppliedMigration, Migration, SqlDriver } from '../stores/index.js'
import { runMigrations } from '../stores/index.js'

// All of the event store's SQL, per dialect, in one place. Tables:
// - breakwater_streams: one row per stream, the optimistic concurrency anchor (its `version` is
//   checked and bumped by the append), soft-delete flag and metadata.
// - breakwater_events: the log. `position` is the global position; (stream_id, stream_version)
//   is unique, so even a writer that bypassed the stream row could never fork a stream.
// - breakwater_checkpoints: where named subscriptions stored their last handled position.
// - breakwater_projections: the checkpoint and table generation of each projection.
// - breakwater_snapshots: optional snapshots of long streams' folded state.

/** The NOTIFY channel an append signals on PostgreSQL (payload: the last position). */
export const eventsChannel = 'breakwater_events'

/**
 * The advisory lock that orders position allocation on PostgreSQL ("breakevs" in ASCII, so it
 * cannot collide with the migration lock). See the migration's comment on the append function.
 */
export const positionLockKey = '7021785581052507763'

/**
 * The first key of the shared advisory lock each appending transaction holds until it ends
 * ("bwap"); the second key is the low 32 bits of its transaction id.
 */
export const appenderLockClass = 1651995504

const eventColumns =
  'e.position, e.stream_id, e.stream_version, e.event_id, e.type, e.schema_version, e.data, e.metadata, e.created_at'

const sqliteMigration: string[] = [
  `CREATE TABLE breakwater_streams (
  stream_id TEXT PRIMARY KEY,
  version INTEGER NOT NULL,
  truncate_before INTEGER NOT NULL DEFAULT 1,
  deleted INTEGER NOT NULL DEFAULT 0,
  metadata TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
)`,
  // INTEGER PRIMARY KEY is the rowid; positions are assigned as MAX + 1 under the write lock.
  `CREATE TABLE breakwater_events (
  position INTEGER PRIMARY KEY,
  stream_id TEXT NOT NULL,
  stream_version INTEGER NOT NULL,
  event_id TEXT NOT NULL,
  type TEXT NOT NULL,
  schema_version INTEGER NOT NULL,
  data TEXT NOT NULL,
  metadata TEXT,
  created_at INTEGER NOT NULL
)`,
  'CREATE UNIQUE INDEX breakwater_events_stream ON breakwater_events (stream_id, stream_version)',
  `CREATE TABLE breakwater_checkpoints (
  name TEXT PRIMARY KEY,
  position INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
)`,
  `CREATE TABLE breakwater_projections (
  name TEXT PRIMARY KEY,
  position INTEGER NOT NULL,
  generation INTEGER NOT NULL,
  rebuild_generation INTEGER,
  updated_at INTEGER NOT NULL
)`,
  `CREATE TABLE breakwater_snapshots (
  stream_id TEXT NOT NULL,
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  state TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (stream_id, name)
)`,
]

// The PostgreSQL append is one server-side function, so a standalone append is one round trip
// (and one autocommit transaction), and prepared once per connection.
//
// Global positions and late commits. A sequence hands out positions at insert time, but
// transactions commit in another order: a reader that saw position 11 committed while 10 was
// still in flight would move past 10 and never see it. The fix is a transaction-id watermark:
// readers return only events written by transactions below the id W of the oldest appending
// transaction still running, and appends are arranged so that this is always a prefix of the
// position order that can no longer change.
//
// Appends (writers) take their positions in a short critical section under a session-level
// advisory lock, in this order:
// 1. get the transaction id (a transaction that had none gets it now, so it is larger than the
//    id of every transaction that took positions before);
// 2. a transaction that already had an id (it wrote something before appending) must not be
//    older than the largest id that ever took positions (kept in the non-transactional
//    sequence breakwater_events_xid_order); if it is, the append fails with SQLSTATE 40001
//    (serialization_failure) and the caller retries the transaction. So ids never decrease in
//    position order;
// 3. raise that sequence to the id, take a shared transaction-level advisory lock keyed by the
//    id (held until the transaction ends: it marks "an appender that holds positions is still
//    running"), and take the positions.
// The lock is released before the stream check and the insert, so appends serialize only for
// those few microseconds; commits (and their WAL flushes) stay concurrent. The EXCEPTION block
// releases it even on a query cancel.
//
// Readers (breakwater_read_watermark) read, in this order: the sequence (R), then the running
// appenders of this database from pg_locks (A, mapped to full ids through the running
// transactions of the snapshot), and only then, in a new statement with a new snapshot, the
// events below W = min(A, R + 1). Every appender still running at that snapshot either took its
// positions before A was read (then it is in A) or after R was read (then its id is above R),
// so its id is >= W and, ids being non-decreasing in position order, so is the id of every event
// after its positions: the returned events form a prefix. Unlike the snapshot's xmin, this
// watermark ignores transactions that do not append: a long transaction elsewhere in the
// cluster does not hold readers back, only an append left open does.
const appendFunction = `CREATE FUNCTION breakwater_append(
  p_stream TEXT,
  p_expected_kind INTEGER,
  p_expected BIGINT,
  p_ids TEXT[],
  p_types TEXT[],
  p_schema_versions INTEGER[],
  p_data TEXT[],
  p_metadata TEXT[],
  p_created_at BIGINT,
  p_notify BOOLEAN
) RETURNS TABLE (r_ok BOOLEAN, r_version BIGINT, r_first_position BIGINT, r_deleted BOOLEAN)
LANGUAGE plpgsql AS $fn$
DECLARE
  v_count INTEGER := cardinality(p_types);
  v_had_xid BOOLEAN;
  v_xid xid8;
  v_xid_number BIGINT;
  v_first BIGINT;
  v_version BIGINT;
  v_deleted BOOLEAN;
BEGIN
  PERFORM pg_advisory_lock(${positionLockKey});
  BEGIN
    v_had_xid := pg_current_xact_id_if_assigned() IS NOT NULL;
    v_xid := pg_current_xact_id();
    v_xid_number := v_xid::text::bigint;
    IF v_had_xid AND v_xid_number < (SELECT last_value FROM breakwater_events_xid_order) THEN
      RAISE EXCEPTION USING
        ERRCODE = 'serialization_failure',
        MESSAGE = 'breakwater: this transaction wrote before appending and a newer transaction appended meanwhile; retry the transaction',
        HINT = 'Make the append the first write of its transaction.';
    END IF;
    IF v_xid_number > (SELECT last_value FROM breakwater_events_xid_order) THEN
      PERFORM setval('breakwater_events_xid_order', v_xid_number);
    END IF;
    PERFORM pg_advisory_xact_lock_shared(${appenderLockClass}, (v_xid_number::bit(32))::integer);
    v_first := nextval('breakwater_events_position');
    IF v_count > 1 THEN
      PERFORM setval('breakwater_events_position', v_first + v_count - 1);
    END IF;
  EXCEPTION WHEN OTHERS OR query_canceled THEN
    PERFORM pg_advisory_unlock(${positionLockKey});
    RAISE;
  END;
  PERFORM pg_advisory_unlock(${positionLockKey});

  -- The stream row is the concurrency anchor: the UPDATE (or the upsert's conflict branch)
  -- locks it and re-checks its condition against the latest committed version, so of several
  -- appends at one expected version exactly one matches.
  IF p_expected_kind IN (0, 1) OR (p_expected_kind = 3 AND p_expected = 0) THEN
    INSERT INTO breakwater_streams AS s
      (stream_id, version, truncate_before, deleted, metadata, created_at, updated_at)
    VALUES (p_stream, v_count, 1, FALSE, NULL, p_created_at, p_created_at)
    ON CONFLICT (stream_id) DO UPDATE
      SET version = s.version + v_count, deleted = FALSE, updated_at = p_created_at
      WHERE p_expected_kind = 0
        OR (p_expected_kind = 1 AND (s.version = 0 OR s.deleted))
        OR (p_expected_kind = 3 AND s.version = 0)
    RETURNING s.version INTO v_version;
  ELSE
    UPDATE breakwater_streams AS s
      SET version = s.version + v_count, deleted = FALSE, updated_at = p_created_at
      WHERE s.stream_id = p_stream
        AND ((p_expected_kind = 2 AND s.version > 0 AND NOT s.deleted)
          OR (p_expected_kind = 3 AND s.version = p_expected))
    RETURNING s.version INTO v_version;
  END IF;

  IF v_version IS NULL THEN
    SELECT s.version, s.deleted INTO v_version, v_deleted
      FROM breakwater_streams AS s WHERE s.stream_id = p_stream;
    RETURN QUERY SELECT FALSE, COALESCE(v_version, 0::bigint), NULL::bigint, COALESCE(v_deleted, FALSE);
    RETURN;
  END IF;

  INSERT INTO breakwater_events
    (position, transaction_id, stream_id, stream_version, event_id, type, schema_version, data,
     metadata, created_at)
  SELECT v_first + u.ord - 1, v_xid, p_stream, v_version - v_count + u.ord, u.id, u.type, u.sv,
         u.data, u.meta, p_created_at
    FROM unnest(p_ids, p_types, p_schema_versions, p_data, p_metadata)
      WITH ORDINALITY AS u(id, type, sv, data, meta, ord);

  IF p_notify THEN
    PERFORM pg_notify('${eventsChannel}', (v_first + v_count - 1)::text);
  END IF;
  RETURN QUERY SELECT TRUE, v_version, v_first, FALSE;
END;
$fn$`

const watermarkFunction = `CREATE FUNCTION breakwater_read_watermark() RETURNS xid8
LANGUAGE plpgsql AS $fn$
DECLARE
  v_register BIGINT;
  v_running BIGINT;
BEGIN
  -- A fixed snapshot (REPEATABLE READ, SERIALIZABLE) cannot see what finished after it: use
  -- its xmin, below which everything had finished when it was taken.
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RETURN pg_snapshot_xmin(pg_current_snapshot());
  END IF;
  SELECT last_value INTO v_register FROM breakwater_events_xid_order;
  SELECT min(x::text::bigint) INTO v_running
    FROM pg_snapshot_xip(pg_current_snapshot()) AS x
    WHERE (x::text::bigint & 4294967295) IN (
      SELECT l.objid::bigint FROM pg_locks l
      WHERE l.locktype = 'advisory' AND l.classid = ${appenderLockClass} AND l.objsubid = 2
        AND l.granted
        AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()));
  RETURN LEAST(v_running, v_register + 1)::text::xid8;
END;
$fn$`

// Each function computes the watermark first; its query then runs as a new statement, with a
// snapshot taken after the watermark (READ COMMITTED), as the proof above needs. readAll does
// the same in two statements from the client (a function would materialize its rows).
const headFunction = `CREATE FUNCTION breakwater_head() RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE
  v_watermark xid8 := breakwater_read_watermark();
  v_position BIGINT;
BEGIN
  SELECT e.position INTO v_position FROM breakwater_events e
    WHERE e.transaction_id < v_watermark ORDER BY e.position DESC LIMIT 1;
  RETURN COALESCE(v_position, 0);
END;
$fn$`

const firstAfterFunction = `CREATE FUNCTION breakwater_first_created_after(p_position BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE
  v_watermark xid8 := breakwater_read_watermark();
  v_created BIGINT;
BEGIN
  SELECT e.created_at INTO v_created FROM breakwater_events e
    WHERE e.position > p_position AND e.transaction_id < v_watermark
    ORDER BY e.position LIMIT 1;
  RETURN v_created;
END;
$fn$`

// Wakes followers after a commit, without making the append itself notify: PostgreSQL holds a
// cluster-wide lock from a notifying transaction's commit until its WAL flush, which would
// serialize every concurrent append. This tiny transaction does not wait for its flush (a
// lost notification only delays followers until their next poll).
const notifyFunction = `CREATE FUNCTION breakwater_notify(p_position BIGINT) RETURNS VOID
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  PERFORM pg_notify('${eventsChannel}', p_position::text);
END;
$fn$`

const postgresMigration: string[] = [
  `CREATE TABLE breakwater_streams (
  stream_id TEXT PRIMARY KEY,
  version BIGINT NOT NULL,
  truncate_before BIGINT NOT NULL DEFAULT 1,
  deleted BOOLEAN NOT NULL DEFAULT FALSE,
  metadata TEXT,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
)`,
  'CREATE SEQUENCE breakwater_events_position AS BIGINT',
  'CREATE SEQUENCE breakwater_events_xid_order AS BIGINT MINVALUE 0 START 0',
  `CREATE TABLE breakwater_events (
  position BIGINT PRIMARY KEY,
  transaction_id xid8 NOT NULL,
  stream_id TEXT NOT NULL,
  stream_version BIGINT NOT NULL,
  event_id TEXT NOT NULL,
  type TEXT NOT NULL,
  schema_version INTEGER NOT NULL,
  data TEXT NOT NULL,
  metadata TEXT,
  created_at BIGINT NOT NULL,
  UNIQUE (stream_id, stream_version)
)`,
  `CREATE TABLE breakwater_checkpoints (
  name TEXT PRIMARY KEY,
  position BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
)`,
  `CREATE TABLE breakwater_projections (
  name TEXT PRIMARY KEY,
  position BIGINT NOT NULL,
  generation INTEGER NOT NULL,
  rebuild_generation INTEGER,
  updated_at BIGINT NOT NULL
)`,
  `CREATE TABLE breakwater_snapshots (
  stream_id TEXT NOT NULL,
  name TEXT NOT NULL,
  version BIGINT NOT NULL,
  state TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (stream_id, name)
)`,
  appendFunction,
  watermarkFunction,
  headFunction,
  firstAfterFunction,
  notifyFunction,
]

/** The event store's schema migrations (capability `cqrs`), both dialects. */
export const cqrsMigrations: readonly Migration[] = [
  { version: 1, name: 'event-store', sqlite: sqliteMigration, postgres: postgresMigration },
]

/**
 * Creates or updates the event store's tables (capability `cqrs`). Run once before use; safe
 * to run from several processes at once.
 *
 * @example
 * ```ts
 * const db = await openDatabase('sqlite:./.breakwater/app.db')
 * await migrateCqrs(db)
 * const store = createEventStore(db)
 * ```
 */
export function migrateCqrs(db: SqlDriver): Promise<AppliedMigration[]> {
  return runMigrations(db, 'cqrs', cqrsMigrations)
}

/** One dialect's statements. */
export interface CqrsStatements {
  readonly readStreamForwards: string
  readonly readStreamBackwards: string
  /**
   * `$1` from position, `$2` limit (PostgreSQL: `$3` the watermark read just before by
   * {@link CqrsStatements.readAllWatermark}). Only events no in-flight transaction can precede.
   */
  readonly readAll: string
  /** PostgreSQL: the watermark for the next readAll statement (undefined on SQLite). */
  readonly readAllWatermark: string | undefined
  /**
   * PostgreSQL: readStream as an ordered index scan, the stream row read by scalar subqueries
   * in the same snapshot; returns no row when no event is in range (then the JOIN form runs).
   */
  readonly readStreamForwardsFast: string | undefined
  readonly readStreamBackwardsFast: string | undefined
  readonly headPosition: string
  /** `$1` position: created_at of the first final event after it. */
  readonly firstAfter: string
  readonly streamInfo: string
  readonly streamInfoForUpdate: string
  readonly markDeleted: string
  readonly upsertMetadata: string
  readonly deleteSnapshots: string
  readonly readSnapshot: string
  readonly writeSnapshot: string
  readonly loadCheckpoint: string
  readonly saveCheckpoint: string
  readonly insertProjection: string
  readonly projectionForUpdate: string
  readonly projection: string
  readonly saveProjectionPosition: string
  readonly setRebuildGeneration: string
  readonly finishRebuild: string
  /** `$1` limit: the largest unlimited value for LIMIT. */
  readonly noLimit: number | null
}

const common = {
  streamInfo:
    'SELECT version, deleted, truncate_before, metadata FROM breakwater_streams WHERE stream_id = $1',
  markDeleted:
    'UPDATE breakwater_streams SET deleted = $2, truncate_before = version + 1, updated_at = $3 WHERE stream_id = $1',
  upsertMetadata: `INSERT INTO breakwater_streams (stream_id, version, truncate_before, deleted, metadata, created_at, updated_at)
VALUES ($1, 0, 1, $3, $2, $4, $4)
ON CONFLICT (stream_id) DO UPDATE SET metadata = excluded.metadata, updated_at = excluded.updated_at`,
  deleteSnapshots: 'DELETE FROM breakwater_snapshots WHERE stream_id = $1',
  readSnapshot:
    'SELECT version, state FROM breakwater_snapshots WHERE stream_id = $1 AND name = $2',
  writeSnapshot: `INSERT INTO breakwater_snapshots (stream_id, name, version, state, created_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (stream_id, name) DO UPDATE
  SET version = excluded.version, state = excluded.state, created_at = excluded.created_at
  WHERE breakwater_snapshots.version < excluded.version`,
  loadCheckpoint: 'SELECT position FROM breakwater_checkpoints WHERE name = $1',
  saveCheckpoint: `INSERT INTO breakwater_checkpoints (name, position, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at`,
  insertProjection: `INSERT INTO breakwater_projections (name, position, generation, rebuild_generation, updated_at)
VALUES ($1, 0, 0, NULL, $2) ON CONFLICT (name) DO NOTHING`,
  projection:
    'SELECT position, generation, rebuild_generation FROM breakwater_projections WHERE name = $1',
  saveProjectionPosition:
    'UPDATE breakwater_projections SET position = $2, updated_at = $3 WHERE name = $1',
  setRebuildGeneration:
    'UPDATE breakwater_projections SET rebuild_generation = $2, updated_at = $3 WHERE name = $1',
  finishRebuild:
    'UPDATE breakwater_projections SET position = $2, generation = $3, rebuild_generation = NULL, updated_at = $4 WHERE name = $1',
} as const

function readStreamSql(dialect: 'sqlite' | 'postgres', direction: 'forwards' | 'backwards') {
  const greatest = dialect === 'sqlite' ? 'max' : 'GREATEST'
  const range =
    direction === 'forwards'
      ? `e.stream_version >= ${greatest}($2, s.truncate_before)`
      : 'e.stream_version <= $2 AND e.stream_version >= s.truncate_before'
  // One statement, so the events and the stream's version come from the same snapshot: a
  // command handler appends at exactly the version of what it folded.
  return `SELECT s.version AS current_version, s.deleted AS stream_deleted, s.truncate_before AS truncate_before, ${eventColumns}
FROM breakwater_streams s
LEFT JOIN breakwater_events e ON e.stream_id = s.stream_id AND ${range}
WHERE s.stream_id = $1
ORDER BY e.stream_version ${direction === 'forwards' ? 'ASC' : 'DESC'}
LIMIT $3`
}

function readStreamFastSql(direction: 'forwards' | 'backwards'): string {
  const row = (column: string) => `(SELECT ${column} FROM breakwater_streams WHERE stream_id = $1)`
  const range =
    direction === 'forwards'
      ? `e.stream_version >= GREATEST($2, ${row('truncate_before')})`
      : `e.stream_version <= $2 AND e.stream_version >= ${row('truncate_before')}`
  // Scalar subqueries run once (InitPlans), in the statement's snapshot, and leave the events
  // to an index scan already in stream order (the JOIN form makes PostgreSQL sort).
  return `SELECT ${row('version')} AS current_version, ${row('deleted')} AS stream_deleted,
  ${row('truncate_before')} AS truncate_before, ${eventColumns}
FROM breakwater_events e
WHERE e.stream_id = $1 AND ${range}
ORDER BY e.stream_version ${direction === 'forwards' ? 'ASC' : 'DESC'}
LIMIT $3`
}

/** Statements per dialect. */
export const cqrsStatements: Readonly<Record<'sqlite' | 'postgres', CqrsStatements>> = {
  sqlite: {
    ...common,
    readStreamForwards: readStreamSql('sqlite', 'forwards'),
    readStreamBackwards: readStreamSql('sqlite', 'backwards'),
    // Writers are serialized by SQLite's single write lock (BEGIN IMMEDIATE) and positions
    // are MAX + 1 taken under it, so positions are assigned in commit order and a reader can
    // never see a later position before an earlier one commits: no watermark is needed.
    readAll: `SELECT ${eventColumns} FROM breakwater_events e WHERE e.position >= $1 ORDER BY e.position LIMIT $2`,
    headPosition: 'SELECT COALESCE(MAX(position), 0) AS position FROM breakwater_events',
    firstAfter:
      'SELECT created_at FROM breakwater_events WHERE position > $1 ORDER BY position LIMIT 1',
    streamInfoForUpdate: common.streamInfo,
    projectionForUpdate: common.projection,
    readAllWatermark: undefined,
    readStreamForwardsFast: undefined,
    readStreamBackwardsFast: undefined,
    noLimit: -1,
  },
  postgres: {
    ...common,
    readStreamForwards: readStreamSql('postgres', 'forwards'),
    readStreamBackwards: readStreamSql('postgres', 'backwards'),
    // With the watermark read by a statement before (see readAllWatermark).
    readAll: `SELECT ${eventColumns} FROM breakwater_events e
WHERE e.position >= $1 AND e.transaction_id < $3::xid8
ORDER BY e.position LIMIT $2`,
    headPosition: 'SELECT breakwater_head() AS position',
    firstAfter: 'SELECT breakwater_first_created_after($1) AS created_at',
    streamInfoForUpdate: `${common.streamInfo} FOR UPDATE`,
    projectionForUpdate: `${common.projection} FOR UPDATE`,
    readAllWatermark: 'SELECT breakwater_read_watermark()::text AS watermark',
    readStreamForwardsFast: readStreamFastSql('forwards'),
    readStreamBackwardsFast: readStreamFastSql('backwards'),
    noLimit: null,
  },
}

/** PostgreSQL: the largest position handed out so far (committed, in flight or rolled back). */
export const postgresLastTaken =
  "SELECT COALESCE(pg_sequence_last_value('breakwater_events_position'), 0) AS position"

/** PostgreSQL: the post-commit wake-up of followers (see the migration). */
export const postgresNotify = 'SELECT breakwater_notify($1)'

/** The PostgreSQL append call: see the migration. */
export const postgresAppend =
  'SELECT r_ok, r_version, r_first_position, r_deleted FROM breakwater_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)'

const sqliteInsertCache = new Map<number, string>()
/** The maximum rows per SQLite insert statement. */
export const sqliteInsertChunk = 64

/** A SQLite multi-row insert of `rows` events (9 parameters per row), cached per row count. */
export function sqliteInsertEvents(rows: number): string {
  let sql = sqliteInsertCache.get(rows)
  if (sql === undefined) {
    const values: string[] = []
    for (let r = 0; r < rows; r++) {
      const base = r * 9
      values.push(
        `($${base + 1}, $${base + 2}, $${base + 3}, $${base + 4}, $${base + 5}, $${base + 6}, $${base + 7}, $${base + 8}, $${base + 9})`,
      )
    }
    sql = `INSERT INTO breakwater_events (position, stream_id, stream_version, event_id, type, schema_version, data, metadata, created_at) VALUES ${values.join(', ')}`
    sqliteInsertCache.set(rows, sql)
  }
  return sql
}

/** SQLite: the stream row's current state, read under the write lock. */
export const sqliteStreamForAppend =
  'SELECT version, deleted FROM breakwater_streams WHERE stream_id = $1'
/** SQLite: bump (or create) the stream row. */
export const sqliteUpsertStream = `INSERT INTO breakwater_streams (stream_id, version, truncate_before, deleted, metadata, created_at, updated_at)
VALUES ($1, $2, 1, 0, NULL, $3, $3)
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, deleted = 0, updated_at = excluded.updated_at`
/** SQLite: the last position, read under the write lock. */
export const sqliteLastPosition =
  'SELECT COALESCE(MAX(position), 0) AS position FROM breakwater_events'
