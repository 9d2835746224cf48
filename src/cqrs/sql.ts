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

/**
 * The NOTIFY channel an append signals on PostgreSQL, shared by the stores of every schema of the
 * database (payload: `<position>:<store>`, the last position and the oid of the store's sequence
 * `breakwater_events_position`; the position alone before migration 6).
 */
export const eventsChannel = 'breakwater_events'

/**
 * PostgreSQL: the advisory lock keys that mark appending transactions. Each appending
 * transaction holds one shared transaction-level lock `appenderLockBase + n` (n: a lower bound of
 * the first position it takes) until it ends, and beside it a shared lock naming its store (the
 * schema's event store), so that a store in another schema of the database does not wait for it.
 * The base ("bw" in the top two bytes) keeps these keys clear of small application lock numbers.
 */
export const appenderLockBase = '7095139737945505792'
const appenderLockClassLow = 1651965952 // appenderLockBase >> 32
const appenderLockClassHigh = appenderLockClassLow + 65536 // positions below 2^48

// Since migration 6 an appending transaction also holds, taken before its position lock, a
// shared lock on the two keys (storeLockClass, the oid of its store's position sequence): the
// position keys above say nothing about which store's sequence they come from, and several
// stores (tenants, apps) may live in separate schemas of one database, each reading pg_locks.
// The first key is "bwes" in ASCII; the second is the oid as an int4 of the same bits (pg_locks
// shows it back as the oid).
const storeLockClass = 1651991923
const storeOid = "'breakwater_events_position'::regclass::oid"
const storeLockKey = `(${storeOid}::bigint - ((${storeOid}::bigint >> 31) << 32))::integer`
const storeLock = `pg_advisory_xact_lock_shared(${storeLockClass}, ${storeLockKey})`
const positionLock = `pg_advisory_xact_lock_shared(${appenderLockBase}::bigint + 1
      + COALESCE(pg_sequence_last_value('breakwater_events_position'), 0))`

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

// The PostgreSQL append is one server-side function, so an append is one round trip, prepared
// once per connection. Appends in a caller's transaction and group commit call it; a standalone
// append runs the same steps as one plain statement (postgresAppendAlone, at the end of this
// file), and calls it only to learn the stream's state when its expectation failed.
//
// Global positions and late commits. A sequence hands out positions when rows are inserted,
// but transactions commit in another order: a reader that saw position 11 committed while 10
// was still in flight would move past 10 and never see it. Readers therefore stop at a
// watermark W below which nothing can still commit:
//
// - An appending transaction, before it takes its first position, reads the sequence's last
//   value L and takes a shared advisory lock on the key base + (L + 1), held until it ends
//   (once per transaction). Every position it takes afterwards is > L, so the key is a lower
//   bound of all its positions.
// - A reader (breakwater_read_watermark) first reads the sequence's last value R, then the
//   lowest key held in pg_locks by appenders of this store (A), and returns W = min(A, R + 1).
//   Only then, in a new statement (so with a snapshot taken after), does it read events at
//   positions below W.
// - "Of this store" (migration 6): several stores may share the database, one per schema, and
//   another store's appender is not ours to wait for (its key comes from its own sequence, so it
//   may be far below our positions: our head went back while it ran). Each appender first
//   takes a second shared lock naming its store (storeLock), and the reader skips the keys of a
//   transaction that holds a store lock but not this store's. One pg_locks scan sees both locks
//   (it copies the lock table under all of its partition locks; advisory locks are never
//   fast-path), and a transaction holds both until it ends, so an appender of this store whose
//   key is seen is also seen holding this store's lock. A key held without any store lock (an
//   older release's appender, or one between its two locks) counts for every store, as before.
//
// Why no event below W can still appear: take an appending transaction still running when the
// events are read. If it took its lock before pg_locks was read, its key is in A, so W <= key <=
// each of its positions. Otherwise it took its lock, and then its positions, after R was read,
// so each of its positions is > R, that is >= R + 1 >= W. Either way all of its positions are
// >= W; every event below W belongs to a transaction that has ended, and is visible if it
// committed. The events below W are therefore a prefix of the log that can no longer change.
//
// Costs: a read runs one pg_locks scan; an append takes one advisory lock per transaction
// (nothing is serialized: no global lock, commits stay concurrent); a follower waits for any
// append left open, but not for transactions that do not append. The sequence must not cache
// values (CACHE 1, the default), so that its last value is the largest position handed out.
// When an existing stream row may be bumped by the upsert (any, noStream, or expected version 0).
const upsertConditionV1 = `p_expected_kind = 0
        OR (p_expected_kind = 1 AND (s.version = 0 OR s.deleted))
        OR (p_expected_kind = 3 AND s.version = 0)`

