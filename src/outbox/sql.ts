import type { Migration, SqlDialect } from '../stores/index.js'
import { OUTBOX_PARTITIONS } from './partition.js'

// Every SQL statement of the outbox and inbox capabilities, per dialect, in one place. Both
// dialects use `$n` placeholders (the SQLite driver rewrites them). Timestamps are integer epoch
// milliseconds written from the application's clock, so tests can drive leases, retries and
// retention with a ManualClock; processes that share a database need NTP-synced clocks, and
// leases must be much longer than the expected skew.
//
// Lists of values are one parameter each: a PostgreSQL array (`= ANY($n::int[])`, `unnest`)
// or, on SQLite, a JSON array read with `json_each`, so every statement has one fixed text and
// is prepared once whatever the list's length.

/** The outbox table. */
export const outboxTable = 'breakwater_outbox'
/** The partition lease table. */
export const outboxPartitionsTable = 'breakwater_outbox_partitions'
/** Live relays (for the fair share of partitions). */
export const outboxRelaysTable = 'breakwater_outbox_relays'
/** Where retention moves published rows when archiving is on. */
export const outboxArchiveTable = 'breakwater_outbox_archive'
/** The inbox table. */
export const inboxTable = 'breakwater_inbox'

/** The LISTEN/NOTIFY channel enqueues notify on PostgreSQL (delivered at commit). */
export const OUTBOX_CHANNEL = 'breakwater_outbox'

const last = OUTBOX_PARTITIONS - 1

// The rows `h` that hold back the later rows of their aggregate: pending and dead, waiting for a
// retry, or parked. A parked row holds them back as the other two do: the read leaves it out, so
// a later row that nothing else held (the parked row's blocker was redriven, or published by a
// relay of the previous release, which does not unpark) would otherwise overtake it. The
// _blocking index holds exactly these rows, so the check stays one short index search.
const blocking = (h: string): string =>
  `${h}.published_at IS NULL AND (${h}.dead_at IS NOT NULL OR ${h}.retry_at IS NOT NULL OR ${h}.parked_behind IS NOT NULL)`

// The pending rows the read may take: not published, not dead, not parked (`o.` the row's
// alias, or '' in an index's WHERE).
const readable = (o: string): string =>
  `${o}published_at IS NULL AND ${o}dead_at IS NULL AND ${o}parked_behind IS NULL`

// Migration 5, the same on both databases (see readBatch). IF NOT EXISTS: on a large
// PostgreSQL table an operator may build them beforehand with CREATE INDEX CONCURRENTLY, which
// does not hold writes up (docs/outbox.md), and the migration then finds them.
const readIndexes = [
  `CREATE INDEX IF NOT EXISTS ${outboxTable}_ready ON ${outboxTable} (id) WHERE ${readable('')} AND retry_at IS NULL`,
  `CREATE INDEX IF NOT EXISTS ${outboxTable}_retry_due ON ${outboxTable} (retry_at, id) WHERE ${readable('')} AND retry_at IS NOT NULL`,
]

/**
 * The numbered migrations of the `outbox` capability. Run them with `migrateOutbox(db)` (or
 * the stores' `runMigrations(db, 'outbox', outboxMigrations)`).
 */
