import type { Migration, SqlDialect } from '../stores/index.js'

// Every SQL statement of the saga capability, per dialect. Both dialects use `$n` placeholders
// (the SQLite driver rewrites them) and the same column meanings; timestamps are integer epoch
// milliseconds from the worker's clock, so tests drive leases and timers with a ManualClock
// (processes sharing a database need NTP-synced clocks; leases must be much longer than the
// skew between them).

/** The table of saga instances. */
export const sagaTable = 'breakwater_sagas'
/** The timeline of saga instances: one row per step attempt, failure, compensation. */
export const sagaEventsTable = 'breakwater_saga_events'
/** Replies delivered to steps that wait for one. */
export const sagaRepliesTable = 'breakwater_saga_replies'
/** Events of choreographed flows recorded by the flow tracker. */
export const flowEventsTable = 'breakwater_flow_events'
/** The PostgreSQL NOTIFY channel that wakes saga workers when a saga is started. */
export const sagaNotifyChannel = 'breakwater_saga'

const instanceColumns = (bigint: string, flag: string) => `(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  definition TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'compensated', 'failed', 'cancelled')),
  input TEXT NOT NULL,
  context TEXT NOT NULL,
  steps TEXT NOT NULL,
  step_index INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  next_run_at ${bigint} NOT NULL,
  lease_owner TEXT,
  lease_expires_at ${bigint},
  lease_token ${bigint} NOT NULL,
  previous_owner TEXT,
  previous_expires_at ${bigint},
  cancel_requested ${flag} NOT NULL DEFAULT 0,
  reason TEXT,
  created_at ${bigint} NOT NULL,
  updated_at ${bigint} NOT NULL,
  finished_at ${bigint}
)`

const indexes = [
  // The claim scans runnable instances by due time; finished ones drop out of this index.
  `CREATE INDEX ${sagaTable}_runnable ON ${sagaTable} (next_run_at) WHERE status IN ('running', 'compensating')`,
  `CREATE INDEX ${sagaTable}_status ON ${sagaTable} (status, created_at)`,
  `CREATE INDEX ${sagaEventsTable}_saga ON ${sagaEventsTable} (saga_id, seq)`,
  `CREATE INDEX ${flowEventsTable}_correlation ON ${flowEventsTable} (correlation_id, seq)`,
  `CREATE INDEX ${flowEventsTable}_at ON ${flowEventsTable} (at)`,
]

// IF NOT EXISTS: on a large PostgreSQL table an operator may build it beforehand with CREATE
// INDEX CONCURRENTLY (writes go on meanwhile), and the migration then finds it (docs/saga.md).
const listByName = [
  `CREATE INDEX IF NOT EXISTS ${sagaTable}_name ON ${sagaTable} (name, created_at DESC, id)`,
]

/**
 * The numbered migrations of the `saga` capability, in both dialects. Run them with
 * `runMigrations(db, 'saga', sagaMigrations)` (or `migrateSagas(db)`).
 */
export const sagaMigrations: readonly Migration[] = [
  {
    version: 1,
    name: 'create-sagas',
    sqlite: [
      `CREATE TABLE ${sagaTable} ${instanceColumns('INTEGER', 'INTEGER')}`,
      `CREATE TABLE ${sagaEventsTable} (
  seq INTEGER PRIMARY KEY,
  saga_id TEXT NOT NULL,
  at INTEGER NOT NULL,
  kind TEXT NOT NULL,
  step TEXT,
  attempt INTEGER,
  worker TEXT,
  detail TEXT
)`,
      `CREATE TABLE ${sagaRepliesTable} (
  saga_id TEXT NOT NULL,
  step TEXT NOT NULL,
  reply TEXT NOT NULL,
  received_at INTEGER NOT NULL,
  PRIMARY KEY (saga_id, step)
)`,
      `CREATE TABLE ${flowEventsTable} (
  seq INTEGER PRIMARY KEY,
  correlation_id TEXT NOT NULL,
  event_id TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL,
  source TEXT,
  at INTEGER NOT NULL,
  payload TEXT
)`,
      ...indexes,
    ],
    postgres: [
      `CREATE TABLE ${sagaTable} ${instanceColumns('BIGINT', 'SMALLINT')}`,
      `CREATE TABLE ${sagaEventsTable} (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  saga_id TEXT NOT NULL,
  at BIGINT NOT NULL,
  kind TEXT NOT NULL,
  step TEXT,
  attempt INTEGER,
  worker TEXT,
  detail TEXT
)`,
      `CREATE TABLE ${sagaRepliesTable} (
  saga_id TEXT NOT NULL,
  step TEXT NOT NULL,
  reply TEXT NOT NULL,
  received_at BIGINT NOT NULL,
  PRIMARY KEY (saga_id, step)
)`,
      `CREATE TABLE ${flowEventsTable} (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  correlation_id TEXT NOT NULL,
  event_id TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL,
  source TEXT,
  at BIGINT NOT NULL,
  payload TEXT
)`,
      ...indexes,
    ],
  },
  {
    // listSagas by name, newest first (SagaListStatements). Not CONCURRENTLY, which cannot run
    // in the migration's transaction: on PostgreSQL writes to the saga table wait while it is
    // built.
    version: 2,
    name: 'list-by-name',
    sqlite: listByName,
    postgres: listByName,
  },
]