// Migration 5: never bump a negative version (a row changed outside breakwater): "any" (or
// "noStream" on a deleted stream) would write events at versions -2, -1, 0, after which
// "noStream" held on a stream with events. The append then fails, reporting the version, which
// the store turns into STORED_DATA_INVALID. The UPDATE branch (streamExists, a version above 0)
// already matches no negative version.
const upsertConditionV5 = `s.version >= 0 AND (${upsertConditionV1})`

// Migration 6: the appender takes its store's lock too (see the proof above), and notifies with
// the store in the payload. The once-per-transaction setting holds the store, so a transaction
// that appends to a second store (another search_path) takes that store's locks as well.
const appenderLocksV1 = `IF current_setting('breakwater.appending', true) IS DISTINCT FROM 'on' THEN
    PERFORM ${positionLock};
    PERFORM set_config('breakwater.appending', 'on', true);
  END IF;`
const appenderLocksV6 = `IF current_setting('breakwater.appending', true) IS DISTINCT FROM ${storeOid}::text THEN
    PERFORM ${storeLock};
    PERFORM ${positionLock};
    PERFORM set_config('breakwater.appending', ${storeOid}::text, true);
  END IF;`

/**
 * The channel of one store's notifications since migration 6: `breakwater_events_<oid>`, the oid
 * being its position sequence's, as SQL. Every store also notifies on {@link eventsChannel} with
 * the position alone, as before, for followers of earlier releases (they parse the payload as a
 * number: a changed payload there would leave them polling until upgraded) and for anyone who
 * LISTENs themselves; followers of this release listen on their store's channel, so another
 * schema's appends do not wake them.
 */
const storeChannelSql = `'${eventsChannel}_' || ${storeOid}::text`

/** The NOTIFY statements of an append: the database's channel, and its store's since 6. */
function notifySql(payload: string, storeChannel: boolean): string {
  const shared = `PERFORM pg_notify('${eventsChannel}', ${payload});`
  return storeChannel ? `${shared}\n    PERFORM pg_notify(${storeChannelSql}, ${payload});` : shared
}

interface AppendFunctionVersion {
  readonly multiEventInsert: string
  readonly upsertCondition: string
  readonly appenderLocks: string
  readonly notifyPayload: string
  /** Notifies on the store's own channel too (migration 6). */
  readonly storeChannel?: boolean
}