export const outboxMigrations: readonly Migration[] = [
  {
    version: 1,
    name: 'create-outbox',
    sqlite: [
      // AUTOINCREMENT: an id is never reused, even after retention deleted the newest row.
      `CREATE TABLE ${outboxTable} (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  event_id TEXT NOT NULL UNIQUE,
  aggregate_type TEXT NOT NULL,
  aggregate_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  topic TEXT NOT NULL,
  payload TEXT NOT NULL,
  headers TEXT NOT NULL,
  partition_no INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  published_at INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  retry_at INTEGER,
  dead_at INTEGER
)`,
      // The relay walks unpublished rows in id order; published rows (kept until retention)
      // never enter this index, so the walk does not slow down as they accumulate. Rows held
      // behind a dead or retrying event of their aggregate do stay in it: see readBatch.
      `CREATE INDEX ${outboxTable}_pending ON ${outboxTable} (id) WHERE published_at IS NULL AND dead_at IS NULL`,
      // Rows that hold back the rest of their aggregate: dead, or waiting for a retry. Usually
      // empty, so each probe of the "is an earlier event of this aggregate held?" check is one
      // short index search (the walk makes one per row it meets, see readBatch).
      `CREATE INDEX ${outboxTable}_held ON ${outboxTable} (aggregate_id, id) WHERE published_at IS NULL AND (dead_at IS NOT NULL OR retry_at IS NOT NULL)`,
      `CREATE INDEX ${outboxTable}_published ON ${outboxTable} (published_at) WHERE published_at IS NOT NULL`,
      `CREATE TABLE ${outboxPartitionsTable} (
  partition_no INTEGER PRIMARY KEY,
  owner TEXT,
  lease_expires_at INTEGER,
  token INTEGER NOT NULL DEFAULT 0
)`,
      `WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ${last})
INSERT INTO ${outboxPartitionsTable} (partition_no, token) SELECT i, 0 FROM n`,
      `CREATE TABLE ${outboxRelaysTable} (
  relay_id TEXT PRIMARY KEY,
  started_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
)`,
      `CREATE TABLE ${outboxArchiveTable} (
  id INTEGER PRIMARY KEY,
  event_id TEXT NOT NULL,
  aggregate_type TEXT NOT NULL,
  aggregate_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  topic TEXT NOT NULL,
  payload TEXT NOT NULL,
  headers TEXT NOT NULL,
  partition_no INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  published_at INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  last_error TEXT,
  archived_at INTEGER NOT NULL
)`,
    ],
    postgres: [
      // xid: the writing transaction's id, assigned at insert. The relay reads a row only once
      // every transaction that could still commit an earlier row has ended (see readBatch).
      `CREATE TABLE ${outboxTable} (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  event_id TEXT NOT NULL UNIQUE,
  aggregate_type TEXT NOT NULL,
  aggregate_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  topic TEXT NOT NULL,
  payload TEXT NOT NULL,
  headers TEXT NOT NULL,
  partition_no INTEGER NOT NULL,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  created_at BIGINT NOT NULL,
  published_at BIGINT,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  retry_at BIGINT,
  dead_at BIGINT
)`,
      `CREATE INDEX ${outboxTable}_pending ON ${outboxTable} (id) WHERE published_at IS NULL AND dead_at IS NULL`,
      `CREATE INDEX ${outboxTable}_held ON ${outboxTable} (aggregate_id, id) WHERE published_at IS NULL AND (dead_at IS NOT NULL OR retry_at IS NOT NULL)`,
      `CREATE INDEX ${outboxTable}_published ON ${outboxTable} (published_at) WHERE published_at IS NOT NULL`,
      `CREATE TABLE ${outboxPartitionsTable} (
  partition_no INTEGER PRIMARY KEY,
  owner TEXT,
  lease_expires_at BIGINT,
  token BIGINT NOT NULL DEFAULT 0
)`,
      `INSERT INTO ${outboxPartitionsTable} (partition_no, token) SELECT g, 0 FROM generate_series(0, ${last}) AS g`,
      `CREATE TABLE ${outboxRelaysTable} (
  relay_id TEXT PRIMARY KEY,
  started_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
)`,
      `CREATE TABLE ${outboxArchiveTable} (
  id BIGINT PRIMARY KEY,
  event_id TEXT NOT NULL,
  aggregate_type TEXT NOT NULL,
  aggregate_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  topic TEXT NOT NULL,
  payload TEXT NOT NULL,
  headers TEXT NOT NULL,
  partition_no INTEGER NOT NULL,
  created_at BIGINT NOT NULL,
  published_at BIGINT NOT NULL,
  attempts INTEGER NOT NULL,
  last_error TEXT,
  archived_at BIGINT NOT NULL
)`,
    ],
  },
  {
    // The instance token of the relay process holding each relay id, so two processes started
    // with the same relayId are told apart (see PartitionLeases).
    version: 2,
    name: 'relay-instance',
    sqlite: [`ALTER TABLE ${outboxRelaysTable} ADD COLUMN instance TEXT NOT NULL DEFAULT ''`],
    postgres: [`ALTER TABLE ${outboxRelaysTable} ADD COLUMN instance TEXT NOT NULL DEFAULT ''`],
  },
  {
    // PostgreSQL's heldBack: the newest pending row of each partition, by writing transaction.
    // Without it the question scanned every pending row (a sequential scan) after each read that
    // found nothing. Only an index: a relay of the previous release ignores it.
    version: 3,
    name: 'pending-horizon-index',
    sqlite: [],
    postgres: [
      `CREATE INDEX ${outboxTable}_horizon ON ${outboxTable} (partition_no, xid) WHERE published_at IS NULL AND dead_at IS NULL`,
    ],
  },
  {
    // Parking (see readBatch and park): parked_behind is the id of the dead, retrying or parked
    // event a pending row waits behind, set by the relay that read it held back, cleared when that
    // event is published (markPublished) or by the relay's sweep (unparkStale). The read walks
    // the _unparked index, which leaves parked rows out, so the rows queued behind a dead event
    // are stepped over once, not at every read. _pending stays: the pending count and the lag
    // (which count parked rows too) read it, and so does a relay of the previous release during
    // a rolling upgrade (it ignores the column and checks every row as before). _parked finds
    // the rows to unpark by their blocker; _blocking serves the read's check (a parked row
    // holds back its aggregate's later rows, see blocking). All hold pending rows only, so they
    // are small on a table of published rows (each build still reads the table once). Adding a
    // nullable column rewrites nothing.
    version: 4,
    name: 'parked-events',
    sqlite: [
      `ALTER TABLE ${outboxTable} ADD COLUMN parked_behind INTEGER`,
      `CREATE INDEX ${outboxTable}_unparked ON ${outboxTable} (id) WHERE published_at IS NULL AND dead_at IS NULL AND parked_behind IS NULL`,
      `CREATE INDEX ${outboxTable}_parked ON ${outboxTable} (parked_behind) WHERE parked_behind IS NOT NULL`,
      `CREATE INDEX ${outboxTable}_blocking ON ${outboxTable} (aggregate_id, id) WHERE ${blocking(outboxTable)}`,
      // SQLite has no statement that updates two sets of rows: the unparking of rows behind an
      // event published is this trigger, in the same statement as the mark (one index probe per
      // row marked, nothing found when nothing is parked). A relay of the previous release
      // unparks through it too.
      `CREATE TRIGGER ${outboxTable}_unpark AFTER UPDATE OF published_at ON ${outboxTable}
FOR EACH ROW WHEN NEW.published_at IS NOT NULL
BEGIN
  UPDATE ${outboxTable} SET parked_behind = NULL WHERE parked_behind = NEW.id;
END`,
    ],
    postgres: [
      `ALTER TABLE ${outboxTable} ADD COLUMN parked_behind BIGINT`,
      `CREATE INDEX ${outboxTable}_unparked ON ${outboxTable} (id) WHERE published_at IS NULL AND dead_at IS NULL AND parked_behind IS NULL`,
      `CREATE INDEX ${outboxTable}_parked ON ${outboxTable} (parked_behind) WHERE parked_behind IS NOT NULL`,
      `CREATE INDEX ${outboxTable}_blocking ON ${outboxTable} (aggregate_id, id) WHERE ${blocking(outboxTable)}`,
    ],
  },
  {
    // The read's two indexes (see readBatch): _ready holds the pending unparked rows with no
    // retry time, in id order; _retry_due the pending unparked rows waiting for a retry, by
    // their retry time. The read takes the first n of each (the due ones from a range of
    // _retry_due), so the rows still waiting are never looked at: _unparked holds them, and a
    // read walking it stepped over every one of them at every read. _unparked stays: a relay
    // of the previous release names it in its read on SQLite (INDEXED BY). Indexes only, built
    // in the migration's transaction like those of migrations 3 and 4 (each reads the table
    // once; on PostgreSQL writes wait meanwhile): a relay of the previous release ignores them,
    // and they hold pending rows only.
    version: 5,
    name: 'retry-due-index',
    sqlite: readIndexes,
    postgres: readIndexes,
  },
]

/**
 * The numbered migrations of the `inbox` capability. Run them with `migrateInbox(db)` in the
 * consumer's database.
 */
export const inboxMigrations: readonly Migration[] = [
  {
    version: 1,
    name: 'create-inbox',
    sqlite: [
      `CREATE TABLE ${inboxTable} (
  consumer TEXT NOT NULL,
  message_id TEXT NOT NULL,
  received_at INTEGER NOT NULL,
  PRIMARY KEY (consumer, message_id)
)`,
      `CREATE INDEX ${inboxTable}_received_at ON ${inboxTable} (received_at)`,
    ],
    postgres: [
      `CREATE TABLE ${inboxTable} (
  consumer TEXT NOT NULL,
  message_id TEXT NOT NULL,
  received_at BIGINT NOT NULL,
  PRIMARY KEY (consumer, message_id)
)`,
      `CREATE INDEX ${inboxTable}_received_at ON ${inboxTable} (received_at)`,
    ],
  },
]