/** The statements of the saga capability, for one dialect. */
export interface SagaStatements {
  /**
   * $1 id, $2 name, $3 version, $4 definition key, $5 input JSON, $6 steps JSON, $7 next run,
   * $8 lease owner, $9 lease end, $10 lease token, $11 attempt, $12 now. Returns the id when
   * inserted (nothing when the id exists).
   */
  readonly insert: string
  /** As `insert`, plus $13 the NOTIFY channel (PostgreSQL; SQLite has no NOTIFY). */
  readonly insertNotify: string
  /**
   * $1 owner, $2 lease end, $3 now, $4 definition keys (array / JSON array), $5 limit, $6 when
   * the claim was asked for, $7 the ids the claiming worker has in hand (array / JSON array),
   * which it never takes.
   */
  readonly claim: string
  /**
   * $1 cutoff, $2 definition keys (array / JSON array). Per (name, version) not among the keys,
   * how many instances (`n`) have been due and unleased since the cutoff: ones no worker runs.
   */
  readonly missingDefinitions: string
  /**
   * $1 id, $2 lease token, $3 status, $4 context, $5 steps, $6 step index, $7 attempt, $8 next
   * run, $9 lease owner, $10 lease end, $11 reason, $12 now, $13 finished at; PostgreSQL also
   * $14 the timeline rows (JSON array). Returns `cancel_requested` when the token still held.
   */
  readonly transition: string
  /**
   * PostgreSQL only: many fenced transitions in one statement (group commit). $1 is a JSON
   * array of `{id, token, status, context, steps, step_index, attempt, next_run_at,
   * lease_owner, lease_expires_at, reason, now, finished_at, events}`; returns `id`,
   * `lease_token` and `cancel_requested` of each row whose token still held (one instance may
   * come twice, a stale and a fresh run's write: the token says which one was written).
   */
  readonly transitionBatch: string
  /** PostgreSQL only: many inserts in one statement; $1 a JSON array; returns inserted ids. */
  readonly insertBatch: string
  /** $1 saga id, $2 at, $3 kind, $4 step, $5 attempt, $6 worker, $7 detail JSON. */
  readonly insertEvent: string
  /**
   * $1 lease end (a later one stored is kept: a hold), $2 owner, $3 the ids in hand (array /
   * JSON array). Returns id and lease_token
   * of each of them still held; PostgreSQL also returns `renewed` (0 for a held row passed over
   * because another transaction has it locked).
   */
  readonly renew: string
  /** $1 id, $2 lease token, $3 lease end. */
  readonly renewOne: string
  /**
   * $1 id, $2 lease token. A row when the token still holds: checked before a transition's
   * commit work runs (its fenced write comes after the work; see writeTransition).
   */
  readonly leaseHeld: string
  /** $1 id. */
  readonly selectOne: string
  /**
   * $1 id: the instance's `name`, `version` and `status`, read when a start found the id taken,
   * to tell a repeated start of the same saga from an id another saga's instance holds.
   */
  readonly selectDefinition: string
  /**
   * No parameters, no rows: the read a worker's `start()` makes, so that a closed database or
   * one without the saga tables rejects it instead of failing every poll after it resolved.
   */
  readonly probe: string
  /**
   * $1 id: the row as `selectOne` reads it, on PostgreSQL locked until the transaction ends
   * (FOR NO KEY UPDATE, the lock a worker's write takes: a write under way is waited for, and
   * its outcome read). On SQLite a plain read: a write transaction excludes every other writer.
   */
  readonly lockOne: string
  /** $1 saga id. */
  readonly selectEvents: string
  /** `listSagas`'s statements, one per filter (see {@link SagaListStatements}). */
  readonly list: SagaListStatements
  /**
   * $1 id, $2 now, $3 the reason to compensate for (null: keep the stored one). Re-queues a
   * parked (failed) saga.
   */
  readonly retry: string
  /** $1 saga id: the seq and detail (JSON, with its `reason`) of its latest `compensating` event. */
  readonly compensationReason: string
  /** $1 id, $2 now. Flags a running saga for cancellation and wakes it. */
  readonly cancel: string
  /** $1 saga id: the seq and detail (JSON, with the operator's `reason`) of its latest cancel request. */
  readonly cancelRequest: string
  /**
   * $1 id. The instance's `cancel_requested`, read on SQLite by a run before it starts its next
   * step (see InstanceRun's #seeCancel); no row when the instance is gone.
   */
  readonly cancelFlag: string
  /**
   * $1 saga id, $2 step, $3 reply JSON, $4 now. Inserts nothing when the instance is gone (or
   * the step's reply was recorded already): a reply never outlives its instance, even when
   * `pruneSagas` removes the instance at the same moment.
   */
  readonly insertReply: string
  /** $1 saga id, $2 step. */
  readonly selectReply: string
  /** $1 saga id, $2 step: forgets a reply that was refused, so a resend waits for a new one. */
  readonly deleteReply: string
  /**
   * $1 id, $2 now, $3 the replied step's index. Wakes a running saga so that a worker reads its
   * reply, when that step is the current one; returns `woken` (1 when it did) for a running one.
   */
  readonly wake: string
  /** $1 correlation id, $2 event id, $3 type, $4 source, $5 at, $6 payload JSON. */
  readonly insertFlowEvent: string
  /** $1 correlation id. */
  readonly selectFlowEvents: string
  /**
   * $1 since (at), $2 limit, $3 and $4 the (last at, correlation id) of the page before, or
   * null for the first page: correlation ids with events since then, most recent first, after
   * that cursor.
   */
  readonly recentCorrelations: string
}