function appendFunctionSql(create: string, version: AppendFunctionVersion): string {
  const { multiEventInsert, upsertCondition, appenderLocks, notifyPayload } = version
  const notify = notifySql(notifyPayload, version.storeChannel === true)
  return `${create} breakwater_append(
  p_stream TEXT,
  p_expected_kind INTEGER,
  p_expected BIGINT,
  p_ids TEXT[],
  p_types TEXT[],
  p_schema_versions INTEGER[],
  p_data TEXT[],
  p_metadata TEXT[],
  p_created_at BIGINT,
  p_notify BOOLEAN,
  OUT r_ok BOOLEAN,
  OUT r_version BIGINT,
  OUT r_positions BIGINT[],
  OUT r_deleted BOOLEAN
)
LANGUAGE plpgsql AS $fn$
DECLARE
  v_count INTEGER := cardinality(p_types);
  v_version BIGINT;
  v_deleted BOOLEAN;
BEGIN
  -- The stream row is the concurrency anchor: the UPDATE (or the upsert's conflict branch)
  -- locks it and re-checks its condition against the latest committed version, so of several
  -- appends at one expected version exactly one matches.
  IF p_expected_kind IN (0, 1) OR (p_expected_kind = 3 AND p_expected = 0) THEN
    INSERT INTO breakwater_streams AS s
      (stream_id, version, truncate_before, deleted, metadata, created_at, updated_at)
    VALUES (p_stream, v_count, 1, FALSE, NULL, p_created_at, p_created_at)
    ON CONFLICT (stream_id) DO UPDATE
      SET version = s.version + v_count, deleted = FALSE, updated_at = p_created_at
      WHERE ${upsertCondition}
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
    r_ok := FALSE;
    r_version := COALESCE(v_version, 0);
    r_deleted := COALESCE(v_deleted, FALSE);
    RETURN;
  END IF;

  -- Announce this transaction as an appender before it takes positions (see above). The
  -- setting is local to the transaction (and to a savepoint that rolls back, like the lock).
  ${appenderLocks}
  IF v_count = 1 THEN
    r_positions := ARRAY[nextval('breakwater_events_position')];
    INSERT INTO breakwater_events
      (position, stream_id, stream_version, event_id, type, schema_version, data, metadata,
       created_at)
    VALUES (r_positions[1], p_stream, v_version, p_ids[1], p_types[1], p_schema_versions[1],
            p_data[1], p_metadata[1], p_created_at);
  ELSE
${multiEventInsert}  END IF;

  IF p_notify THEN
    ${notify}
  END IF;
  r_ok := TRUE;
  r_version := v_version;
  r_deleted := FALSE;
END;
$fn$`
}

const multiEventInsertV1 = `    SELECT array_agg(n.p ORDER BY n.p) INTO r_positions
      FROM (SELECT nextval('breakwater_events_position') AS p
            FROM generate_series(1, v_count)) AS n;
    INSERT INTO breakwater_events
      (position, stream_id, stream_version, event_id, type, schema_version, data, metadata,
       created_at)
    SELECT r_positions[u.ord], p_stream, v_version - v_count + u.ord, u.id, u.type, u.sv,
           u.data, u.meta, p_created_at
      FROM unnest(p_ids, p_types, p_schema_versions, p_data, p_metadata)
        WITH ORDINALITY AS u(id, type, sv, data, meta, ord);
`

const appendFunctionV1: AppendFunctionVersion = {
  multiEventInsert: multiEventInsertV1,
  upsertCondition: upsertConditionV1,
  appenderLocks: appenderLocksV1,
  notifyPayload: 'r_positions[v_count]::text',
}
const appendFunction = appendFunctionSql('CREATE FUNCTION', appendFunctionV1)

// Migration 2: a several-event append takes its positions in the INSERT itself (one statement
// instead of two); the ordered subquery makes nextval run in event order, so positions still
// increase with stream versions, and positions are returned in stream-version order.
const multiEventInsertV2 = `    WITH inserted AS (
      INSERT INTO breakwater_events
        (position, stream_id, stream_version, event_id, type, schema_version, data, metadata,
         created_at)
      SELECT nextval('breakwater_events_position'), p_stream, v_version - v_count + u.ord, u.id,
             u.type, u.sv, u.data, u.meta, p_created_at
        FROM (SELECT * FROM unnest(p_ids, p_types, p_schema_versions, p_data, p_metadata)
                WITH ORDINALITY AS e(id, type, sv, data, meta, ord)
              ORDER BY e.ord) AS u
      RETURNING position, stream_version
    )
    SELECT array_agg(i.position ORDER BY i.stream_version) INTO r_positions FROM inserted AS i;
`