/** The columns the relay reads. */
export interface OutboxRow {
  readonly id: number
  readonly event_id: string
  readonly aggregate_type: string
  readonly aggregate_id: string
  readonly event_type: string
  readonly topic: string
  readonly payload: string
  readonly headers: string
  readonly partition_no: number
  readonly created_at: number
  readonly attempts: number
  /**
   * Set when the read left the payload out for having more characters than the relay's
   * maxPayloadBytes (payload then null): the row is dead-lettered unread (see readBatch).
   */
  readonly payload_chars?: number | string | null
}

/**
 * A row as readBatch returns it: `held_behind` is the id of the latest earlier event of its
 * aggregate that is dead, waiting for a retry or parked (the row must not be published), or
 * null; `payload` is null when the read was asked to leave payloads out, or when the payload
 * has more characters than the read's limit: then `payload_chars` is that count, else null.
 */
export interface ReadRow extends Omit<OutboxRow, 'payload'> {
  readonly payload: string | null
  readonly payload_chars: number | string | null
  readonly held_behind: number | string | null
}

/** The statements of the outbox, for one dialect. */
export interface OutboxStatements {
  /** $1 event id, $2 aggregate type, $3 aggregate id, $4 event type, $5 topic, $6 payload, $7 headers, $8 partition, $9 created at. */
  readonly insertOne: string
  /** As insertOne, then $10 the channel to notify (PostgreSQL only; SQLite has no notify). */
  readonly insertOneNotify: string
  /** SQLite: $1 a JSON array of [event id, aggregate type, aggregate id, event type, topic, payload, headers, partition], $2 created at. PostgreSQL: $1..$8 arrays of those, $9 created at. */
  readonly insertMany: string
  /** As insertMany, then the channel ($3 on SQLite, unused; $10 on PostgreSQL). */
  readonly insertManyNotify: string
  /**
   * $1 owned partitions (list), $2 now, $3 limit, $4 aggregate ids to skip (list), $5 row ids
   * to skip (list: rows confirmed by the broker whose mark is still under way), $6 1 to return
   * the payloads, 0 to return each as null (read them with `payloads`), $7 the relay's
   * maxPayloadBytes: a payload of more characters is returned as null whatever $6, with its
   * count of characters as payload_chars (never read with `payloads`). Rows come as
   * {@link ReadRow}: those held back (held_behind not null) are to be parked, not published.
   */
  readonly readBatch: string
  /** $1 row ids (list). Returns id, payload of those that still exist. */
  readonly payloads: string
  /**
   * $1 row ids (list), $2 ids of events whose mark is under way (list), $3 relay id, $4 tokens
   * by partition (list). Parks the rows still held back, behind the latest dead, retrying or
   * parked earlier event of their aggregate, unless that event is in $2. Returns the ids parked.
   */
  readonly park: string
  /** $1 owned partitions (list). Unparks their rows parked behind an event no longer held. */
  readonly unparkStale: string
  /**
   * PostgreSQL only: $1 owned partitions (list). Whether a pending row of them is held back by
   * the transaction horizon (its writer is not older than every running transaction), so the
   * read that found nothing should be tried again soon.
   */
  readonly heldBack: string | undefined
  /**
   * $1 now, $2 ids (list), $3 relay id, $4 tokens by partition (list). Returns the ids marked.
   * Unparks the rows parked behind them in the same statement.
   */
  readonly markPublished: string
  /**
   * $1 id, $2 error text, $3 max attempts, $4 retry at, $5 now, $6 relay id, $7 tokens by
   * partition (list), $8 1 to dead-letter now leaving attempts as it is (the relay cannot read
   * it), else 0. Returns attempts, dead_at.
   */
  readonly charge: string
  /**
   * $1 relay id, $2 started at, $3 expires at, $4 instance token, $5 now. Returns a row only
   * if this instance holds the id (it was free, its own, or its holder's heartbeat expired).
   */
  readonly heartbeat: string
  /** $1 relay id. Returns instance, expires_at of the heartbeat holding it. */
  readonly holder: string
  /** $1 relay id. Bumps the fencing token of every partition recorded for the id. */
  readonly fence: string
  /** $1 now. Returns n. */
  readonly liveRelays: string
  /** $1 now. */
  readonly forgetRelays: string
  /** $1 relay id, $2 instance token. */
  readonly unregister: string
  /**
   * $1 relay id, $2 lease end, $3 instance token, $4 tokens by partition (list). Renews only the
   * partitions held with the token this instance knows. Returns partition_no, token.
   */
  readonly renew: string
  /** $1 relay id, $2 lease end, $3 now, $4 how many, $5 instance token. Returns partition_no, token. */
  readonly claim: string
  /** Returns n: how many of the rows 0..OUTBOX_PARTITIONS-1 of the partitions table exist. */
  readonly partitionRows: string
  /**
   * $1 now. Recreates the missing rows 0..OUTBOX_PARTITIONS-1 of the partitions table, free,
   * with a token no relay can hold (see restorePartitions); leaves existing rows as they are.
   */
  readonly restorePartitions: string
  /**
   * $1 relay id, $2 tokens by partition (list; -1 where not released), $3 instance token.
   * Releases only the partitions still held with those tokens.
   */
  readonly release: string
  /**
   * Returns created_at of the oldest unpublished, live row whose created_at is a whole number
   * from 0 (one changed outside breakwater has no age to measure the lag by).
   */
  readonly oldestPending: string
  /** Returns pending, dead, stranded (pending with a partition_no outside 0..OUTBOX_PARTITIONS-1). */
  readonly counts: string
  /** $1 after id, $2 limit. */
  readonly listDead: string
  /** $1 event ids (list). */
  readonly redrive: string
  readonly redriveAll: string
  /** $1 cutoff, $2 batch size. */
  readonly prune: string
  /** PostgreSQL: $1 cutoff, $2 batch size, $3 now (one statement). SQLite: see archiveMove. */
  readonly archive: string
  /** SQLite only: $1 ids (JSON list) to delete once archived. */
  readonly archiveDelete: string
}

/** The statements of the inbox, for one dialect. */
export interface InboxStatements {
  /** $1 consumer, $2 message id, $3 now. */
  readonly record: string
  /** $1 cutoff, $2 batch size. */
  readonly prune: string
}

const insertColumns =
  'event_id, aggregate_type, aggregate_id, event_type, topic, payload, headers, partition_no, created_at'

const readColumns = `o.id, o.event_id, o.aggregate_type, o.aggregate_id, o.event_type, o.topic, o.payload,
  o.headers, o.partition_no, o.created_at, o.attempts`

const archivedColumns =
  'id, event_id, aggregate_type, aggregate_id, event_type, topic, payload, headers, partition_no, created_at, published_at, attempts, last_error'