// A cancel requested while a step ran wakes the saga at once (cancelSaga), but the step's own
// write came after it: a retry delay or a timer it persists would put the cancel off that long.
// While the saga is still running with a cancel requested, it is due now instead. (The casts
// give PostgreSQL the parameters' type, which a comparison of two parameters does not.)
const cancelDue = (status: string, nextRunAt: string, now: string) => {
  const [next, at] = [`CAST(${nextRunAt} AS BIGINT)`, `CAST(${now} AS BIGINT)`]
  return `CASE WHEN cancel_requested = 1 AND ${status} = 'running' AND ${next} > ${at}
    THEN ${at} ELSE ${next} END`
}

const transitionSet = `status = $3, context = $4, steps = $5, step_index = $6, attempt = $7,
    next_run_at = ${cancelDue('$3', '$8', '$12')}, lease_owner = $9, lease_expires_at = $10, reason = $11, updated_at = $12,
    finished_at = $13`

const insertColumns = `(id, name, version, definition, status, input, context, steps, step_index,
  attempt, next_run_at, lease_owner, lease_expires_at, lease_token, created_at, updated_at)
VALUES ($1, $2, $3, $4, 'running', $5, '{}', $6, 0, $11, $7, $8, $9, $10, $12, $12)
ON CONFLICT (id) DO NOTHING`

// Every column of an instance row (SagaRow), named: a statement prepared on PostgreSQL with
// `*` fails with "cached plan must not change result type" once a migration adds a column
// while workers run (a rolling upgrade), and a named list also keeps such a column out of rows.
const rowColumns = `id, name, version, definition, status, input, context, steps, step_index, attempt,
  next_run_at, lease_owner, lease_expires_at, lease_token, previous_owner, previous_expires_at,
  cancel_requested, reason, created_at, updated_at, finished_at`

// The claim adds one to `lease_token` and `attempt`, but not to one at its column's maximum
// (changed outside breakwater: no claim gets there). On PostgreSQL `+ 1` failed there with
// "bigint out of range" ("integer out of range" for attempt), which failed the whole claim, so
// one such row stopped every other instance from being claimed, at every poll, without naming
// it. On SQLite it turned the row's integer into a real (9.223372036854776e18). Claimed as it is,
// such a row is reported by the worker, naming the saga and the column, and the instances
// claimed with it run: a token there (past 2^53, read rounded) is not run (see
// claimedLeaseToken), nor is an attempt past 2^53 (SQLite); PostgreSQL's INTEGER maximum is a
// count like any other (the step's attempts are spent). A token left at the maximum fences
// nothing: no run holds a token past 2^53, so nothing writes with it. We chose this over leaving
// such rows out of the claim, which would have hidden them. `=`, not `<`: SQLite text is above
// every number, and `+ 1` still turns it into 1, as before.
const bumped = (column: string, max: string) =>
  `CASE WHEN ${column} = ${max} THEN ${column} ELSE ${column} + 1 END`
const maxBigint = '9223372036854775807'
const claimSet = (dialect: SqlDialect) => `lease_owner = $1, lease_expires_at = $2,
    lease_token = ${bumped('lease_token', maxBigint)}, previous_owner = lease_owner,
    previous_expires_at = lease_expires_at,
    attempt = ${bumped('attempt', dialect === 'postgres' ? '2147483647' : maxBigint)}, updated_at = $3`

// On SQLite, a time that is not a number (text or a blob set by hand: SQLite keeps it as it is
// in its INTEGER column, and it sorts above every number) counts as due, or as run out for a
// lease end. Otherwise such an instance was never claimed again, and nothing said so (the
// missing-definition check skipped it too). Its next write, fenced by the token the claim bumps,
// stores a number. PostgreSQL's BIGINT holds only numbers (a negative one is due or run out).
// `>= ''` holds for text and blobs only, and is a range of the runnable index (an OR with the
// due range, or typeof(), made the claim scan every waiting instance at each poll).
const notNumberRange = `>= ''`
const leaseRanOut = (dialect: SqlDialect, now: string): string =>
  dialect === 'sqlite'
    ? `(lease_expires_at IS NULL OR lease_expires_at <= ${now} OR lease_expires_at ${notNumberRange})`
    : `(lease_expires_at IS NULL OR lease_expires_at <= ${now})`

// Due as of when the claim runs ($3), but a lease counts as run out only as of when the claim
// was asked for ($6), before it waited for the writer or a connection: see claimInstances.
// (`due` is the condition on next_run_at: SQLite picks its rows due now and not a number apart.)
// Never one the claiming worker is running ($7): its lease may have run out only because the
// renewal fell behind (a loaded host), and taken back it started the step a second time in the
// same process while the first attempt still ran, whose write was then refused (lease lost).
// Left alone, the next renewal extends the lease, as the worker still owns it.
const runnable = (dialect: SqlDialect, due = 'next_run_at <= $3') =>
  `status IN ('running', 'compensating') AND ${due} AND ${leaseRanOut(dialect, '$6')}
    AND ${dialect === 'sqlite' ? 'id NOT IN (SELECT value FROM json_each($7))' : 'id <> ALL($7::text[])'}`