function watermarkFunctionSql(create: string, running: string): string {
  return `${create} breakwater_read_watermark() RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE
  v_taken BIGINT;
  v_running BIGINT;
BEGIN
  -- A snapshot fixed before the watermark is read could miss what committed in between.
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION USING
      ERRCODE = 'feature_not_supported',
      MESSAGE = 'breakwater: reading the log needs READ COMMITTED isolation';
  END IF;
  v_taken := COALESCE(pg_sequence_last_value('breakwater_events_position'), 0);
  ${running}
  RETURN LEAST(v_running, v_taken + 1);
END;
$fn$`
}

const watermarkFunction = watermarkFunctionSql(
  'CREATE FUNCTION',
  `SELECT min((l.classid::bigint << 32) + l.objid::bigint) - ${appenderLockBase}::bigint
    INTO v_running
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.classid >= ${appenderLockClassLow} AND l.classid < ${appenderLockClassHigh}
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());`,
)

// Migration 6: the lowest key among the transactions that hold this store's lock or no store
// lock at all (see the proof above). One scan of pg_locks, grouped by transaction.
const watermarkFunctionV6 = watermarkFunctionSql(
  'CREATE OR REPLACE FUNCTION',
  `SELECT min(a.key) - ${appenderLockBase}::bigint INTO v_running
    FROM (SELECT min((l.classid::bigint << 32) + l.objid::bigint) FILTER (WHERE l.objsubid = 1) AS key,
            bool_or(l.objsubid = 2 AND l.classid = ${storeLockClass}) AS tagged,
            bool_or(l.objsubid = 2 AND l.classid = ${storeLockClass} AND l.objid = ${storeOid}) AS ours
          FROM pg_locks l
          WHERE l.locktype = 'advisory' AND l.granted
            AND l.classid >= ${appenderLockClassLow} AND l.classid < ${appenderLockClassHigh}
            AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
          GROUP BY l.virtualtransaction) AS a
    WHERE a.ours OR NOT a.tagged;`,
)

// Each function computes the watermark first; its query then runs as a new statement, with a
// snapshot taken after the watermark (READ COMMITTED), as the proof above needs. readAll does
// the same in two statements from the client (a function would materialize its rows).
const headFunction = `CREATE FUNCTION breakwater_head() RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE
  v_watermark BIGINT := breakwater_read_watermark();
  v_position BIGINT;
BEGIN
  SELECT e.position INTO v_position FROM breakwater_events e
    WHERE e.position < v_watermark ORDER BY e.position DESC LIMIT 1;
  RETURN COALESCE(v_position, 0);
END;
$fn$`

const firstAfterFunction = `CREATE FUNCTION breakwater_first_created_after(p_position BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE
  v_watermark BIGINT := breakwater_read_watermark();
  v_created BIGINT;
BEGIN
  SELECT e.created_at INTO v_created FROM breakwater_events e
    WHERE e.position > p_position AND e.position < v_watermark
    ORDER BY e.position LIMIT 1;
  RETURN v_created;
END;
$fn$`