// A row is held back while an earlier row of its aggregate is dead or waiting for a retry, so
// an aggregate's events never overtake each other; other aggregates are not affected. readBatch
// computes, for every row it returns, the latest such earlier row (one probe of the _blocking
// index, usually empty): a row with one is never published. This check, made by every read, is what
// keeps the order; parking (below) only saves work and is never relied on for it. A relay of
// the previous release ignores parking and makes its own check (NOT EXISTS over the same rows).
//
// Parking. The rows held behind a dead or retrying event stay pending, and a read that stepped
// over them would step over them again at every read (0.1 to 0.8 s per read with 200,000
// events behind one dead event before parking existed). So readBatch returns them with the
// blocker's id instead of leaving them out, and the relay parks them (park: parked_behind =
// the blocker, re-checked in the same statement, fenced by the lease token); the read walks the
// _unparked index, which leaves them out. Each held row is then walked once per blocker, not
// once per read. A row parked behind event E is unparked when E is published (markPublished),
// and E cannot be published before every held event before it is: E is itself held by them.
// Rows parked behind an event that is no longer held without being published by this release
// (redriven and published by an older relay, changed by hand, a mark lost in a race with a
// park) are unparked by unparkStale, which the relay runs every unparkSweepEveryMs.
//
// A parked row holds back the later rows of its aggregate as a dead or retrying one does (see
// blocking, above the migrations).
const latestHeldPredecessor = (row: string): string => `(SELECT h.id FROM ${outboxTable} h
    WHERE h.aggregate_id = ${row}.aggregate_id AND h.id < ${row}.id AND ${blocking('h')}
    ORDER BY h.id DESC LIMIT 1)`

// The read. The oldest pending, unparked rows of the owned partitions whose retry time (if
// any) has come, at most $3, in id order, each with its held_behind. Rows waiting for their own
// retry are not held behind anything, so they are not parked: a read walking one index of every
// unparked row in id order stepped over all of them again at every read (200,000 of them, a
// broker that refused the head event of as many aggregates for a while: about 0.1 s per read on
// either database, see docs/outbox.md Limits). So the read takes the first $3 rows of two
// indexes (migration 5) and keeps the first $3 of those in id order:
//   - _ready, the rows with no retry time, in id order: the first $3 of them;
//   - _retry_due, the rows with a retry time, by that time: the first $3 already due, a range
//     that ends at now, so the rows still waiting are not looked at. (In id order, the due ones
//     would be found only by stepping over the waiting ones again, or by reading and sorting
//     every due one, at every read, while a crowd of them drains.)
// The result may leave out a due row of a smaller id than one it returns, in favour of one due
// earlier (taken by a later read: a row's retry time does not change while it waits, and those
// due before it are taken or charged again, later). Order per aggregate does not depend on it:
//   - a row is returned only with every earlier readable row of its aggregate that has no retry
//     time: were such a row F left out, the first $3 of _ready would all be below F, so below
//     the returned row, and leave it out of the first $3 in id order;
//   - an earlier row of its aggregate with a retry time (due or not) is a blocker: the row is
//     returned held (held_behind), parked and never published.
// held_behind is computed for the rows kept only. With $6 = 0 every payload comes back null: a
// read of several rounds while rows are held back (see the relay's parkingReadFactor) would
// otherwise carry the payloads of rows it only parks, or leaves for the next read, into the
// relay's memory (8 x 128 rows of 1 MiB: a GiB); the relay then reads the payloads of the rows
// it publishes, at most a round, with the payloads statement. SQLite has two ranges of _retry_due: numbers
// up to now, and a retry_at set by hand to text or a blob, which sorts above every number and is
// due (it was never due before, so the event was never retried and held back the rest of its
// aggregate for ever); its attempts still decide the dead letter. INDEXED BY: _unparked and
// _pending also fit, and without statistics SQLite may take one and walk the waiting rows.
// The `retry_at IS NOT NULL` of _retry_due's predicate follows from the comparison (both
// databases see that), and is not written out: see below.
//
// PostgreSQL plans from the statistics of the last ANALYZE, which autovacuum runs only after a
// tenth of the table changed, so right after a crowd of charges they still say that hardly any
// row has a retry time. Planned as one row, the due rows were read through whichever index
// looked cheapest for one row: _blocking (every dead, retrying and parked row, in aggregate
// order) and a sort, so every waiting row at every read again (20,000 rows looked at for 32).
// The due range therefore compares with (SELECT $2), a value the planner does not know: it
// estimates a third of the rows with that comparison instead, and the range of _retry_due in
// order, stopped at $3, is then by far the cheapest. A `retry_at IS NOT NULL` written out would
// bring the stale estimate back. _ready wins the first arm on any statistics: every index that
// gives id order holds at least its rows and leaves more conditions to check.
const readBatch = (dialect: SqlDialect): string => {
  const pg = dialect === 'postgres'
  const owned = pg
    ? `o.partition_no = ANY($1::int[])
    AND o.xid < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
    AND NOT (o.aggregate_id = ANY($4::text[]))
    AND o.id NOT IN (SELECT unnest($5::bigint[]))`
    : `o.partition_no IN (SELECT value FROM json_each($1))
    AND o.aggregate_id NOT IN (SELECT value FROM json_each($4))
    AND o.id NOT IN (SELECT value FROM json_each($5))`
  const first = (index: string, when: string, order: string, as: string): string =>
    `SELECT * FROM (SELECT ${readColumns}
    FROM ${outboxTable} o${pg ? '' : ` INDEXED BY ${outboxTable}_${index}`}
    WHERE ${readable('o.')} AND ${when}
    AND ${owned}
    ORDER BY ${order} LIMIT $3) AS ${as}`
  const arms = [
    first('ready', 'o.retry_at IS NULL', 'o.id', 'ready'),
    first(
      'retry_due',
      `o.retry_at <= ${pg ? '(SELECT $2::bigint)' : '$2'}`,
      'o.retry_at, o.id',
      'due',
    ),
  ]
  if (!pg) arms.push(first('retry_due', `o.retry_at >= ''`, 'o.retry_at, o.id', 'due_by_hand'))
  // The payload's characters when it may be over the limit ($7): more characters than bytes
  // allowed is certainly more UTF-8 bytes (a character is at least one), so such a payload is
  // left out and the relay dead-letters the row without reading it. PostgreSQL first asks
  // octet_length (the stored size, read without fetching a TOASTed value): at most $7 bytes in
  // the database's encoding is at most $7 characters, and char_length, which fetches the whole
  // value, is asked only past that. SQLite counts the characters of every row read.
  const limit = pg ? '$7::bigint' : '$7'
  const chars = pg
    ? `CASE WHEN octet_length(c.payload) > ${limit} THEN char_length(c.payload) END`
    : 'length(c.payload)'
  return `SELECT c.id, c.event_id, c.aggregate_type, c.aggregate_id, c.event_type, c.topic,
  CASE WHEN $6 = 1 AND NOT coalesce(${chars} > ${limit}, false) THEN c.payload END AS payload,
  CASE WHEN ${chars} > ${limit} THEN ${chars} END AS payload_chars,
  c.headers, c.partition_no, c.created_at,
  c.attempts, ${latestHeldPredecessor('c')} AS held_behind
FROM (
  ${arms.join('\n  UNION ALL\n  ')}
  ORDER BY id LIMIT $3) AS c
ORDER BY c.id`
}