// A plain read, no lock: it only counts, and an instance claimed meanwhile by a worker that has
// its definition is simply not counted next time. Due since the cutoff (not just now) and not
// leased since then, so an instance another worker is about to poll for is not reported.
function missingDefinitions(dialect: SqlDialect, notRegistered: string): string {
  const where = (due: string) => `status IN ('running', 'compensating') AND ${due}
  AND ${leaseRanOut(dialect, '$1')} AND ${notRegistered}`
  const from =
    dialect === 'sqlite'
      ? `(SELECT name, version FROM ${sagaTable} WHERE ${where('next_run_at <= $1')}
  UNION ALL
  SELECT name, version FROM ${sagaTable} WHERE ${where(`next_run_at ${notNumberRange}`)})`
      : `${sagaTable} WHERE ${where('next_run_at <= $1')}`
  return `SELECT name, version, COUNT(*) AS n FROM ${from}
GROUP BY name, version ORDER BY name, version`
}

// A renewal ($1, the new lease end) never shortens a lease: a run that found a row it cannot
// read holds its instance a minute (holdUnreadable), and a renewal that took the instance in
// hand before that, then waited for the SQLite writer or a connection, ran after the hold and
// set it back to leaseMs, so the instance was claimed and reported again within a second.
// On SQLite a lease end that is not a number is replaced, not kept as longer: the claim takes
// it as run out (see leaseRanOut), so kept, the instance was taken from a live holder.
const neverShorter = (dialect: SqlDialect) =>
  dialect === 'sqlite'
    ? `CASE WHEN lease_expires_at > $1 AND NOT lease_expires_at ${notNumberRange}
    THEN lease_expires_at ELSE $1 END`
    : 'CASE WHEN lease_expires_at > $1 THEN lease_expires_at ELSE $1 END'

/**
 * `listSagas`'s statements, newest first (`created_at DESC, id`), one per filter, each reading
 * about as many instances as it lists: by status, the `(status, created_at)` index backwards;
 * by name, the `name` index (migration 2); unfiltered, the newest `limit` of each status
 * through the status index, the few read then sorted together (no index on `created_at` alone:
 * PostgreSQL could then read the prune's and other status ranges through it, filtering the
 * status, which for a rare status reads the whole table). One statement for every filter
 * (`$1 IS NULL OR status = $1`) was planned once for all of them (prepared on PostgreSQL,
 * compiled on SQLite), and no index gave the order without a status: it read and sorted the
 * whole table, 0.95 s on PostgreSQL and 2.1 s on SQLite at a million instances for 20 lines.
 */
export interface SagaListStatements {
  /** $1 limit. */
  readonly all: string
  /** $1 status, $2 limit. */
  readonly status: string
  /** $1 name, $2 limit. */
  readonly name: string
  /** $1 status, $2 name, $3 limit. */
  readonly statusAndName: string
}

// Every status an instance can have (the CHECK constraint of migration 1).
const everyStatus = ['running', 'compensating', 'completed', 'compensated', 'failed', 'cancelled']

const listColumns = `id, name, version, definition, status, step_index, attempt, next_run_at, lease_owner,
  lease_expires_at, reason, created_at, updated_at, finished_at, steps`
const newestFirst = (limit: string) => `ORDER BY created_at DESC, id LIMIT ${limit}`
const listed = (where: string, limit: string) =>
  `SELECT ${listColumns} FROM ${sagaTable} WHERE ${where}\n${newestFirst(limit)}`
const listedAll = `SELECT ${listColumns} FROM (
  ${everyStatus
    .map((status, i) => `SELECT * FROM (${listed(`status = '${status}'`, '$1')}) AS s${i}`)
    .join('\n  UNION ALL ')}
) AS newest
${newestFirst('$1')}`