// Wakes followers after a commit, without making the append itself notify: PostgreSQL holds a
// cluster-wide lock from a notifying transaction's commit until its WAL flush, which would
// serialize every concurrent append. This tiny transaction does not wait for its flush (a
// lost notification only delays followers until their next poll).
function notifyFunctionSql(create: string, storeChannel: boolean): string {
  return `${create} breakwater_notify(p_position BIGINT) RETURNS VOID
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  ${notifySql('p_position::text', storeChannel).replace('\n    ', '\n  ')}
END;
$fn$`
}
const notifyFunction = notifyFunctionSql('CREATE FUNCTION', false)

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
  // CACHE 1 (the default) matters: readers rely on its last value being the largest position
  // handed out by any session.
  'CREATE SEQUENCE breakwater_events_position AS BIGINT CACHE 1',
  `CREATE TABLE breakwater_events (
  position BIGINT PRIMARY KEY,
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

// Group commit (PostgreSQL): several standalone appends, each with its own expectation, in one
// statement and so one transaction and one WAL flush. Each append runs through
// breakwater_append as it would alone, in order; one whose expectation fails is reported
// (r_ok[i] false, its actual version and deleted flag) and writes nothing, without failing the
// others. The caller orders appends by stream so that two batches lock stream rows in the same
// order. r_positions is aligned with the flattened events (NULL for a failed append's events).
// The appender lock of the watermark is taken once, by the first successful append.
const appendBatchFunction = `CREATE FUNCTION breakwater_append_batch(
  p_streams TEXT[],
  p_expected_kinds INTEGER[],
  p_expected BIGINT[],
  p_counts INTEGER[],
  p_ids TEXT[],
  p_types TEXT[],
  p_schema_versions INTEGER[],
  p_data TEXT[],
  p_metadata TEXT[],
  p_created_at BIGINT[],
  OUT r_ok BOOLEAN[],
  OUT r_versions BIGINT[],
  OUT r_deleted BOOLEAN[],
  OUT r_positions BIGINT[]
)
LANGUAGE plpgsql AS $fn$
DECLARE
  v_offset INTEGER := 0;
  v_count INTEGER;
  v_result RECORD;
BEGIN
  r_ok := '{}';
  r_versions := '{}';
  r_deleted := '{}';
  r_positions := '{}';
  FOR i IN 1 .. cardinality(p_streams) LOOP
    v_count := p_counts[i];
    SELECT a.r_ok, a.r_version, a.r_positions, a.r_deleted INTO v_result
      FROM breakwater_append(p_streams[i], p_expected_kinds[i], p_expected[i],
        p_ids[v_offset + 1 : v_offset + v_count], p_types[v_offset + 1 : v_offset + v_count],
        p_schema_versions[v_offset + 1 : v_offset + v_count],
        p_data[v_offset + 1 : v_offset + v_count], p_metadata[v_offset + 1 : v_offset + v_count],
        p_created_at[i], FALSE) AS a;
    r_ok := r_ok || v_result.r_ok;
    r_versions := r_versions || v_result.r_version;
    r_deleted := r_deleted || v_result.r_deleted;
    r_positions := r_positions
      || COALESCE(v_result.r_positions, array_fill(NULL::BIGINT, ARRAY[v_count]));
    v_offset := v_offset + v_count;
  END LOOP;