// The payloads of the rows a read without them ($6 = 0) found free: at most a round, by id.
const payloads = (ids: string): string => `SELECT id, payload FROM ${outboxTable} WHERE id ${ids}`

// The park statement. Only rows that are still pending, unparked and held (the blocker is read
// again here, not taken from the read), and not behind an event whose mark is under way ($2):
// on PostgreSQL that mark may have started before this statement and not see the park, so the
// row would stay parked behind a published event until the sweep. The relay sends it from its
// loop, with no publish out, so every mark that may run meanwhile is one of $2.
// (SQLite's RETURNING names the updated table's columns without its alias.)
const park = (dialect: SqlDialect): string => {
  const pg = dialect === 'postgres'
  const ids = pg ? '= ANY($1::bigint[])' : 'IN (SELECT value FROM json_each($1))'
  const marking = pg
    ? 'NOT (b.blocker = ANY($2::bigint[]))'
    : 'b.blocker NOT IN (SELECT value FROM json_each($2))'
  const token = pg
    ? '($4::bigint[])[o.partition_no + 1]'
    : `json_extract($4, '$[' || o.partition_no || ']')`
  const fenced = `o.parked_behind IS NULL AND o.published_at IS NULL AND o.dead_at IS NULL
  AND EXISTS (SELECT 1 FROM ${outboxPartitionsTable} p
    WHERE p.partition_no = o.partition_no AND p.owner = $3 AND p.token = ${token})`
  const blockers = `SELECT s.id, ${latestHeldPredecessor('s')} AS blocker
  FROM ${outboxTable} s WHERE s.id ${ids}`
  // PostgreSQL: every blocker is found before the first row is updated (the arrays are init
  // plans, run once). Found row by row as the update went, each search stepped over the index
  // entries of the rows the statement had already parked (not visible to it, each a heap visit):
  // a batch of 1,024 cost 0.3-4 s, quadratic in the batch. SQLite's UPDATE FROM runs the join
  // to completion first.
  if (pg) {
    return `WITH b AS (${blockers}),
found AS (SELECT array_agg(b.id) AS ids, array_agg(b.blocker) AS blockers FROM b
  WHERE b.blocker IS NOT NULL AND ${marking})
UPDATE ${outboxTable} AS o SET parked_behind = f.blocker
FROM unnest((SELECT ids FROM found), (SELECT blockers FROM found)) AS f(id, blocker)
WHERE o.id = f.id AND ${fenced}
RETURNING o.id`
  }
  return `UPDATE ${outboxTable} AS o SET parked_behind = b.blocker
FROM (${blockers}) AS b
WHERE o.id = b.id AND b.blocker IS NOT NULL AND ${marking}
  AND ${fenced}
RETURNING id`
}

// The sweep: rows of the owned partitions parked behind an event that no longer holds them
// back (gone, published, or pending with no retry and not parked). Walks the parked rows of the
// _parked index, once per unparkSweepEveryMs, not at every read. Unparking early is harmless:
// the read checks again.
const unparkStale = (partitions: string): string => `UPDATE ${outboxTable} SET parked_behind = NULL
WHERE parked_behind IS NOT NULL AND partition_no ${partitions}
  AND NOT EXISTS (SELECT 1 FROM ${outboxTable} h
    WHERE h.id = ${outboxTable}.parked_behind AND ${blocking('h')})`

// On SQLite, a lease or heartbeat end that is not a number (text or a blob set by hand: SQLite
// keeps it as it is in its INTEGER column, and it sorts above every number) counts as run out.
// Otherwise it never ran out: a partition whose owner is gone was never claimed again, a relay
// that is gone was counted live for ever (the fair share left its part of the partitions
// unowned) and its relay id could never be started again. A live holder rewrites it as a number
// at its next renewal; if another relay or instance took over first, the fencing token (bumped
// by a claim or a takeover) keeps the old holder's writes out, as after any expiry.
const notNumber = (column: string): string => `typeof(${column}) NOT IN ('integer', 'real')`

// On SQLite, the ids of at most $2 published rows due for pruning: published by $1, or with a
// published_at that is not a number (text or a blob set by hand stays as it is in the INTEGER
// column and sorts above every number, so `<= $1` never held and the row, skipped by the relay
// as published, was kept for ever). Two ranges of the _published index, not one OR, which
// walked every published row in order (the upper bound lost) each time a batch came back short.
// Text and blobs sort above '' and numbers below it, so the ranges never meet; NULL, an
// unpublished row, is in neither.
const sqliteDueForPrune = `SELECT id FROM (
    SELECT id FROM ${outboxTable} WHERE published_at IS NOT NULL AND published_at <= $1
    ORDER BY published_at LIMIT $2)
  UNION ALL SELECT id FROM (
    SELECT id FROM ${outboxTable} WHERE published_at IS NOT NULL AND published_at >= ''
    ORDER BY published_at LIMIT $2)
  LIMIT $2`

// Only the partitions the migration made (0..OUTBOX_PARTITIONS-1): a claim takes the free ones
// in partition order up to the fair share, so a row added by hand below 0 took a place in it
// and left partition 63 (whose events no other row maps to) unclaimed; one above 63 could take
// the place of a partition whose lease runs out later. No outbox row maps to such a row, and
// the token lists of renew and release have no place for it.
const knownPartition = (column: string): string => `${column} BETWEEN 0 AND ${last}`

// Pending and dead counts, and the pending events no relay will ever publish: a partition_no
// outside 0..63 (changed by hand; `known` says which are inside) is in no relay's claim, so the
// event waits for ever, unreported but for pending and lag. The rows are left as they are: only
// the operator knows whether the row or the number is wrong.
// Parked rows are pending: counted in pending (and in the lag, see oldestPending).
const counts = (known: string, held: string): string => `SELECT
  (SELECT COUNT(*) FROM ${outboxTable} WHERE published_at IS NULL AND dead_at IS NULL) AS pending,
  (SELECT COUNT(*) FROM ${held} WHERE published_at IS NULL AND dead_at IS NOT NULL) AS dead,
  (SELECT COUNT(*) FROM ${outboxTable}
    WHERE published_at IS NULL AND dead_at IS NULL AND NOT (${known})) AS stranded`

const partitionRows = `SELECT COUNT(*) AS n FROM ${outboxPartitionsTable} WHERE ${knownPartition('partition_no')}`