const common = {
  insertEvent: `INSERT INTO ${sagaEventsTable} (saga_id, at, kind, step, attempt, worker, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7)`,
  // A plain read, no lock: the transition after the work is fenced again (and locks the row).
  leaseHeld: `SELECT 1 AS held FROM ${sagaTable} WHERE id = $1 AND lease_token = $2`,
  renewOne: `UPDATE ${sagaTable} SET lease_expires_at = $3 WHERE id = $1 AND lease_token = $2`,
  selectOne: `SELECT ${rowColumns} FROM ${sagaTable} WHERE id = $1`,
  selectDefinition: `SELECT name, version, status FROM ${sagaTable} WHERE id = $1`,
  probe: `SELECT 1 AS reachable FROM ${sagaTable} WHERE 1 = 0`,
  selectEvents: `SELECT seq, at, kind, step, attempt, worker, detail FROM ${sagaEventsTable}
WHERE saga_id = $1 ORDER BY seq`,
  // The token as the claim bumps it (see `bumped`): `+ 1` at the BIGINT maximum failed the
  // retry on PostgreSQL naming neither saga nor column, and made a real of it on SQLite.
  retry: `UPDATE ${sagaTable} SET status = 'compensating', attempt = 0, next_run_at = $2,
    lease_owner = NULL, lease_expires_at = NULL, lease_token = ${bumped('lease_token', maxBigint)}, updated_at = $2,
    reason = COALESCE($3, reason)
WHERE id = $1 AND status = 'failed'`,
  compensationReason: `SELECT seq, detail FROM ${sagaEventsTable}
WHERE saga_id = $1 AND kind = 'compensating' ORDER BY seq DESC LIMIT 1`,
  cancel: `UPDATE ${sagaTable} SET cancel_requested = 1, updated_at = $2,
    next_run_at = CASE WHEN next_run_at > $2 THEN $2 ELSE next_run_at END
WHERE id = $1 AND status = 'running' AND cancel_requested <> 1`,
  cancelFlag: `SELECT cancel_requested FROM ${sagaTable} WHERE id = $1`,
  cancelRequest: `SELECT seq, detail FROM ${sagaEventsTable}
WHERE saga_id = $1 AND kind = 'cancel-requested' ORDER BY seq DESC LIMIT 1`,

  selectReply: `SELECT reply FROM ${sagaRepliesTable} WHERE saga_id = $1 AND step = $2`,
  deleteReply: `DELETE FROM ${sagaRepliesTable} WHERE saga_id = $1 AND step = $2`,
  // Every running instance matches, due already or not: on PostgreSQL the row lock this takes
  // until the reply's transaction ends makes a worker's concurrent suspend write wait for the
  // reply to commit, so the worker's re-read after that write sees it (see InstanceRun). Only
  // a reply for the current step ($3) makes it due: one for another step must not cut the
  // current step's timer short. Returns a row when it was made due (then NOTIFY).
  wake: `UPDATE ${sagaTable} SET next_run_at = CASE WHEN step_index = $3 AND next_run_at > $2 THEN $2 ELSE next_run_at END
WHERE id = $1 AND status = 'running'
RETURNING CASE WHEN step_index = $3 THEN 1 ELSE 0 END AS woken`,
  insertFlowEvent: `INSERT INTO ${flowEventsTable} (correlation_id, event_id, type, source, at, payload)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING`,
  selectFlowEvents: `SELECT seq, event_id, type, source, at, payload FROM ${flowEventsTable}
WHERE correlation_id = $1 ORDER BY at, seq`,
  // The first page has no cursor ($3 null), not one of the largest number: on SQLite an `at`
  // set by hand to text or a blob sorts above every number, so `MAX(at) < $3` left its flow out
  // of every page, without a word. Now MAX(at) is that value and its flow comes first, and
  // stalled() fails naming the event at once (later pages' cursors are numbers: it never gets
  // past such a flow). The cast gives PostgreSQL the parameter's type.
  recentCorrelations: `SELECT correlation_id, MAX(at) AS last_at FROM ${flowEventsTable}
WHERE at >= $1 GROUP BY correlation_id
HAVING CAST($3 AS BIGINT) IS NULL OR MAX(at) < $3 OR (MAX(at) = $3 AND correlation_id > $4)
ORDER BY MAX(at) DESC, correlation_id LIMIT $2`,
  list: {
    all: listedAll,
    status: listed('status = $1', '$2'),
    name: listed('name = $1', '$2'),
    statusAndName: listed('status = $1 AND name = $2', '$3'),
  },
}