END;
$fn$`

/** The event store's schema migrations (capability `cqrs`), both dialects. */
export const cqrsMigrations: readonly Migration[] = [
  { version: 1, name: 'event-store', sqlite: sqliteMigration, postgres: postgresMigration },
  {
    version: 2,
    name: 'append-batch',
    sqlite: [],
    postgres: [
      appendFunctionSql('CREATE OR REPLACE FUNCTION', {
        ...appendFunctionV1,
        multiEventInsert: multiEventInsertV2,
      }),
      appendBatchFunction,
    ],
  },
  {
    // An inline projection registered on a log that already had events: the last position
    // taken then. Its tables lack the events up to there until a rebuild (NULL: complete).
    version: 3,
    name: 'inline-projection-gap',
    sqlite: ['ALTER TABLE breakwater_projections ADD COLUMN missing_through INTEGER'],
    postgres: ['ALTER TABLE breakwater_projections ADD COLUMN missing_through BIGINT'],
  },
  {
    // How the projection was last registered or rebuilt: 1 inline (in appends), 0 async (a
    // projector), NULL registered before this column. Moved between the two, neither side's
    // state means what the other needs: an inline projection's position is only where its last
    // rebuild ended, an async one's tables lack what its projector had not reached.
    version: 4,
    name: 'projection-mode',
    sqlite: ['ALTER TABLE breakwater_projections ADD COLUMN inline INTEGER'],
    postgres: ['ALTER TABLE breakwater_projections ADD COLUMN inline INTEGER'],
  },
  {
    // See upsertConditionV5. SQLite's append checks the version it reads in the store.
    version: 5,
    name: 'append-negative-version',
    sqlite: [],
    postgres: [
      appendFunctionSql('CREATE OR REPLACE FUNCTION', {
        ...appendFunctionV1,
        multiEventInsert: multiEventInsertV2,
        upsertCondition: upsertConditionV5,
      }),
    ],
  },
  {
    // Stores in separate schemas of one database: each reader's watermark counts its own
    // store's appenders only, and notifications name their store (see the proof above).
    version: 6,
    name: 'store-scoped-watermark',
    sqlite: [],
    postgres: [
      appendFunctionSql('CREATE OR REPLACE FUNCTION', {
        multiEventInsert: multiEventInsertV2,
        upsertCondition: upsertConditionV5,
        appenderLocks: appenderLocksV6,
        notifyPayload: 'r_positions[v_count]::text',
        storeChannel: true,
      }),
      watermarkFunctionV6,
      notifyFunctionSql('CREATE OR REPLACE FUNCTION', true),
    ],
  },
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
   * Every committed event from `$1`, `$2` at most, ignoring appends in flight (a rebuild's swap
   * of an inline projection, once no transaction can write the old tables, needs exactly this).
   */
  readonly readAllCommitted: string
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
  /** `$1` stream, `$2` metadata, `$3` now: creates the stream's row unless one exists (0 rows). */
  readonly insertMetadata: string
  readonly deleteSnapshots: string
  readonly readSnapshot: string
  readonly writeSnapshot: string
  readonly loadCheckpoint: string
  /**
   * `$1` name, `$2` position, `$3` now: stores a subscription's checkpoint, only ever forward.
   * Two instances of one named subscription (or a stale one still running) would otherwise move
   * it back, and every event after the older position would be delivered again. Nothing is
   * meant to move it back: `fromPosition` applies only while no checkpoint is stored.
   */
  readonly saveCheckpoint: string
  /** `$1` name, `$2` now, `$3` the last position an inline projection has not seen (or NULL). */
  readonly insertProjection: string
  /** `$2` inline (1) or async (0), `$3` missing_through, `$4` updated_at. */
  readonly setProjectionMode: string
  /** The largest position taken so far (committed or not). */
  readonly lastTaken: string
  /** An inline projection's `missing_through` and the log's first position. */
  readonly inlineProjection: string
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
  insertMetadata: `INSERT INTO breakwater_streams (stream_id, version, truncate_before, deleted, metadata, created_at, updated_at)