// The missing rows of 0..63 (deleted by hand), free. A relay claims only rows that exist, so
// the events of a deleted partition were never published. Several relays may run this at
// once: ON CONFLICT DO NOTHING creates each row once (on PostgreSQL a concurrent insert of the
// same key waits for the other transaction, then does nothing) and never touches a live row.
//
// The token. Marks and attempt counters are fenced by owner and token, and a relay that held
// the deleted row still believes it holds it with its token N. A relay of another id is kept
// out by the owner; but a new instance of the same relay id (the holder stalled past its
// heartbeat) that claims the recreated row owns it under the same name, so the row's token must
// never come back to N. Had the row come back with 0 (the migration's start), its first claim
// would have made it 1, the token of the row's first holder. N was lost with the row, so the
// new token is the larger of the relay's clock reading in ms and one above every token in the
// table: a token only grows by one per takeover (a claim, or a relay id taken over), each a
// transaction of its own, so no partition reaches the clock's reading in ms since 1970 from 0
// (a row the migration made), nor from a recreated row's start in the ms until it is deleted and
// recreated again, up to the relays' clock skew (which leases must already be far longer than).
// A whole number in ms stays far below 2^53 (tokens are read as JavaScript numbers).
const restorePartitions = (dialect: SqlDialect): string =>
  dialect === 'postgres'
    ? `INSERT INTO ${outboxPartitionsTable} (partition_no, token)
SELECT g, GREATEST($1::bigint, COALESCE((SELECT MAX(token) FROM ${outboxPartitionsTable}), -1) + 1)
FROM generate_series(0, ${last}) AS g
ON CONFLICT (partition_no) DO NOTHING`
    : // WHERE true: without it SQLite reads ON CONFLICT as the join's ON. A token set to text
      // or a blob by hand sorts above every number: left out of the maximum.
      `WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ${last})
INSERT INTO ${outboxPartitionsTable} (partition_no, token)
SELECT i, MAX($1, COALESCE((SELECT MAX(token) FROM ${outboxPartitionsTable}
  WHERE typeof(token) = 'integer'), -1) + 1)
FROM n WHERE true
ON CONFLICT (partition_no) DO NOTHING`

// Taken over only from the same instance or from one whose heartbeat expired (it crashed, or
// stalled past its lease): a second live process with the same relay id gets no row back.
const heartbeat = (dialect: SqlDialect): string => {
  const expires = `${outboxRelaysTable}.expires_at`
  const ranOut =
    dialect === 'sqlite' ? `(${expires} <= $5 OR ${notNumber(expires)})` : `${expires} <= $5`
  return `INSERT INTO ${outboxRelaysTable} (relay_id, started_at, expires_at, instance)
VALUES ($1, $2, $3, $4)
ON CONFLICT (relay_id) DO UPDATE
SET started_at = excluded.started_at, expires_at = excluded.expires_at, instance = excluded.instance
WHERE ${outboxRelaysTable}.instance = excluded.instance OR ${ranOut}
RETURNING relay_id`
}

// Only while this instance holds the relay id: a process that lost it (another instance took
// the expired id over) never learns the new tokens, so its writes stay fenced.
const holdsId = (instanceParam: string): string =>
  `EXISTS (SELECT 1 FROM ${outboxRelaysTable} r WHERE r.relay_id = $1 AND r.instance = ${instanceParam})`

// The dead rows are in the partial index of held rows (dead or waiting for a retry), which holds
// none of the published rows the outbox keeps until retention. Without ANALYZE statistics (breakwater never runs it) SQLite
// read `id > $1 ORDER BY id` from the rowid instead, walking every published row above afterId
// to find the dead ones (585 ms at a million published rows); INDEXED BY makes it read the
// index and sort what it finds. PostgreSQL picks the index by itself.
const listDead = (from: string): string =>
  `SELECT id, event_id, aggregate_type, aggregate_id, event_type, topic, payload, headers, attempts,
  last_error, created_at, dead_at
FROM ${from} WHERE dead_at IS NOT NULL AND published_at IS NULL AND id > $1 ORDER BY id LIMIT $2`

// Redrive: the dead rows become pending again. The rows parked behind one stay parked (a
// parked row holds back its aggregate's later rows): they are unparked when it is published.
const redriveAll = (from: string): string =>
  `UPDATE ${from} SET dead_at = NULL, retry_at = NULL, attempts = 0
WHERE dead_at IS NOT NULL AND published_at IS NULL`

// An unreadable created_at (changed outside breakwater) is left out: it made the lag NaN.
const oldestPending = (readable: string): string =>
  `SELECT created_at FROM ${outboxTable} WHERE published_at IS NULL AND dead_at IS NULL AND ${readable} ORDER BY id LIMIT 1`