/** The statements per dialect. */
export const sagaStatements: Readonly<Record<SqlDialect, SagaStatements>> = {
  sqlite: {
    ...common,
    // One statement, and SQLite has one writer: the instance cannot go between the check and
    // the insert.
    insertReply: `INSERT INTO ${sagaRepliesTable} (saga_id, step, reply, received_at)
SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM ${sagaTable} WHERE id = $1)
ON CONFLICT (saga_id, step) DO NOTHING`,
    lockOne: `SELECT ${rowColumns} FROM ${sagaTable} WHERE id = $1`,
    insert: `INSERT INTO ${sagaTable} ${insertColumns} RETURNING id`,
    insertNotify: `INSERT INTO ${sagaTable} ${insertColumns} RETURNING id`,
    // SQLite has one writer at a time, so a single UPDATE ... RETURNING both picks and takes
    // the rows: no other claim can interleave between the subquery and the update.
    // The due rows, then those whose next_run_at is not a number, each by a range of the
    // runnable index (see leaseRanOut): at most twice the limit is sorted.
    claim: `UPDATE ${sagaTable} SET ${claimSet('sqlite')}
WHERE id IN (
  SELECT id FROM (
    SELECT * FROM (SELECT id, next_run_at FROM ${sagaTable}
      WHERE ${runnable('sqlite')} AND definition IN (SELECT value FROM json_each($4))
      ORDER BY next_run_at LIMIT $5)
    UNION ALL
    SELECT * FROM (SELECT id, next_run_at FROM ${sagaTable}
      WHERE ${runnable('sqlite', `next_run_at ${notNumberRange}`)}
        AND definition IN (SELECT value FROM json_each($4))
      LIMIT $5))
  ORDER BY next_run_at
  LIMIT $5
)
RETURNING ${rowColumns}`,
    missingDefinitions: missingDefinitions(
      'sqlite',
      'definition NOT IN (SELECT value FROM json_each($2))',
    ),
    transition: `UPDATE ${sagaTable} SET ${transitionSet}
WHERE id = $1 AND lease_token = $2
RETURNING cancel_requested`,
    // SQLite batches by running the single statements inside one transaction.
    transitionBatch: '',
    insertBatch: '',
    // Only the instances the worker runs: one it gave up (a failed write) keeps its owner
    // until its lease ends, and renewing it too would keep it from every other worker.
    renew: `UPDATE ${sagaTable} SET lease_expires_at = ${neverShorter('sqlite')}
WHERE lease_owner = $2 AND status IN ('running', 'compensating')
  AND id IN (SELECT value FROM json_each($3))
RETURNING id, lease_token`,
  },
  postgres: {
    ...common,
    // FOR KEY SHARE holds the instance until this transaction ends: pruneSagas (FOR UPDATE
    // SKIP LOCKED) passes over it meanwhile, and an instance deleted just before is seen as
    // gone (READ COMMITTED re-check), so nothing is inserted for it.
    insertReply: `INSERT INTO ${sagaRepliesTable} (saga_id, step, reply, received_at)
SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM ${sagaTable} WHERE id = $1 FOR KEY SHARE)
ON CONFLICT (saga_id, step) DO NOTHING`,
    lockOne: `SELECT ${rowColumns} FROM ${sagaTable} WHERE id = $1 FOR NO KEY UPDATE`,
    insert: `INSERT INTO ${sagaTable} ${insertColumns} RETURNING id`,
    insertNotify: `WITH inserted AS (
  INSERT INTO ${sagaTable} ${insertColumns} RETURNING id
)
SELECT id, pg_notify($13, '') FROM inserted`,
    // FOR NO KEY UPDATE SKIP LOCKED: concurrent workers each lock different rows instead of
    // queueing on the same ones; a row another worker is claiming right now is simply not ours
    // this round. A row changed and committed by someone else before we lock it is re-evaluated
    // against the subquery's WHERE (READ COMMITTED re-check), so an instance claimed or
    // finished meanwhile drops out instead of being claimed twice. NO KEY (the claim changes no
    // key, and it is the lock the UPDATE takes anyway): FOR UPDATE also conflicts with the FOR
    // KEY SHARE a reply insert holds (insertReply), so a duplicate reply's open transaction kept
    // the saga its first reply woke from being claimed until the next poll. pruneSagas's FOR
    // UPDATE still excludes a claim, and a claim it.
    claim: `UPDATE ${sagaTable} SET ${claimSet('postgres')}
WHERE id IN (
  SELECT id FROM ${sagaTable}
  WHERE ${runnable('postgres')}
    AND definition = ANY($4::text[])
  ORDER BY next_run_at
  LIMIT $5
  FOR NO KEY UPDATE SKIP LOCKED
)
RETURNING ${rowColumns}`,
    missingDefinitions: missingDefinitions('postgres', 'definition <> ALL($2::text[])'),
    // One statement writes the fenced state and its timeline rows: one round trip and one
    // commit per step, and the timeline rows exist exactly when the state write happened.
    transition: `WITH updated AS (
  UPDATE ${sagaTable} SET ${transitionSet}
  WHERE id = $1 AND lease_token = $2
  RETURNING id, cancel_requested
), timeline AS (
  INSERT INTO ${sagaEventsTable} (saga_id, at, kind, step, attempt, worker, detail)
  SELECT updated.id, e.at, e.kind, e.step, e.attempt, e.worker, e.detail
  FROM updated, jsonb_to_recordset($14::jsonb)
    AS e(at BIGINT, kind TEXT, step TEXT, attempt INTEGER, worker TEXT, detail TEXT)
)
SELECT cancel_requested FROM updated`,
    // Group commit: the transitions of every instance a worker runs, written by one statement
    // and one commit. Each row is still fenced by its own token.
    transitionBatch: `WITH input AS (
  SELECT id, token, status, context, steps, step_index, attempt, next_run_at, lease_owner,
    lease_expires_at, reason, now, finished_at, events
  FROM jsonb_to_recordset($1::jsonb) AS i(id TEXT, token BIGINT, status TEXT,
    context TEXT, steps TEXT, step_index INTEGER, attempt INTEGER, next_run_at BIGINT,
    lease_owner TEXT, lease_expires_at BIGINT, reason TEXT, now BIGINT, finished_at BIGINT,
    events JSONB)
), updated AS (
  UPDATE ${sagaTable} AS s SET status = i.status, context = i.context, steps = i.steps,
    step_index = i.step_index, attempt = i.attempt,
    next_run_at = ${cancelDue('i.status', 'i.next_run_at', 'i.now')},
    lease_owner = i.lease_owner, lease_expires_at = i.lease_expires_at, reason = i.reason,
    updated_at = i.now, finished_at = i.finished_at
  FROM input AS i
  WHERE s.id = i.id AND s.lease_token = i.token
  RETURNING s.id, s.lease_token, s.cancel_requested
), timeline AS (
  INSERT INTO ${sagaEventsTable} (saga_id, at, kind, step, attempt, worker, detail)
  SELECT i.id, e.at, e.kind, e.step, e.attempt, e.worker, e.detail
  FROM input AS i JOIN updated AS u ON u.id = i.id AND u.lease_token = i.token,
    jsonb_to_recordset(i.events)
      AS e(n INTEGER, at BIGINT, kind TEXT, step TEXT, attempt INTEGER, worker TEXT, detail TEXT)
  ORDER BY e.n
)
SELECT id, lease_token, cancel_requested FROM updated`,
    insertBatch: `INSERT INTO ${sagaTable} (id, name, version, definition, status, input, context,
  steps, step_index, attempt, next_run_at, lease_owner, lease_expires_at, lease_token, created_at,
  updated_at)
SELECT i.id, i.name, i.version, i.definition, 'running', i.input, '{}', i.steps, 0, i.attempt,
  i.next_run_at, i.lease_owner, i.lease_expires_at, i.lease_token, i.now, i.now
FROM jsonb_to_recordset($1::jsonb) AS i(id TEXT, name TEXT, version INTEGER, definition TEXT,
  input TEXT, steps TEXT, attempt INTEGER, next_run_at BIGINT, lease_owner TEXT,
  lease_expires_at BIGINT, lease_token BIGINT, now BIGINT)
ON CONFLICT (id) DO NOTHING
RETURNING id`,
    // SKIP LOCKED: a row held locked (by this worker's own step transaction, a slow `send` or
    // `atCommit`, or a reply waking it) is passed over this round instead of making the
    // whole renewal wait for it while every other lease runs out. It comes back with
    // renewed = 0: held as of this statement, not renewed (the step's commit writes its lease
    // anyway: extended, or released). NO KEY UPDATE, as the claim: a reply insert's FOR KEY
    // SHARE (a duplicate's open transaction) does not conflict with it, so it does not cost a
    // renewal.
    renew: `WITH held AS (
  SELECT id, lease_token FROM ${sagaTable}
  WHERE lease_owner = $2 AND status IN ('running', 'compensating') AND id = ANY($3::text[])
), free AS (
  SELECT id FROM ${sagaTable}
  WHERE id IN (SELECT id FROM held) AND lease_owner = $2 AND status IN ('running', 'compensating')
  FOR NO KEY UPDATE SKIP LOCKED
), renewed AS (
  UPDATE ${sagaTable} AS s SET lease_expires_at = ${neverShorter('postgres')} FROM free WHERE s.id = free.id
  RETURNING s.id, s.lease_token
)
SELECT id, lease_token, 1 AS renewed FROM renewed
UNION ALL
SELECT id, lease_token, 0 AS renewed FROM held WHERE id NOT IN (SELECT id FROM renewed)`,
  },
}