VALUES ($1, 0, 1, false, $2, $3, $3)
ON CONFLICT (stream_id) DO NOTHING`,
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
ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
  WHERE breakwater_checkpoints.position < excluded.position`,
  insertProjection: `INSERT INTO breakwater_projections (name, position, generation, rebuild_generation, updated_at, missing_through, inline)
VALUES ($1, 0, 0, NULL, $2, $3, $4) ON CONFLICT (name) DO NOTHING`,
  setProjectionMode:
    'UPDATE breakwater_projections SET inline = $2, missing_through = $3, updated_at = $4 WHERE name = $1',
  inlineProjection: `SELECT missing_through, (SELECT MIN(position) FROM breakwater_events) AS first_position
FROM breakwater_projections WHERE name = $1`,
  projection:
    'SELECT position, generation, rebuild_generation, missing_through, inline FROM breakwater_projections WHERE name = $1',
  saveProjectionPosition:
    'UPDATE breakwater_projections SET position = $2, updated_at = $3 WHERE name = $1',
  setRebuildGeneration:
    'UPDATE breakwater_projections SET rebuild_generation = $2, updated_at = $3 WHERE name = $1',
  finishRebuild:
    'UPDATE breakwater_projections SET position = $2, generation = $3, rebuild_generation = NULL, missing_through = NULL, updated_at = $4, inline = $5 WHERE name = $1',
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
    lastTaken: 'SELECT COALESCE(MAX(position), 0) AS position FROM breakwater_events',
    firstAfter:
      'SELECT created_at FROM breakwater_events WHERE position > $1 ORDER BY position LIMIT 1',
    streamInfoForUpdate: common.streamInfo,
    projectionForUpdate: common.projection,
    readAllWatermark: undefined,
    readAllCommitted: `SELECT ${eventColumns} FROM breakwater_events e WHERE e.position >= $1 ORDER BY e.position LIMIT $2`,
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
WHERE e.position >= $1 AND e.position < $3
ORDER BY e.position LIMIT $2`,
    headPosition: 'SELECT breakwater_head() AS position',
    lastTaken:
      "SELECT COALESCE(pg_sequence_last_value('breakwater_events_position'), 0) AS position",
    firstAfter: 'SELECT breakwater_first_created_after($1) AS created_at',
    streamInfoForUpdate: `${common.streamInfo} FOR UPDATE`,
    projectionForUpdate: `${common.projection} FOR UPDATE`,
    readAllWatermark: 'SELECT breakwater_read_watermark() AS watermark',
    readAllCommitted: `SELECT ${eventColumns} FROM breakwater_events e WHERE e.position >= $1 ORDER BY e.position LIMIT $2`,
    readStreamForwardsFast: readStreamFastSql('forwards'),
    readStreamBackwardsFast: readStreamFastSql('backwards'),
    noLimit: null,
  },
}

/**
 * PostgreSQL, for a follower starting: `position`, the largest position handed out so far
 * (committed, in flight or rolled back), and `store`, the key naming this store in its
 * notifications' payloads (`<position>:<store>`, since migration 6).
 */
export const postgresFollowStart = `SELECT COALESCE(pg_sequence_last_value('breakwater_events_position'), 0) AS position`

/**
 * PostgreSQL: the channel a follower of this store listens on: its own
 * (`breakwater_events_<oid>`) once migration 6 made appends notify there, else the database's.
 */
export const postgresFollowChannel = `SELECT CASE WHEN EXISTS (
    SELECT 1 FROM breakwater_migrations WHERE capability = 'cqrs' AND version >= 6)
  THEN ${storeChannelSql} ELSE '${eventsChannel}' END AS channel`

/** PostgreSQL: the post-commit wake-up of followers (see the migration). */
export const postgresNotify = 'SELECT breakwater_notify($1)'

/** The PostgreSQL group-commit call: several appends in one statement (see the migration). */
export const postgresAppendBatch =
  'SELECT r_ok, r_versions, r_deleted, r_positions FROM breakwater_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)'

/** The PostgreSQL append call: see the migration. */
export const postgresAppend =
  'SELECT r_ok, r_version, r_positions, r_deleted FROM breakwater_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)'

/**
 * The expectation forms of {@link postgresAppendAlone}: `version0` is an expected version of 0,
 * `version` one above 0.
 */
export type AloneExpectation = 'any' | 'noStream' | 'streamExists' | 'version0' | 'version'

// A standalone append (no caller transaction) on PostgreSQL as ONE plain statement: the steps of
// breakwater_append without PL/pgSQL, in one executor run instead of one per step, with the
// expectation compiled in and the single-event case without arrays. Measured on one stream,
// sequentially: about 140 us of server CPU per single-event append against 175 us for the
// function (a bare one-row INSERT: 115 us), 210 against 250 us for ten events.
// - The stream part locks and bumps the stream row only if the expectation holds, against the
//   latest committed row (the UPDATE re-checks it after waiting for a concurrent writer; the
//   upsert's conflict branch always sees the latest row), as breakwater_append does.
// - Its RETURNING takes the appender locks of the watermark (see the migration), evaluated for
//   the updated row, so after the row lock and before any position is taken: the INSERT below
//   reads from s, so its nextval calls run only once s has produced its row (the store's lock
//   first, then the position lock). The statement is its own transaction, so it takes them
//   unconditionally (breakwater_append's once-per-transaction check is for appends inside a
//   caller's transaction).
// - Several events take their positions from an ordered subquery, so positions increase with
//   stream versions (as in migration 2).
// When the expectation fails, s is empty: nothing is inserted or updated and the statement
// returns no row; the caller then learns the stream's state from breakwater_append.
// Parameters: $1 stream, $2 created_at, $3..$7 the event's (or arrays of the events') id, type,
// schema version, data and metadata; several events: $8 their count; `version`: the expected
// version last ($8, or $9). Returns one row per event: v (its stream version), p (its position).
function appendAloneSql(expectation: AloneExpectation, many: boolean): string {
  const count = many ? '$8::integer' : '1'
  const expected = many ? '$9::bigint' : '$8::bigint'
  const bump = `version = s.version + ${count}, deleted = FALSE, updated_at = $2::bigint`
  const upsert = (condition: string): string =>
    `INSERT INTO breakwater_streams AS s
    (stream_id, version, truncate_before, deleted, metadata, created_at, updated_at)
  VALUES ($1::text, ${count}, 1, FALSE, NULL, $2::bigint, $2::bigint)
  ON CONFLICT (stream_id) DO UPDATE SET ${bump}${condition}`
  const update = (condition: string): string =>
    `UPDATE breakwater_streams AS s SET ${bump}
  WHERE s.stream_id = $1::text AND ${condition}`
  // A negative version (a row changed outside breakwater) is never bumped, as in
  // breakwater_append since migration 5: the caller then asks it, which reports the version.
  const stream = {
    any: upsert('\n    WHERE s.version >= 0'),
    noStream: upsert('\n    WHERE s.version >= 0 AND (s.version = 0 OR s.deleted)'),
    version0: upsert('\n    WHERE s.version = 0'),
    streamExists: update('s.version > 0 AND NOT s.deleted'),
    version: update(`s.version = ${expected}`),
  }[expectation]
  const columns =
    'position, stream_id, stream_version, event_id, type, schema_version, data, metadata, created_at'
  const insert = many
    ? `SELECT nextval('breakwater_events_position'), $1::text, e.v - ${count} + e.ord, e.id, e.type,
       e.sv, e.data, e.meta, $2::bigint
  FROM (SELECT s.version AS v, u.id, u.type, u.sv, u.data, u.meta, u.ord
        FROM s, unnest($3::text[], $4::text[], $5::integer[], $6::text[], $7::text[])
          WITH ORDINALITY AS u(id, type, sv, data, meta, ord)
        ORDER BY u.ord) AS e`
    : `SELECT nextval('breakwater_events_position'), $1::text, s.version, $3::text, $4::text,
       $5::integer, $6::text, $7::text, $2::bigint
  FROM s`
  return `WITH s AS (
  ${stream}
  RETURNING s.version, ${storeLock} AS store, ${positionLock} AS appender
)
INSERT INTO breakwater_events (${columns})
${insert}
RETURNING stream_version AS v, position AS p`
}

const appendAloneStatements: Readonly<Record<AloneExpectation, readonly [string, string]>> = {
  any: [appendAloneSql('any', false), appendAloneSql('any', true)],
  noStream: [appendAloneSql('noStream', false), appendAloneSql('noStream', true)],
  streamExists: [appendAloneSql('streamExists', false), appendAloneSql('streamExists', true)],
  version0: [appendAloneSql('version0', false), appendAloneSql('version0', true)],
  version: [appendAloneSql('version', false), appendAloneSql('version', true)],
}

/**
 * The PostgreSQL standalone append statement for an expectation, for one event or several (see
 * appendAloneSql above for its parameters and result).
 */
export function postgresAppendAlone(expectation: AloneExpectation, many: boolean): string {
  return appendAloneStatements[expectation][many ? 1 : 0]
}

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