const shared = {
  insertOne: `INSERT INTO ${outboxTable} (${insertColumns}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
  unregister: `DELETE FROM ${outboxRelaysTable} WHERE relay_id = $1 AND instance = $2`,
  holder: `SELECT instance, expires_at FROM ${outboxRelaysTable} WHERE relay_id = $1`,
  fence: `UPDATE ${outboxPartitionsTable} SET token = token + 1 WHERE owner = $1`,
  partitionRows,
}

/** The statements, per dialect. */
export const outboxStatements: Readonly<Record<SqlDialect, OutboxStatements>> = {
  postgres: {
    ...shared,
    listDead: listDead(outboxTable),
    oldestPending: oldestPending('created_at >= 0'),
    counts: counts(knownPartition('partition_no'), outboxTable),
    redriveAll: redriveAll(outboxTable),
    restorePartitions: restorePartitions('postgres'),
    heartbeat: heartbeat('postgres'),
    liveRelays: `SELECT COUNT(*) AS n FROM ${outboxRelaysTable} WHERE expires_at > $1`,
    forgetRelays: `DELETE FROM ${outboxRelaysTable} WHERE expires_at <= $1`,
    // One round trip: a data-modifying CTE always runs to completion, and the notification
    // is queued in the same transaction, so PostgreSQL delivers it at COMMIT (never on
    // ROLLBACK). Identical notifications of one transaction are folded into one.
    insertOneNotify: `WITH ins AS (
  INSERT INTO ${outboxTable} (${insertColumns}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
)
SELECT pg_notify($10, '')`,
    insertMany: `INSERT INTO ${outboxTable} (${insertColumns})
SELECT e, at, ai, et, t, p, h, pn, $9::bigint
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[])
  WITH ORDINALITY AS u(e, at, ai, et, t, p, h, pn, ord)
ORDER BY ord`,
    insertManyNotify: `WITH ins AS (
  INSERT INTO ${outboxTable} (${insertColumns})
  SELECT e, at, ai, et, t, p, h, pn, $9::bigint
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[])
    WITH ORDINALITY AS u(e, at, ai, et, t, p, h, pn, ord)
  ORDER BY ord
)
SELECT pg_notify($10, '')`,
    // Sequence values are handed out at INSERT, not at COMMIT: a transaction can take id 10,
    // stay open, and commit after id 11 of another transaction is visible. The relay therefore
    // reads only rows whose writing transaction is older than every transaction still running
    // (xid below the snapshot's xmin): all such transactions have ended, so no row that could
    // precede them is still in flight. The price is that one long-running writing transaction
    // holds the relay back until it ends. The scalar subquery runs once per statement. The rows
    // in flight ($5) are the oldest pending ones, so the scan meets every one of them: NOT IN a
    // subquery is a hashed lookup, where NOT (id = ANY(array)) compares with each element.
    // The horizon is cluster-wide: a transaction in any database of the server holds rows back.
    //
    // heldBack: some pending row is not older than the horizon exactly when the newest one is,
    // so it reads one row per owned partition from the _horizon index (newest xid first). A
    // plain EXISTS over the rows let the planner guess that a third of them match the runtime
    // horizon and pick a sequential scan, which removed every pending row by filter when none
    // did: 0.6 s per empty read at a million pending rows.
    heldBack: `SELECT EXISTS (
  SELECT 1 FROM unnest($1::int[]) AS p(partition_no)
  CROSS JOIN LATERAL (
    SELECT o.xid FROM ${outboxTable} o
    WHERE o.published_at IS NULL AND o.dead_at IS NULL AND o.partition_no = p.partition_no
    ORDER BY o.xid DESC LIMIT 1) AS newest
  WHERE newest.xid >= (SELECT pg_snapshot_xmin(pg_current_snapshot()))) AS held`,
    readBatch: readBatch('postgres'),
    payloads: payloads('= ANY($1::bigint[])'),
    park: park('postgres'),
    unparkStale: unparkStale('= ANY($1::int[])'),
    // Fenced by the lease token: a relay that lost a partition (its lease expired and another
    // relay took it over) writes nothing for that partition's rows.
    //
    // The mark commits without waiting for its WAL flush (synchronous_commit off for this
    // statement's transaction only, set by the uncorrelated subquery, evaluated once): the
    // flush was most of the statement's time. A mark lost to a PostgreSQL crash only means
    // those events are published again (deduped by message id, absorbed by the inbox); the
    // events themselves were committed durably by their writers, so nothing can be lost.
    //
    // The rows parked behind the events published are unparked by the same statement (a
    // data-modifying CTE runs to completion), unfenced: unparking too many only costs a check.
    // They are never rows this statement marks: a row is published only as read unparked, and
    // none is parked while its mark is under way (the reads skip it, see readBatch's $5).
    markPublished: `WITH unparked AS (
  UPDATE ${outboxTable} SET parked_behind = NULL WHERE parked_behind = ANY($2::bigint[])
)
UPDATE ${outboxTable} AS o SET published_at = $1, retry_at = NULL
WHERE o.id = ANY($2::bigint[]) AND o.published_at IS NULL
  AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
  AND EXISTS (SELECT 1 FROM ${outboxPartitionsTable} p
    WHERE p.partition_no = o.partition_no AND p.owner = $3 AND p.token = ($4::bigint[])[o.partition_no + 1])
RETURNING o.id`,
    charge: `UPDATE ${outboxTable} AS o
SET attempts = CASE WHEN $8::int = 1 THEN o.attempts ELSE o.attempts + 1 END, last_error = $2,
  retry_at = CASE WHEN $8::int = 1 OR o.attempts + 1 >= $3::int THEN NULL ELSE $4::bigint END,
  dead_at = CASE WHEN $8::int = 1 OR o.attempts + 1 >= $3::int THEN $5::bigint ELSE NULL END
WHERE o.id = $1 AND o.published_at IS NULL AND o.dead_at IS NULL
  AND EXISTS (SELECT 1 FROM ${outboxPartitionsTable} p
    WHERE p.partition_no = o.partition_no AND p.owner = $6 AND p.token = ($7::bigint[])[o.partition_no + 1])
RETURNING o.attempts, o.dead_at`,
    // The token check is what makes a renewal that races a takeover of the relay id safe: the
    // holdsId subquery is evaluated once, on the statement's snapshot, which may predate the new
    // instance's heartbeat; but a row the new instance fenced (token + 1) meanwhile is re-checked
    // on its new version, whose token no longer matches, so it is neither renewed nor returned.
    renew: `UPDATE ${outboxPartitionsTable} AS p SET lease_expires_at = $2
WHERE p.owner = $1 AND p.token = ($4::bigint[])[p.partition_no + 1]
  AND ${holdsId('$3')}
RETURNING p.partition_no, p.token`,
    // SKIP LOCKED: relays starting together each take different free partitions instead of
    // queueing on the same rows; the outer condition is re-checked on the locked row version.
    claim: `UPDATE ${outboxPartitionsTable} AS p
SET owner = $1, lease_expires_at = $2, token = p.token + 1
WHERE p.partition_no IN (
    SELECT f.partition_no FROM ${outboxPartitionsTable} f
    WHERE (f.owner IS NULL OR f.lease_expires_at IS NULL OR f.lease_expires_at <= $3)
      AND ${knownPartition('f.partition_no')}
    ORDER BY f.partition_no
    LIMIT $4
    FOR UPDATE SKIP LOCKED)
  AND (p.owner IS NULL OR p.lease_expires_at IS NULL OR p.lease_expires_at <= $3)
  AND ${holdsId('$5')}
RETURNING p.partition_no, p.token`,
    // Token-checked like renew: a release racing a takeover of the relay id never frees the
    // partitions the new instance fenced or claimed meanwhile.
    release: `UPDATE ${outboxPartitionsTable} AS p SET owner = NULL, lease_expires_at = NULL
WHERE p.owner = $1 AND p.token = ($2::bigint[])[p.partition_no + 1]
  AND ${holdsId('$3')}`,
    redrive: `UPDATE ${outboxTable} SET dead_at = NULL, retry_at = NULL, attempts = 0