/**
 * Retention of finished instances (`pruneSagas`). An instance's age counts from its end
 * (`finished_at`), or for a parked one from its last change (`updated_at`, since parking does not
 * finish it). Candidates come from the `(status, created_at)` index: an instance ended after
 * it was created, so every one old enough has `created_at <= cutoff` too. On SQLite, an end or
 * a `created_at` that is not a number (a row changed outside breakwater) counts as old enough.
 *
 * The index is read one status at a time, oldest first in each: it is in `created_at` order
 * within a status only, so `status IN (...) ORDER BY created_at` read and sorted every instance
 * old enough, in every batch (a sequential scan and a 38 MB external sort per 1,000-row batch
 * at a million finished instances on PostgreSQL, the cost of a batch growing with the backlog).
 * A batch takes the oldest of the first status, then of the next while it is short of its
 * size: which status goes first does not matter, all of them are removed.
 */
export interface SagaPruneStatements {
  /**
   * PostgreSQL: one statement removes a batch of instances with their timeline and replies
   * ($1 statuses array, $2 cutoff, $3 limit), returning `removed`. SQLite: selects ids of one
   * status ($1 that status, $2 cutoff, $3 limit); a batch runs it per status.
   */
  readonly pick: string
  /** SQLite only: $1 ids JSON. */
  readonly deleteEvents?: string
  /** SQLite only: $1 ids JSON. */
  readonly deleteReplies?: string
  /** SQLite only: $1 ids JSON, $2 statuses JSON, $3 cutoff (the conditions checked again). */
  readonly deleteInstances?: string
}

const endedBefore = 'COALESCE(finished_at, updated_at) <= $2'

// SQLite keeps text or a blob set by hand as it is in an INTEGER column, and it sorts above
// every number, so `<= cutoff` never held and such a finished instance was kept for ever. An
// end that is not a number counts as old enough (its age cannot be told, and the instance never
// runs again); one whose creation is not a number is found by a second range of the
// (status, created_at) index, as text and blobs sort above '' and numbers below it. Two ranges
// joined by UNION ALL, not one OR, which would lose the time range's upper bound.
const sqliteEnded = (cutoff: string): string =>
  `(COALESCE(finished_at, updated_at) <= ${cutoff} OR COALESCE(finished_at, updated_at) >= '')`
const sqlitePruneRange = (created: string): string => `SELECT id FROM (SELECT id FROM ${sagaTable}
    WHERE status = $1 AND ${created} AND ${sqliteEnded('$2')}
    ORDER BY created_at LIMIT $3)`