WHERE dead_at IS NOT NULL AND published_at IS NULL AND event_id = ANY($1::text[])`,
    // Bounded batches picked by a sub-select with LIMIT: each DELETE is short and takes row
    // locks only (writers keep inserting); SKIP LOCKED passes over rows another pruner holds.
    prune: `DELETE FROM ${outboxTable} WHERE id IN (
  SELECT id FROM ${outboxTable} WHERE published_at IS NOT NULL AND published_at <= $1
  ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED)`,
    archive: `WITH moved AS (
  DELETE FROM ${outboxTable} WHERE id IN (
    SELECT id FROM ${outboxTable} WHERE published_at IS NOT NULL AND published_at <= $1
    ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED)
  RETURNING ${archivedColumns}
)
INSERT INTO ${outboxArchiveTable} (${archivedColumns}, archived_at)
SELECT ${archivedColumns}, $3::bigint FROM moved`,
    archiveDelete: '',
  },
  sqlite: {
    ...shared,
    listDead: listDead(`${outboxTable} INDEXED BY ${outboxTable}_held`),
    // Text sorts above every number: only an integer is a time.
    oldestPending: oldestPending(`typeof(created_at) = 'integer' AND created_at >= 0`),
    // Text or a real set by hand stays as it is in the INTEGER column: in no partition list.
    // The dead rows through _held: SQLite also finds _blocking fits, which holds the parked rows
    // as well (any number of them).
    counts: counts(
      `typeof(partition_no) = 'integer' AND ${knownPartition('partition_no')}`,
      `${outboxTable} INDEXED BY ${outboxTable}_held`,
    ),
    redriveAll: redriveAll(`${outboxTable} INDEXED BY ${outboxTable}_held`),
    restorePartitions: restorePartitions('sqlite'),
    heartbeat: heartbeat('sqlite'),
    liveRelays: `SELECT COUNT(*) AS n FROM ${outboxRelaysTable}
WHERE expires_at > $1 AND NOT ${notNumber('expires_at')}`,
    forgetRelays: `DELETE FROM ${outboxRelaysTable} WHERE expires_at <= $1 OR ${notNumber('expires_at')}`,
    insertOneNotify: `INSERT INTO ${outboxTable} (${insertColumns}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
    insertMany: `INSERT INTO ${outboxTable} (${insertColumns})
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, $2
FROM json_each($1) ORDER BY key`,
    insertManyNotify: `INSERT INTO ${outboxTable} (${insertColumns})
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, $2
FROM json_each($1) ORDER BY key`,
    // No transaction-id guard: SQLite has one writer at a time, and a row's id is assigned
    // inside the write transaction that holds the database's write lock until COMMIT, so ids
    // become visible in commit order; a reader that sees id n already sees every smaller id
    // that will ever commit.
    heldBack: undefined,
    readBatch: readBatch('sqlite'),
    payloads: payloads('IN (SELECT value FROM json_each($1))'),
    park: park('sqlite'),
    unparkStale: unparkStale('IN (SELECT value FROM json_each($1))'),
    markPublished: `UPDATE ${outboxTable} SET published_at = $1, retry_at = NULL
WHERE id IN (SELECT value FROM json_each($2)) AND published_at IS NULL
  AND EXISTS (SELECT 1 FROM ${outboxPartitionsTable} p
    WHERE p.partition_no = ${outboxTable}.partition_no AND p.owner = $3
      AND p.token = json_extract($4, '$[' || ${outboxTable}.partition_no || ']'))
RETURNING id`,
    charge: `UPDATE ${outboxTable}
SET attempts = CASE WHEN $8 = 1 THEN attempts ELSE attempts + 1 END, last_error = $2,
  retry_at = CASE WHEN $8 = 1 OR attempts + 1 >= $3 THEN NULL ELSE $4 END,
  dead_at = CASE WHEN $8 = 1 OR attempts + 1 >= $3 THEN $5 ELSE NULL END
WHERE id = $1 AND published_at IS NULL AND dead_at IS NULL
  AND EXISTS (SELECT 1 FROM ${outboxPartitionsTable} p
    WHERE p.partition_no = ${outboxTable}.partition_no AND p.owner = $6
      AND p.token = json_extract($7, '$[' || ${outboxTable}.partition_no || ']'))
RETURNING attempts, dead_at`,
    renew: `UPDATE ${outboxPartitionsTable} SET lease_expires_at = $2
WHERE owner = $1 AND token = json_extract($4, '$[' || partition_no || ']')
  AND ${holdsId('$3')}
RETURNING partition_no, token`,
    claim: `UPDATE ${outboxPartitionsTable}
SET owner = $1, lease_expires_at = $2, token = token + 1
WHERE partition_no IN (
    SELECT partition_no FROM ${outboxPartitionsTable}
    WHERE (owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= $3
      OR ${notNumber('lease_expires_at')})
      AND ${knownPartition('partition_no')}
    ORDER BY partition_no
    LIMIT $4)
  AND ${holdsId('$5')}
RETURNING partition_no, token`,
    release: `UPDATE ${outboxPartitionsTable} SET owner = NULL, lease_expires_at = NULL
WHERE owner = $1 AND token = json_extract($2, '$[' || partition_no || ']')
  AND ${holdsId('$3')}`,
    redrive: `UPDATE ${outboxTable} SET dead_at = NULL, retry_at = NULL, attempts = 0
WHERE dead_at IS NOT NULL AND published_at IS NULL AND event_id IN (SELECT value FROM json_each($1))`,
    // SQLite has a single writer: a bounded batch keeps the write lock short, so enqueuing
    // transactions wait for the pruner for milliseconds, not for a whole table scan.
    prune: `DELETE FROM ${outboxTable} WHERE id IN (${sqliteDueForPrune})`,
    archive: `INSERT INTO ${outboxArchiveTable} (${archivedColumns}, archived_at)
SELECT ${archivedColumns}, $3 FROM ${outboxTable} WHERE id IN (${sqliteDueForPrune})
RETURNING id`,
    archiveDelete: `DELETE FROM ${outboxTable} WHERE id IN (SELECT value FROM json_each($1))`,
  },
}

/** The statements of the inbox, per dialect. */
export const inboxStatements: Readonly<Record<SqlDialect, InboxStatements>> = {
  postgres: {
    // On a concurrent duplicate, PostgreSQL makes the second INSERT wait for the first
    // transaction: if it commits, DO NOTHING (0 rows); if it rolls back, this one inserts.
    record: `INSERT INTO ${inboxTable} (consumer, message_id, received_at) VALUES ($1, $2, $3)
ON CONFLICT (consumer, message_id) DO NOTHING`,
    prune: `DELETE FROM ${inboxTable} WHERE (consumer, message_id) IN (
  SELECT consumer, message_id FROM ${inboxTable} WHERE received_at <= $1
  ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)`,
  },
  sqlite: {
    record: `INSERT INTO ${inboxTable} (consumer, message_id, received_at) VALUES ($1, $2, $3)
ON CONFLICT (consumer, message_id) DO NOTHING`,
    prune: `DELETE FROM ${inboxTable} WHERE rowid IN (
  SELECT rowid FROM ${inboxTable} WHERE received_at <= $1 ORDER BY received_at LIMIT $2)`,
  },
}

/** A list parameter: a PostgreSQL array as is, a JSON array text on SQLite. */
export function listParam(dialect: SqlDialect, values: readonly unknown[]): unknown {
  return dialect === 'postgres' ? values : JSON.stringify(values)
}