/** The retention statements, per dialect. */
export const sagaPruneStatements: Readonly<Record<SqlDialect, SagaPruneStatements>> = {
  // SQLite: run in one transaction, which holds the only write lock from the pick to the last
  // delete, so nothing changes an instance between its pick and its removal.
  sqlite: {
    pick: `${sqlitePruneRange('created_at <= $2')}
  UNION ALL ${sqlitePruneRange(`created_at >= ''`)}
  LIMIT $3`,
    deleteEvents: `DELETE FROM ${sagaEventsTable} WHERE saga_id IN (SELECT value FROM json_each($1))`,
    deleteReplies: `DELETE FROM ${sagaRepliesTable} WHERE saga_id IN (SELECT value FROM json_each($1))`,
    deleteInstances: `DELETE FROM ${sagaTable}
WHERE id IN (SELECT value FROM json_each($1))
  AND status IN (SELECT value FROM json_each($2)) AND ${sqliteEnded('$3')}`,
  },
  // PostgreSQL: SKIP LOCKED passes over an instance an operator is changing right now (a retry
  // of a parked saga), and the outer condition is checked again on the row as it is when
  // deleted (READ COMMITTED re-check), so a retried instance is never removed. The timeline
  // and replies go in the same statement, so none is left without its instance. One index
  // range per status (LATERAL), each locked as it is read; the outer LIMIT stops reading, and
  // locking, once the batch is full, so a status after that is not even looked at. The ids
  // come as an array (`= ANY(ARRAY(...))`), which the delete looks up by primary key: with
  // `IN (...)` the planner may join them to a scan of the whole table instead.
  postgres: {
    pick: `WITH doomed AS (
  DELETE FROM ${sagaTable}
  WHERE id = ANY(ARRAY(
    SELECT picked.id FROM unnest($1::text[]) AS wanted(status)
    CROSS JOIN LATERAL (
      SELECT id FROM ${sagaTable}
      WHERE status = wanted.status AND created_at <= $2 AND ${endedBefore}
      ORDER BY created_at LIMIT $3
      FOR UPDATE SKIP LOCKED
    ) AS picked
    LIMIT $3
  )) AND status = ANY($1::text[]) AND ${endedBefore}
  RETURNING id
), events AS (
  DELETE FROM ${sagaEventsTable} WHERE saga_id IN (SELECT id FROM doomed)
), replies AS (
  DELETE FROM ${sagaRepliesTable} WHERE saga_id IN (SELECT id FROM doomed)
)
SELECT count(*)::integer AS removed FROM doomed`,
  },
}

/**
 * Retention of the flow tracker's events (`pruneFlowEvents`): a flow goes whole, once its last
 * event is old enough, so no flow is ever left without its start.
 */
export interface FlowPruneStatements {
  /**
   * $1 cutoff, $2 and $3 the cursor (at, seq) of the last row scanned, $4 limit: old events in
   * (at, seq) order after the cursor, through the `at` index. On SQLite, events whose `at` is
   * not a number (text or a blob) count as old, after every number.
   */
  readonly scan: string
  /**
   * $1 correlation ids (PostgreSQL array, SQLite JSON), $2 cutoff: deletes every event of those
   * flows that have no event after the cutoff (on SQLite, an `at` that is not a number is not
   * after it); returns each deleted row's `correlation_id`.
   */
  readonly delete: string
}

// `at >= $2` gives the `at` index a lower bound (PostgreSQL cannot use the row comparison on
// that one-column index); the row comparison then skips the rows of the cursor's millisecond
// already seen. Without the bound, each batch re-read every old event the scans before it had
// passed over, and the cost grew with the square of the backlog.
const flowRange = (
  bounds: string,
): string => `SELECT seq, at, correlation_id FROM ${flowEventsTable}
WHERE ${bounds} AND (at, seq) > ($2, $3)
ORDER BY at, seq LIMIT $4`
const flowScan = flowRange('at <= $1 AND at >= $2')

// SQLite keeps text or a blob set by hand as it is in the INTEGER `at`, and it sorts above every
// number: `at <= cutoff` never found such an event, and `at > cutoff` took it as newer than the
// window, so its flow (and every flow holding one) was kept for ever. Such an event counts as
// old enough (its age cannot be told): a second range of the `at` index finds it, text and
// blobs sorting from '' up, after the numbers. Its lower bound is the larger of '' and the
// cursor (which is text or a blob once the scan has reached them: MAX orders mixed types as
// comparisons do). Two ranges joined by UNION ALL, not one OR, which would lose the time
// range's upper bound; each range reads at most the limit through the index, so the merge
// sorts at most twice the limit. The delete's "newer event" is a number above the cutoff
// (`< ''`).
const sqliteFlowScan = `SELECT seq, at, correlation_id FROM (${flowScan})
UNION ALL SELECT seq, at, correlation_id FROM (${flowRange(`at >= MAX($2, '')`)})
ORDER BY at, seq LIMIT $4`

/** The flow retention statements, per dialect. */
export const flowPruneStatements: Readonly<Record<SqlDialect, FlowPruneStatements>> = {
  sqlite: {
    scan: sqliteFlowScan,
    delete: `DELETE FROM ${flowEventsTable}
WHERE correlation_id IN (SELECT value FROM json_each($1))
  AND correlation_id NOT IN (
    SELECT correlation_id FROM ${flowEventsTable}
    WHERE correlation_id IN (SELECT value FROM json_each($1)) AND at > $2 AND at < ''
  )
RETURNING correlation_id`,
  },
  postgres: {
    scan: flowScan,
    delete: `DELETE FROM ${flowEventsTable}
WHERE correlation_id = ANY($1::text[])
  AND correlation_id NOT IN (
    SELECT correlation_id FROM ${flowEventsTable}
    WHERE correlation_id = ANY($1::text[]) AND at > $2
  )
RETURNING correlation_id`,
  },
}
