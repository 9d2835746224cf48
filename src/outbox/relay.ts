// The outbox relay. Design, in short:
//
// - Partitions and leases. Every outbox row carries partition = FNV-1a(aggregate id) mod 64.
//   Relays register in a heartbeat table and lease partitions (owner, lease end, fencing token
//   bumped at every takeover) up to a fair share, ceil(64 / live relays): they claim free or
//   expired partitions and release any above their share, between batches only. Leases are
//   renewed on a timer (every third of leaseMs), independently of the publishing loop. A relay
//   reads and publishes only rows of its partitions, and starts a publish only with at least
//   publishTimeoutMs of lease left (publishTimeoutMs <= leaseMs / 2), so two relays never publish
//   the same rows at once. "Mark published" and the attempt counters are fenced by owner and
//   token. An aggregate lives in one partition, so its events are only ever handled by the one
//   relay that holds that partition.
// - Order. A batch is the oldest publishable rows of the relay's partitions, in id order. With
//   ordering 'confirmed' (the default) it goes out in waves, wave n holding the n-th event of
//   each aggregate, so event n+1 is handed to the broker only after event n was confirmed. A
//   row is publishable when no earlier row of its aggregate is dead or waiting for a retry.
//   Every read checks that for each row it returns; the rows it finds held back are parked
//   (parked_behind = the event they wait for), which the next reads skip, and unparked when that
//   event is published, so the events queued behind a dead one are walked once, not at every
//   read (see sql.ts, Parking). Parking only saves work: order rests on the read's own check.
//   Rows waiting for their own retry are not parked; the read takes the due ones from an
//   index ordered by retry time, so it does not step over the others either (sql.ts, readBatch).
//   On PostgreSQL a row is read only when its writing transaction is older than every running
//   one (xid below the snapshot's xmin), so a row that commits late is neither overtaken by a
//   later row of its aggregate nor skipped. SQLite serializes writers, so ids commit in order.
//   A read that finds nothing while such rows wait looks again after 10 ms, doubling up to
//   maxPollIntervalMs: the running transaction (in any database of the server) sends no
//   notification when it ends, and the idle backoff could be long.
// - Publish, then mark, pipelined. Rows are marked published only after publish() resolved; a
//   crash in between publishes them again (duplicates, never losses). The mark of one round
//   runs while the next round is read and published (one mark statement at a time; rows
//   confirmed meanwhile join the next one), and reads skip the rows whose mark is under way.
//   A round takes half of batchSize, and a publish waits for marks whenever rows confirmed but
//   not yet marked would exceed batchSize: a crash republishes at most batchSize events.
// - Failures. Publishes run behind a circuit breaker and back off between failed rounds. An
//   event's own failure (BROKER_REJECTED, a permanent error; or an unclear error while other
//   events get through) is charged to it: attempts + 1, retry after a backoff, dead-lettered
//   at maxAttempts. A dead event holds back the later events of its aggregate (order) and no
//   other aggregate, until redrive().
// - Fault points before-claim, after-claim, after-publish, after-mark (see faults.ts).

import { randomUUID } from 'node:crypto'
import type { OutgoingMessage, Publisher } from '../brokers/types.js'
import { type Clock, maxTimerDelayMs, sleep, type TimerHandle } from '../core/clock.js'
import { detached } from '../core/detached.js'
import { BreakwaterError, describeValue, InvalidOptionError } from '../core/errors.js'
import { checkStoredKey } from '../core/text.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkOneOf,
  checkOptionKeys,
  optionKeys,
  withOptionPrefix,
} from '../core/validate.js'
import { Waker } from '../core/waker.js'
import {
  type Backoff,
  type BackoffOptions,
  backoffOptions,
  resolveBackoff,
} from '../policies/backoff.js'
import {
  type CircuitBreaker,
  type CircuitBreakerOptions,
  type CircuitState,
  circuitBreaker,
} from '../policies/circuit-breaker.js'
import { classifyFailure, retryAfterMsOf } from '../policies/classify.js'
import { withDeadline } from '../policies/deadline.js'
import { BrokenCircuitError, TimeoutError } from '../policies/errors.js'
import { diagnosticsChannel, EventSource } from '../policies/events.js'
import { checkSqlExecutor } from '../stores/check-driver.js'
import {
  parseStoredObject,
  readStoredWholeNumber,
  StoredDataError,
  type StoredPlace,
} from '../stores/errors.js'
import type { SqlDriver, Unlisten } from '../stores/index.js'
import { defaultMaxPayloadBytes, oversizeBytes, PayloadTooLargeError } from './errors.js'
import type { RelayFaultPoint, RelayFaults } from './faults.js'
import { type LeaseChange, PartitionLeases, RelayIdInUseError } from './leases.js'
import { AGGREGATE_TYPE_HEADER, EVENT_TYPE_HEADER } from './outbox.js'
import { type PruneOutboxOptions, prunePublished, resolvePruneOptions } from './retention.js'
import {
  listParam,
  OUTBOX_CHANNEL,
  type OutboxRow,
  type OutboxStatements,
  outboxStatements,
  outboxTable,
  type ReadRow,
} from './sql.js'
import { wholeMsClock } from './time.js'

/**
 * How a relay orders the events of one aggregate within a batch:
 * - `'confirmed'`: an event is handed to the broker only after the previous event of its
 *   aggregate was confirmed. A batch goes out in waves (wave n holds the n-th event of each
 *   aggregate in the batch), so a broker that loses or rejects event n can never hold n+1.
 * - `'batch'`: the whole batch goes out in one `publish()` call, in id order. Faster when one
 *   aggregate produces most events, but when a call fails part-way the broker may hold a later
 *   event of an aggregate without an earlier one, so consumers can see n+1 before the relay
 *   publishes n again.
 */
export type RelayOrdering = 'confirmed' | 'batch'

/** The lifecycle of a relay. */
export type RelayState = 'new' | 'running' | 'stopping' | 'stopped' | 'crashed'

/**
 * Options of the relay's periodic retention (see `pruneOutbox`). `clock` and `maxBatches` of
 * `pruneOutbox` are not among them: retention runs on the relay's own `clock` (one source of
 * time for leases, timers and the age cutoff) and a run has no batch budget (see `everyMs`).
 * Given anyway, they are refused with `INVALID_OPTION` naming `relay.retention.clock` or
 * `relay.retention.maxBatches`, not silently dropped.
 */
export interface RelayRetentionOptions extends Omit<PruneOutboxOptions, 'clock' | 'maxBatches'> {
  /**
   * How often the relay starts a retention run. A run removes due rows in batches of
   * `batchSize` (each its own short statement) and goes on while batches come back full, so it
   * keeps up with a relay publishing any number of rows per `everyMs`; it ends at the first
   * short batch, and rows published after it started are never due in it, so it always ends.
   * It yields to the event loop between batches (the relay's own work goes on meanwhile), no
   * batch starts once `stop()` is called, and a timer that fires while a run is still going
   * starts none.
   * @default 60_000
   */
  readonly everyMs?: number | undefined
}

/** Options of {@link createRelay}. */
export interface RelayOptions {
  /** The database holding the outbox (migrated with `migrateOutbox`). */
  readonly db: SqlDriver
  /** Where events go; `publish()` must resolve only once the broker confirmed them. */
  readonly publisher: Publisher
  /**
   * The most events confirmed by the broker and not yet marked published at any moment, hence
   * the most one crash of the relay can publish twice. A round reads half of it, so the mark
   * of one round can run while the next one is read and published. With 1, rounds of one
   * event run strictly one after the other.
   * @default 256
   */
  readonly batchSize?: number | undefined
  /**
   * How one aggregate's events are ordered within a batch; see {@link RelayOrdering}.
   * @default 'confirmed'
   */
  readonly ordering?: RelayOrdering | undefined
  /**
   * How long a partition lease lasts. Leases are renewed every third of it; a relay that dies
   * holds its partitions until the lease ends, so this bounds the pause before another relay
   * takes over.
   * @default 10_000
   */
  readonly leaseMs?: number | undefined
  /**
   * How long one `publish()` call may take before it counts as failed (its signal is aborted).
   * At most half of `leaseMs`: a relay starts a publish only with that much lease left, so it
   * never publishes a partition another relay may already hold. The call also runs under it as
   * a deadline (`currentDeadline()`): a publisher built on breakwater's retry and timeout
   * policies (the webhook publisher) clamps its attempts to it and stops retrying in time.
   * @default min(5_000, leaseMs / 2)
   */
  readonly publishTimeoutMs?: number | undefined
  /**
   * The first idle wait after a round found nothing to publish; it doubles per empty round up
   * to `maxPollIntervalMs`. A notification (PostgreSQL) or {@link Relay.wake} ends it early.
   * @default 20
   */
  readonly pollIntervalMs?: number | undefined
  /**
   * The longest idle wait between polls.
   * @default 1_000 with LISTEN (PostgreSQL), 250 without
   */
  readonly maxPollIntervalMs?: number | undefined
  /**
   * Wakes on PostgreSQL notifications (`LISTEN breakwater_outbox`) sent by enqueues at commit.
   * Ignored on SQLite, which only polls.
   * @default true
   */
  readonly listen?: boolean | undefined
  /**
   * Whether the started relay (until `stop()`) keeps the Node.js process alive, as a listening server does.
   * With false, its timers (like every breakwater timer) let the process exit when nothing
   * else holds it open. Only the system clock's timers can be held; a test clock's cannot.
   * @default true
   */
  readonly keepAlive?: boolean | undefined
  /**
   * After this many failed attempts that are the event's own fault, the event is dead-lettered:
   * set aside (`listDead`, `redrive`) while other aggregates flow on. The later events of the
   * same aggregate wait behind it, to keep the aggregate's order, until it is redriven.
   * @default 10
   */
  readonly maxAttempts?: number | undefined
  /**
   * The largest payload the relay hands to the broker: the UTF-8 bytes of its JSON text, as
   * the outbox's `maxPayloadBytes` counts them. A row above it (written by an outbox with a
   * higher limit, or before the outbox had one) is dead-lettered at its first read, with
   * `PayloadTooLargeError` (`PAYLOAD_TOO_LARGE`) naming its size and this limit as its last
   * error, and no attempt charged: the broker would refuse it at every attempt (or, far above
   * its limit, stall the relay while it is written out). Keep it equal to the outbox's; once
   * raised, `redrive` such an event to publish it.
   * @default 1048576 (1 MiB, as the outbox's)
   */
  readonly maxPayloadBytes?: number | undefined
  /**
   * Delays between failed rounds (broker down) and before an event's next attempt. A failed
   * round whose error carries `retryAfterMs` (a webhook's 429 or 503 with `Retry-After`) waits
   * at least that long, up to `maxDelayMs`.
   * @default { baseDelayMs: 100, maxDelayMs: 30_000, jitter: 'full' }
   */
  readonly retryBackoff?: BackoffOptions | undefined
  /**
   * The circuit breaker around the publisher (the relay's clock is used). Failures that are a
   * message's own fault (`BROKER_REJECTED`, permanent errors) never count against it. A bad
   * field is reported as `relay.circuitBreaker.<field>`; `clock` and `isFailure`, which the
   * relay sets itself, are refused (`INVALID_OPTION`) rather than dropped.
   * @default { window: { kind: 'consecutive', failures: 5 }, cooldownMs: 5_000 }
   */
  readonly circuitBreaker?: Omit<CircuitBreakerOptions, 'clock' | 'isFailure'> | undefined
  /**
   * Periodic removal of published rows; `false` turns it off.
   * @default { olderThanMs: 86_400_000, everyMs: 60_000, batchSize: 1000, archive: false }
   */
  readonly retention?: RelayRetentionOptions | false | undefined
  /** Fault-injection hook called at each step boundary; see {@link RelayFaults}. */
  readonly faults?: RelayFaults | undefined
  /**
   * This relay's identity in the lease tables (unique per running relay): a non-empty string
   * of at most 2048 UTF-8 bytes without NUL characters or lone surrogates, else
   * `InvalidOptionError` at construction. A second live
   * process started with the same id does not start: see {@link Relay.start}
   * (`RELAY_ID_IN_USE`). A crashed relay restarted with its id comes up within `leaseMs`; a
   * relay that stalled past its heartbeat and finds its id taken over that way stops itself
   * (a `failed` event, `RELAY_ID_IN_USE`).
   * @default a random UUID
   */
  readonly relayId?: string | undefined
  /**
   * Source of time for leases, waits, backoff, the breaker and timestamps.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** What a relay reports through its `events`. */
export type RelayEvent =
  | { readonly type: 'started'; readonly relayId: string }
  | {
      /** The partitions held changed (claimed, released, or lost to another relay). */
      readonly type: 'partitionsChanged'
      readonly owned: readonly number[]
      readonly claimed: readonly number[]
      readonly released: readonly number[]
      readonly lost: readonly number[]
    }
  | {
      /**
       * Rows of the partitions table (`breakwater_outbox_partitions`, one per partition 0..63)
       * were missing, deleted by hand, and this relay recreated `count` of them, free, before
       * claiming them (emitted before that claim's `partitionsChanged`). Until then no relay
       * could claim those partitions, so their events stayed unpublished. Looked for whenever a relay's claim
       * comes up short of its fair share (at start, and at a rebalance after a renewal lost a
       * deleted row); relays recreating rows at once each count only the rows their own
       * statement created. An operator's mistake worth a warning: rows are never deleted by
       * breakwater.
       */
      readonly type: 'partitionsRecreated'
      readonly count: number
    }
  | {
      /**
       * Events of one round (batch) were confirmed by the broker and marked published: one
       * such event per round with at least one event marked, even when one mark statement
       * covered several rounds. `durationMs` runs from reading the round to its mark.
       */
      readonly type: 'published'
      readonly count: number
      readonly durationMs: number
    }
  | {
      /**
       * A publish call failed (`count` messages), or the open circuit breaker refused it (the
       * error is then a `BrokenCircuitError`, and `publishFailures` does not count it); see
       * `retryScheduled` and `deadLettered`.
       */
      readonly type: 'publishFailed'
      readonly error: unknown
      readonly count: number
    }
  | {
      /** An event failed by its own fault and will be tried again at `retryAt`. */
      readonly type: 'retryScheduled'
      readonly eventId: string
      readonly attempts: number
      readonly retryAt: number
      readonly error: unknown
    }
  | {
      /** An event reached `maxAttempts` and was dead-lettered. */
      readonly type: 'deadLettered'
      readonly eventId: string
      readonly aggregateId: string
      /**
       * Failed attempts charged to it. `undefined` when the stored count cannot be read: it was
       * changed outside breakwater (text or a fraction on SQLite, a negative number on either
       * database). Such an event is dead-lettered at its first failure with its count left as
       * it is, and `error` is then a `StoredDataError` (`STORED_DATA_INVALID`) naming the
       * `attempts` column; `listDead` lists it with `attempts` undefined too.
       */
      readonly attempts: number | undefined
      readonly error: unknown
    }
  | {
      /** A database step failed; the relay carries on after a backoff. */
      readonly type: 'error'
      readonly phase: 'read' | 'mark' | 'charge' | 'lease' | 'listen' | 'retention'
      readonly error: unknown
    }
  | { readonly type: 'pruned'; readonly count: number }
  | { readonly type: 'stopped' }
  | {
      /**
       * The relay stopped itself for good, and publishes nothing more: its `relayId` was taken
       * over by another instance (it stalled past its heartbeat, and another process started
       * with the same id), so `error` is a `RelayIdInUseError` (`RELAY_ID_IN_USE`). The state
       * is then `'stopped'`; nothing held by the new instance was released. Restart the
       * process with its own id, or alert: two processes share one id.
       */
      readonly type: 'failed'
      readonly error: unknown
    }
  | {
      /** The fault hook threw at `point`: the relay halted as a crashed process would. */
      readonly type: 'crashed'
      readonly point: RelayFaultPoint
      readonly error: unknown
    }

/** A snapshot of a relay's counters and gauges (see {@link Relay.metrics}). */
export interface RelayMetrics {
  /** Events confirmed and marked published by this relay (counter). */
  readonly published: number
  /** Failed publish calls (counter): not the sends the open circuit breaker refused. */
  readonly publishFailures: number
  /** Events this relay dead-lettered (counter). */
  readonly deadLettered: number
  /** Rounds that published at least one event (counter). */
  readonly batches: number
  /**
   * Age of the oldest publishable event in this relay's partitions at its last read, in ms
   * (gauge; 0 when nothing is waiting). Events held behind a retry or a dead event are not
   * counted; `outboxStats()` gives the database-wide view.
   */
  readonly lagMs: number
  /**
   * Partitions held (gauge): 0 once the leases have run out by the relay's clock without a
   * renewal (its database unreachable), since another relay may have taken them over.
   */
  readonly ownedPartitions: number
  /** The publisher circuit breaker's state. */
  readonly breakerState: CircuitState
  /** The relay's state. */
  readonly state: RelayState
}

/** A running outbox relay; see {@link createRelay}. */
export interface Relay {
  /** This relay's id in the lease tables. */
  readonly id: string
  /** The lifecycle state. */
  readonly state: RelayState
  /** Typed events: publishes, failures, dead letters, partition changes, errors. */
  readonly events: EventSource<RelayEvent>
  /** The circuit breaker around the publisher. */
  readonly breaker: CircuitBreaker
  /**
   * Registers, claims a fair share of partitions and starts publishing. Rejects if the first
   * lease round fails (for example, the outbox migrations have not run).
   *
   * If another live relay instance (another process) holds this relay's id, waits until that
   * heartbeat's expiry (at most `leaseMs`): a crashed relay restarted with its id comes up
   * then; if the holder renewed meanwhile, rejects with `RelayIdInUseError`
   * (`RELAY_ID_IN_USE`). After {@link Relay.stop} (or a crash) rejects with
   * `RelayStoppedError` (`RELAY_STOPPED`): a relay runs once, create a new one.
   */
  start(): Promise<void>
  /**
   * Stops gracefully: no new batch starts, the batch in hand is published and marked (or
   * fails), a retention run under way ends after its current delete, then the partitions are
   * released for other relays. Nothing is published half-way, and once it resolves the relay
   * sends no more statements, so the database can be closed.
   */
  stop(): Promise<void>
  /** Same as {@link Relay.stop}. */
  close(): Promise<void>
  /** Asks for a read now (e.g. after a commit in the same process on SQLite). */
  wake(): void
  /**
   * The partitions held, ascending: those whose lease is still running by the relay's clock.
   * Empty once the leases ran out without a renewal (its database unreachable past `leaseMs`),
   * as `metrics().ownedPartitions` is 0 then: another relay may hold them, and this one
   * publishes nothing of them until a renewal says which it still holds.
   */
  partitions(): number[]
  /** Counters and gauges, read in-process (the relay process serves them at /metrics). */
  metrics(): RelayMetrics
}

const publishedChannel = diagnosticsChannel('outbox', 'published')
const deadLetteredChannel = diagnosticsChannel('outbox', 'dead-lettered')

// The first wait before reading again when rows are held back by a running transaction; it
// doubles per read that still finds them held, up to maxPollIntervalMs.
const horizonRecheckMs = 10

// How often a relay unparks the rows of its partitions parked behind an event that is no longer
// held without having been published through this release (see sql.ts, unparkStale): a safety
// net for rows a relay of the previous release, a hand edit or a lost race left parked. It walks
// every parked row of the partitions, so it is rare; such rows wait up to this long.
const unparkSweepEveryMs = 60_000

// A read that found rows held back reads this many times a round next, so that the rows queued
// behind a dead event are parked in few reads; the free rows beyond a round are left for the
// next read. A read that found none reads a round, so the usual read costs what it always did.
const parkingReadFactor = 8

/** The ids of a round's rows confirmed by the broker, waiting for their mark, and when it was read. */
interface MarkRound {
  readonly ids: ReadonlyArray<number | string>
  readonly startedAt: number
}

/** What a read found: the rows to publish (at most a round), and the ids of rows held back. */
interface ReadResult {
  readonly rows: OutboxRow[]
  readonly held: ReadonlyArray<number | string>
}

// Thrown through the loop when the fault hook simulated a crash.
class Halt extends Error {}

const sameClock = 'the relay uses its own clock for everything: set relay.clock'

/**
 * Refuses a field the relay sets itself. Accepted, it would be dropped without a word (a test's
 * ManualClock given to `retention` alone, say, would drive nothing); `undefined` is absent.
 */
function refuseOwnField(option: string, value: unknown, why: string): void {
  if (value !== undefined) throw new InvalidOptionError(option, `undefined (${why})`, value)
}

/** The keys RelayOptions takes (internal: not exported from the package root). */
export const relayOptions = optionKeys<RelayOptions>({
  db: true,
  publisher: true,
  batchSize: true,
  ordering: true,
  leaseMs: true,
  publishTimeoutMs: true,
  pollIntervalMs: true,
  maxPollIntervalMs: true,
  listen: true,
  keepAlive: true,
  maxAttempts: true,
  maxPayloadBytes: true,
  retryBackoff: true,
  circuitBreaker: true,
  retention: true,
  faults: true,
  relayId: true,
  clock: true,
})

/** The keys RelayRetentionOptions takes (internal: not exported from the package root). */
export const retentionOptions = optionKeys<RelayRetentionOptions>({
  olderThanMs: true,
  batchSize: true,
  archive: true,
  everyMs: true,
})

/**
 * True for failures that are a message's own fault rather than the broker's health.
 *
 * `BROKER_MISCONFIGURED` (a refused login, vhost or permission, a stream or exchange with other
 * settings) is never the message's fault: with nothing else going through it is an outage
 * (back off, the breaker opens, no event charged), and only when other events of the same
 * round were confirmed (a permission that refuses one topic) is it charged like an unclear
 * failure, so that topic's events end dead-lettered (and redrivable) instead of holding back
 * every other topic.
 */
function isMessageFault(error: unknown): boolean {
  if (BreakwaterError.is(error)) {
    if (
      error.code === 'BROKER_REJECTED' ||
      error.code === 'STORED_DATA_INVALID' ||
      error.code === 'PAYLOAD_TOO_LARGE'
    )
      return true
    if (error.code === 'ABORTED' || error.code === 'BROKER_MISCONFIGURED') return false
  }
  return classifyFailure(error) === 'permanent'
}

/**
 * True for `BROKER_UNROUTABLE`: the broker answered that nothing takes the topic (no RabbitMQ
 * queue bound to it, no JetStream stream for the subject). That is an answer, so the broker is
 * up: the failure does not count against the relay's circuit breaker, and a pause that only
 * such failures caused ends when a new event is enqueued. Still not the event's own fault
 * (a queue may be bound later): it is charged only once other events go through.
 *
 * Why: one event of a topic nobody had bound yet, retried alone, opened the breaker every few
 * seconds and held back every other event for its cooldown, and since it was never charged
 * while nothing else went through, that went on for as long as traffic was sparse. (On NATS a
 * 503 also comes when JetStream itself is off: every publish then fails, and the relay still
 * backs off, as for any round with nothing confirmed, without the breaker.)
 */
function isUnroutable(error: unknown): boolean {
  return BreakwaterError.is(error) && error.code === 'BROKER_UNROUTABLE'
}

function isPayloadTooLarge(error: unknown): boolean {
  return BreakwaterError.is(error) && error.code === 'PAYLOAD_TOO_LARGE'
}

function isCircuitRejection(error: unknown): boolean {
  return (
    BreakwaterError.is(error) &&
    (error.code === 'BROKEN_CIRCUIT' || error.code === 'ISOLATED_CIRCUIT')
  )
}

function errorText(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error)
  const cut = text.length > 2000 ? `${text.slice(0, 2000)}…` : text
  // Stored in last_error: PostgreSQL text cannot hold NUL, and the charge that failed on it
  // left the event uncharged, so it was never dead-lettered and held back its aggregate for
  // good. (A lone surrogate, such as one the cut leaves, is stored as U+FFFD: harmless here.)
  return cut.replaceAll('\u0000', '\\0')
}

/** What charging an event for a failed publish reads of its row: no payload. */
type ChargedRow = Pick<OutboxRow, 'id' | 'event_id' | 'aggregate_id' | 'attempts'>

interface WaveResult {
  readonly ok: OutboxRow[]
  readonly charged: Array<{ readonly row: ChargedRow; readonly error: unknown }>
  /** The broker looks down (or the breaker is open): stop this round and back off. */
  readonly outage: boolean
  readonly retryAfterMs: number
}

/**
 * Splits a batch (in id order) into waves: wave n holds the n-th event of each aggregate, each
 * wave still in id order, so no aggregate has two events in flight at once.
 */
export function splitIntoWaves<R extends { readonly aggregate_id: string }>(
  rows: readonly R[],
): R[][] {
  const waves: R[][] = []
  const depth = new Map<string, number>()
  for (const row of rows) {
    const d = depth.get(row.aggregate_id) ?? 0
    depth.set(row.aggregate_id, d + 1)
    let wave = waves[d]
    if (wave === undefined) {
      wave = []
      waves[d] = wave
    }
    wave.push(row)
  }
  return waves
}

/** `start()` was called on a relay after `stop()` (or after it crashed): a relay runs once. */
export class RelayStoppedError extends BreakwaterError {
  /** The relay's id. */
  readonly relayId: string

  constructor(relayId: string) {
    super(
      'RELAY_STOPPED',
      `relay '${relayId}' was stopped (or crashed) and cannot start again; create a new relay`,
    )
    this.relayId = relayId
  }
}

class OutboxRelay implements Relay {
  readonly id: string
  readonly events = new EventSource<RelayEvent>()
  readonly breaker: CircuitBreaker
  readonly #db: SqlDriver
  readonly #sql: OutboxStatements
  readonly #publisher: Publisher
  readonly #clock: Clock
  readonly #batchSize: number
  // Rows read per round: half the batch, so a round's mark overlaps the next round.
  readonly #roundSize: number
  readonly #ordering: RelayOrdering
  readonly #leaseMs: number
  readonly #publishTimeoutMs: number
  readonly #pollMs: number
  readonly #maxPollMs: number
  readonly #listen: boolean
  readonly #maxAttempts: number
  readonly #maxPayloadBytes: number
  readonly #backoff: Backoff
  /** The longest wait a broker's `retryAfterMs` gets: retryBackoff.maxDelayMs. */
  readonly #maxRetryAfterMs: number
  readonly #retention: ReturnType<typeof resolvePruneOptions> | undefined
  readonly #retentionEveryMs: number
  readonly #faults: RelayFaults | undefined
  readonly #leases: PartitionLeases
  readonly #waker: Waker
  readonly #stop = new AbortController()
  // Aborted by stop(): ends start()'s wait for a relay id held by another instance.
  readonly #startAbort = new AbortController()
  #state: RelayState = 'new'
  #starting: Promise<void> | undefined
  #stopping: Promise<void> | undefined
  #loop: Promise<void> = Promise.resolve()
  #unlisten: Unlisten | undefined
  #renewTimer: TimerHandle | undefined
  #retentionTimer: TimerHandle | undefined
  // The retention run under way: stop() waits for it, a crash leaves it behind.
  #pruning: Promise<void> | undefined
  #timersStopped = false
  // Aggregates whose head event failed with an unclear error; see #publishBatch. Without the
  // payload: suspects outlive their round, and while every publish fails without an outage
  // being concluded, each round adds its events, up to one per pending aggregate.
  readonly #suspects = new Map<string, { readonly row: ChargedRow; readonly error: unknown }>()
  // Aggregates whose last attempt failed, oldest first; see #publishBatch.
  readonly #recentFailures = new Set<string>()
  #nextRebalanceAt = 0
  // The mark under way (one statement at a time), its rows, the confirmed rows waiting for the
  // next statement, and the first failure of a background mark, raised in the loop.
  #marking: Promise<void> | undefined
  // Ids only: a row's payload (up to maxPayloadBytes) is not needed once it was published,
  // and whole rows kept up to batchSize less a round of payloads alive for the mark.
  #markingIds: Array<number | string> = []
  #toMark: MarkRound[] = []
  #toMarkCount = 0
  #markFailure: { readonly error: unknown } | undefined
  // Marks committed, and those the loop has passed the after-mark fault point for.
  #marksDone = 0
  #marksReported = 0
  // Rounds handed to the marker, and those whose mark statement has ended (committed or
  // failed), in the order they were handed over: the loop's failure backoff is reset once the
  // rounds of a cycle that ended cleanly are settled with no failure (see #run).
  #roundsQueued = 0
  #roundsSettled = 0
  // The next round, read while the current one is published (see #publishBatch).
  #ahead: Promise<ReadResult> | undefined
  // Rows a read asks for: a round, or more while reads find rows held back (see
  // parkingReadFactor).
  #readLimit = 0
  // When the next sweep of stale parked rows is due (see unparkSweepEveryMs).
  #nextSweepAt = 0
  #published = 0
  #publishFailures = 0
  // The last failure the breaker counted (its `failure` event), named by the refusals of the
  // open circuit: the breaker's own error says only how long it stays open.
  #lastCounted: { readonly reason: 'error' | 'slow'; readonly error: unknown } | undefined
  #deadLettered = 0
  #batches = 0
  #lagMs = 0

  constructor(options: RelayOptions) {
    checkObject('relay', options)
    // A misspelt maxAttempts or leaseMs was dropped without a word and its default used.
    checkOptionKeys('relay', options, relayOptions)
    const db = options.db
    checkSqlExecutor('relay.db', db, 'a SqlDriver')
    this.#db = db
    this.#sql = outboxStatements[db.dialect]
    const publisher = options.publisher
    if (
      typeof publisher !== 'object' ||
      publisher === null ||
      typeof publisher.publish !== 'function'
    )
      throw new InvalidOptionError('relay.publisher', 'a Publisher', publisher)
    this.#publisher = publisher
    const clock = wholeMsClock(checkClock('relay.clock', options.clock))
    this.#clock = clock
    this.#batchSize = checkInteger('relay.batchSize', options.batchSize ?? 256, 1, 10_000)
    this.#roundSize = Math.max(1, Math.floor(this.#batchSize / 2))
    this.#readLimit = this.#roundSize
    this.#ordering = checkOneOf('relay.ordering', options.ordering ?? 'confirmed', [
      'confirmed',
      'batch',
    ])
    this.#leaseMs = checkInteger('relay.leaseMs', options.leaseMs ?? 10_000, 30, maxTimerDelayMs)
    this.#publishTimeoutMs = checkInteger(
      'relay.publishTimeoutMs',
      options.publishTimeoutMs ?? Math.min(5_000, Math.floor(this.#leaseMs / 2)),
      1,
      Math.floor(this.#leaseMs / 2),
    )
    this.#pollMs = checkInteger(
      'relay.pollIntervalMs',
      options.pollIntervalMs ?? 20,
      1,
      maxTimerDelayMs,
    )
    if (options.listen !== undefined && typeof options.listen !== 'boolean')
      throw new InvalidOptionError('relay.listen', 'a boolean', options.listen)
    this.#listen = (options.listen ?? true) && typeof db.listen === 'function'
    if (options.keepAlive !== undefined && typeof options.keepAlive !== 'boolean')
      throw new InvalidOptionError('relay.keepAlive', 'a boolean', options.keepAlive)
    this.#maxPollMs = checkInteger(
      'relay.maxPollIntervalMs',
      options.maxPollIntervalMs ?? Math.max(this.#pollMs, this.#listen ? 1_000 : 250),
      this.#pollMs,
      maxTimerDelayMs,
    )
    this.#maxAttempts = checkInteger('relay.maxAttempts', options.maxAttempts ?? 10, 1)
    this.#maxPayloadBytes = checkInteger(
      'relay.maxPayloadBytes',
      options.maxPayloadBytes ?? defaultMaxPayloadBytes,
      1,
    )
    const backoff = checkObject('relay.retryBackoff', options.retryBackoff ?? {})
    // resolveBackoff does not look at unknown keys (retry() hands it all of its options).
    checkOptionKeys('relay.retryBackoff', backoff, backoffOptions)
    const backoffSettings: BackoffOptions = { baseDelayMs: 100, ...(backoff as BackoffOptions) }
    this.#backoff = resolveBackoff('relay.retryBackoff', backoffSettings)
    // resolveBackoff's default cap (it checked a given one).
    this.#maxRetryAfterMs =
      backoffSettings.maxDelayMs ?? Math.max(30_000, backoffSettings.baseDelayMs ?? 100)
    const breakerOptions = checkObject('relay.circuitBreaker', options.circuitBreaker ?? {})
    refuseOwnField('relay.circuitBreaker.clock', breakerOptions.clock, sameClock)
    refuseOwnField(
      'relay.circuitBreaker.isFailure',
      breakerOptions.isFailure,
      "the relay decides: a message's own fault never counts",
    )
    this.breaker = withOptionPrefix('relay', () =>
      circuitBreaker({
        window: { kind: 'consecutive', failures: 5 },
        cooldownMs: 5_000,
        name: 'outbox-relay',
        ...breakerOptions,
        clock,
        isFailure: (error) => !isMessageFault(error) && !isUnroutable(error),
      }),
    )
    this.breaker.events.on((event) => {
      if (event.type === 'failure') this.#lastCounted = event
      else if (event.type === 'stateChange' && event.to === 'closed') this.#lastCounted = undefined
    })
    if (options.retention === false) {
      this.#retention = undefined
      this.#retentionEveryMs = 0
    } else {
      const retention = checkObject('relay.retention', options.retention ?? {})
      this.#retentionEveryMs = checkInteger(
        'relay.retention.everyMs',
        retention.everyMs ?? 60_000,
        1,
        maxTimerDelayMs,
      )
      refuseOwnField('relay.retention.clock', retention.clock, sameClock)
      refuseOwnField(
        'relay.retention.maxBatches',
        retention.maxBatches,
        'a relay run has no batch budget: see everyMs',
      )
      // After the two above, which say why those are not the relay's to take.
      checkOptionKeys('relay.retention', retention, retentionOptions)
      const { everyMs: _ignored, ...prune } = retention as RelayRetentionOptions
      // No batch budget: a run goes on while batches come back full (see RelayRetentionOptions).
      this.#retention = {
        ...resolvePruneOptions('relay.retention', { ...prune, clock }),
        maxBatches: Number.POSITIVE_INFINITY,
      }
    }
    this.#faults =
      options.faults === undefined
        ? undefined
        : checkFunction<RelayFaults>('relay.faults', options.faults)
    // The key of the relay's heartbeat row and the owner of its partitions: text PostgreSQL
    // cannot store (NUL) or index (too long) failed start() with a bare driver error, and a
    // lone surrogate, stored as U+FFFD, made two relay ids one.
    this.id = checkStoredKey('relay.relayId', options.relayId ?? randomUUID())
    this.#leases = new PartitionLeases(db, this.id, clock, this.#leaseMs)
    // The system clock unrefs its timers, and on SQLite nothing else holds the process (no
    // LISTEN connection): a started relay idles in the waker, whose waits are referenced so it
    // runs until stopped, as a listening server does. A stopped relay waits no more.
    this.#waker = new Waker(clock, options.keepAlive ?? true)
  }

  get state(): RelayState {
    return this.#state
  }

  partitions(): number[] {
    return this.#leasesRunning() ? this.#leases.partitions : []
  }

  // What partitions() and ownedPartitions call held: a lease still running by this relay's
  // clock. Cut off from its database, the relay keeps its list until it learns which were taken
  // over, but once its leases have run out another relay may hold them: two relays reporting
  // the same partitions made an alert on their sum see more than there are.
  #leasesRunning(): boolean {
    return this.#clock.now() < this.#leases.validUntil
  }

  wake(): void {
    this.#waker.wake()
  }

  metrics(): RelayMetrics {
    return {
      published: this.#published,
      publishFailures: this.#publishFailures,
      deadLettered: this.#deadLettered,
      batches: this.#batches,
      lagMs: this.#lagMs,
      ownedPartitions: this.#leasesRunning() ? this.#leases.size : 0,
      breakerState: this.breaker.state,
      state: this.#state,
    }
  }

  start(): Promise<void> {
    // A relay runs once: its leases are released and its breaker disposed at stop, so a start
    // after stop (or a crash) would do nothing; say so rather than resolve as if it ran.
    if (this.#stopping !== undefined || this.#state === 'crashed') {
      return Promise.reject(new RelayStoppedError(this.id))
    }
    this.#starting ??= this.#start()
    return this.#starting
  }

  async #start(): Promise<void> {
    if (this.#state !== 'new') return
    this.#state = 'running'
    try {
      await this.#leases.register(async (ms) => {
        try {
          await sleep(this.#clock, ms, this.#startAbort.signal)
        } catch {
          throw new RelayStoppedError(this.id)
        }
      })
      await this.#rebalance()
    } catch (error) {
      this.#state = 'stopped'
      this.breaker.dispose()
      throw error
    }
    if (this.#listen) {
      try {
        this.#unlisten = await this.#db.listen!(OUTBOX_CHANNEL, () => this.#waker.wake())
      } catch (error) {
        // Polling still works; LISTEN only shortens the wait.
        this.#emit({ type: 'error', phase: 'listen', error })
      }
    }
    // The loop and timers run in breakwater's own async context, never the caller's of start()
    // (a deadline set around an application's startup would otherwise bound every publish).
    detached(() => {
      this.#scheduleRenewal()
      this.#scheduleRetention()
    })
    this.#emit({ type: 'started', relayId: this.id })
    this.#loop = detached(() => this.#run())
  }

  close(): Promise<void> {
    return this.stop()
  }

  stop(): Promise<void> {
    if (this.#stopping !== undefined) return this.#stopping
    this.#startAbort.abort()
    this.#stopping = this.#stopGracefully()
    return this.#stopping
  }

  async #stopGracefully(): Promise<void> {
    if (this.#starting !== undefined) await this.#starting.catch(() => {})
    if (this.#state === 'new') {
      this.#state = 'stopped'
      this.breaker.dispose()
      return
    }
    if (this.#state !== 'running') return
    this.#state = 'stopping'
    this.#stop.abort()
    await this.#windDown({ release: true, last: { type: 'stopped' } })
  }

  /**
   * The end of a stop, once the loop was told to stop: waits for its batch, clears the timers,
   * lets a retention run under way end after its current batch (the caller may close the
   * database as soon as stop() resolves), stops listening, releases the leases when they are
   * still this relay's (`release`), and emits `last`.
   */
  async #windDown(options: {
    readonly release: boolean
    readonly last: RelayEvent
  }): Promise<void> {
    await this.#loop
    if (this.#state !== 'stopping') return // crashed while finishing the batch
    this.#clearTimers()
    await this.#pruning
    await this.#unlisten?.().catch(() => {})
    if (options.release) {
      try {
        await this.#leases.releaseAll()
      } catch (error) {
        // The leases simply run out; another relay takes over a little later.
        this.#emit({ type: 'error', phase: 'lease', error })
      }
    }
    this.breaker.dispose()
    this.#state = 'stopped'
    this.#emit(options.last)
  }

  #halt(point: RelayFaultPoint, error: unknown): never {
    this.#state = 'crashed'
    this.#stop.abort()
    this.#clearTimers()
    // As if the process died here: a lease operation already queued sends nothing more.
    this.#leases.retire(new RelayStoppedError(this.id))
    void this.#unlisten?.().catch(() => {})
    this.breaker.dispose()
    this.#emit({ type: 'crashed', point, error })
    throw new Halt()
  }

  /**
   * Another instance holds this relay's id (this one stalled past its heartbeat): it can never
   * get the id back while that one lives, so it stops for good instead of running on, publishing
   * nothing. Its partitions are already lost (their tokens were bumped at the takeover) and its
   * heartbeat row is the other instance's: nothing is released.
   */
  #idTakenOver(error: RelayIdInUseError): void {
    if (this.#state !== 'running') return
    this.#state = 'stopping'
    this.#stop.abort()
    this.#startAbort.abort()
    // No renewal can do any good now (the leases refuse every later one anyway): none is
    // scheduled while the loop finishes its batch.
    this.#clearTimers()
    if (error.lost.length > 0) this.#reportChange({ claimed: [], released: [], lost: error.lost })
    this.#stopping = this.#windDown({ release: false, last: { type: 'failed', error } })
    this.#stopping.catch(() => {})
  }

  #clearTimers(): void {
    this.#timersStopped = true
    if (this.#renewTimer !== undefined) this.#clock.clearTimeout(this.#renewTimer)
    if (this.#retentionTimer !== undefined) this.#clock.clearTimeout(this.#retentionTimer)
    this.#renewTimer = undefined
    this.#retentionTimer = undefined
  }

  #active(): boolean {
    return this.#state === 'running' || this.#state === 'stopping'
  }

  #emit(event: RelayEvent): void {
    if (this.events.hasListeners) this.events.emit(event)
  }

  async #fault(point: RelayFaultPoint): Promise<void> {
    if (this.#faults === undefined) return
    try {
      await this.#faults(point)
    } catch (error) {
      this.#halt(point, error)
    }
    if (this.#state === 'crashed') throw new Halt()
  }

  // Renewal runs on its own timer, not in the loop, so a slow publish never lets leases lapse.
  #scheduleRenewal(): void {
    if (this.#timersStopped) return
    this.#renewTimer = this.#clock.setTimeout(() => {
      this.#renewTimer = undefined
      if (!this.#active() || this.#timersStopped) return
      this.#leases
        .renew()
        .then((lost) => {
          if (lost.length > 0) this.#reportChange({ claimed: [], released: [], lost })
        })
        .catch((error: unknown) => {
          if (error instanceof RelayIdInUseError) this.#idTakenOver(error)
          // A renewal under way when the relay crashed: nothing to report after 'crashed'.
          else if (this.#state !== 'crashed') this.#emit({ type: 'error', phase: 'lease', error })
        })
        .finally(() => {
          if (this.#active()) this.#scheduleRenewal()
        })
    }, this.#rebalanceEveryMs)
  }

  // Leases are renewed, and partitions rebalanced, three times per lease.
  get #rebalanceEveryMs(): number {
    return Math.max(1, Math.floor(this.#leaseMs / 3))
  }

  #scheduleRetention(): void {
    if (this.#retention === undefined || this.#timersStopped) return
    this.#retentionTimer = this.#clock.setTimeout(() => {
      this.#retentionTimer = undefined
      if (this.#state !== 'running') return
      this.#scheduleRetention()
      if (this.#pruning !== undefined) return
      // stop() (and a crash) aborts the signal: no batch starts after it. The run yields to
      // the event loop between batches (removeInBatches does, src/stores/batches.ts): on SQLite
      // a batch resolves without I/O, and a long run would otherwise hold up the relay's reads,
      // marks and lease renewals until it ended.
      this.#pruning = prunePublished(this.#db, this.#retention!, this.#stop.signal)
        .then((count) => {
          if (count > 0 && this.#state !== 'crashed') this.#emit({ type: 'pruned', count })
        })
        .catch((error: unknown) => {
          if (this.#state !== 'crashed') this.#emit({ type: 'error', phase: 'retention', error })
        })
        .finally(() => {
          this.#pruning = undefined
        })
    }, this.#retentionEveryMs)
  }

  async #rebalance(): Promise<void> {
    this.#nextRebalanceAt = this.#clock.now() + this.#rebalanceEveryMs
    const { recreated, ...change } = await this.#leases.rebalance()
    if (recreated > 0) this.#emit({ type: 'partitionsRecreated', count: recreated })
    if (change.claimed.length + change.released.length + change.lost.length > 0) {
      this.#reportChange(change)
    }
  }

  #reportChange(change: LeaseChange): void {
    this.#emit({ type: 'partitionsChanged', owned: this.#leases.partitions, ...change })
  }

  // Enough lease left to finish a publish call that starts now.
  #leaseUsable(): boolean {
    return this.#clock.now() + this.#publishTimeoutMs < this.#leases.validUntil
  }

  #outage(error: unknown): WaveResult {
    return { ok: [], charged: [], outage: true, retryAfterMs: this.#waitAskedBy(error) }
  }

  // The wait a failed publish asks for before the next round. An open breaker says how long
  // it stays open. A broker's error may carry the wait its server asked for (`retryAfterMs`,
  // read as the retry policy reads it: a webhook's 429 or 503 with Retry-After). Without it a
  // receiver that rate-limits was hit again after the relay's own 100 ms backoff: the
  // publisher gives up at once on a Retry-After beyond the publish deadline, so nobody waited.
  // Capped at retryBackoff.maxDelayMs: one header must not stall the relay for hours.
  #waitAskedBy(error: unknown): number {
    if (error instanceof BrokenCircuitError) return error.retryAfterMs
    const askedMs = retryAfterMsOf(error, this.#clock.now())
    return askedMs === undefined ? 0 : Math.min(askedMs, this.#maxRetryAfterMs)
  }

  // A backoff pause: only stop() ends it early (notifications must not cut an outage short).
  async #pause(delayMs: number): Promise<void> {
    try {
      await sleep(this.#clock, delayMs, this.#stop.signal)
    } catch {
      // Stopped.
    }
  }

  async #run(): Promise<void> {
    let idleMs = this.#pollMs
    let horizonMs = horizonRecheckMs
    // Whether the last empty read found rows held back by the horizon.
    let heldBack = false
    let failedRounds = 0
    // Failed cycles in a row (a read, mark, charge or lease statement that threw): the pause
    // after each grows. Reset only once a cycle went through entirely, its marks included: a
    // mark that keeps failing (the role lost UPDATE) fails every other cycle while the reads
    // succeed, and resetting after each read kept the pause at its base, so the relay
    // republished the same events several times a second for ever.
    let dbFailures = 0
    // Set when a cycle ended cleanly: the rounds queued by then, whose marks must settle
    // without a failure before dbFailures is reset.
    let cleanUpTo: number | undefined
    while (this.#state === 'running') {
      if (
        cleanUpTo !== undefined &&
        this.#roundsSettled >= cleanUpTo &&
        this.#markFailure === undefined
      ) {
        dbFailures = 0
        cleanUpTo = undefined
      }
      // Whether this cycle went through (a publish failure or an outage is not a clean one).
      let clean = true
      try {
        this.#resumeMarks()
        await this.#reportMarks()
        if (this.#rebalanceLeftMs() <= 0) {
          // Marks are fenced by the lease: finish them before partitions may be released. A
          // round read ahead may hold rows of partitions that change hands: read again.
          this.#dropAhead()
          await this.#settleMarks(0)
          await this.#rebalance()
        }
        if (this.#leases.size === 0 || !this.#leaseUsable()) {
          this.#dropAhead()
          this.#lagMs = 0
          await this.#waker.wait(this.#untilRebalance(), this.#stop.signal)
          continue
        }
        await this.#sweepParked()
        let read: ReadResult
        const ahead = this.#ahead
        this.#ahead = undefined
        if (ahead !== undefined) {
          // Read during the last round's publish, which passed before-claim for it.
          read = await ahead
        } else {
          await this.#fault('before-claim')
          // stop() asked for before this batch was taken: take none.
          if (this.#state !== 'running') break
          read = await this.#readBatch()
        }
        await this.#fault('after-claim')
        const rows = read.rows
        // Sent here, with no publish out: every mark that may run meanwhile is known (#park).
        const parked = read.held.length > 0 ? await this.#park(read.held) : 0
        // Only held rows, now parked: the next read goes past them, to rows that may be free.
        if (rows.length === 0 && parked > 0) continue
        if (rows.length > 0) {
          const since = oldest(rows)
          // None can be read: no age to tell, the last one measured is kept.
          if (since !== undefined) this.#lagMs = Math.max(0, this.#clock.now() - since)
        } else if (this.#suspects.size === 0) this.#lagMs = 0
        if (rows.length === 0 && this.#suspects.size > 0) {
          // Nothing else to try: with no other event going through, the suspects' failures
          // may well be the broker's. Nobody is charged; they are retried after a backoff, at
          // least as long as any of their failures asked for.
          let delayMs = this.#backoff.delayMs(failedRounds++)
          let unroutableOnly = true
          for (const { error } of this.#suspects.values()) {
            delayMs = Math.max(delayMs, this.#waitAskedBy(error))
            if (!isUnroutable(error)) unroutableOnly = false
          }
          this.#suspects.clear()
          clean = false
          // The broker answered (see isUnroutable): a new event need not wait.
          if (unroutableOnly) await this.#waker.wait(delayMs, this.#stop.signal)
          else await this.#pause(delayMs)
          continue
        }
        if (rows.length === 0) {
          const wasHeldBack = heldBack
          heldBack = await this.#heldBack()
          if (heldBack) {
            // Rows wait for a transaction that is still running (the PostgreSQL horizon). No
            // notification comes when it ends, so look again soon, not after the idle backoff.
            await this.#waker.wait(Math.min(horizonMs, this.#untilRebalance()), this.#stop.signal)
            horizonMs = Math.min(this.#maxPollMs, horizonMs * 2)
            continue
          }
          horizonMs = horizonRecheckMs
          // Rows were held back until now: the transaction may have ended between the read and
          // the check, making them readable. Read once more before going idle.
          if (wasHeldBack) continue
          await this.#waker.wait(Math.min(idleMs, this.#untilRebalance()), this.#stop.signal)
          idleMs = Math.min(this.#maxPollMs, idleMs * 2)
          continue
        }
        idleMs = this.#pollMs
        horizonMs = horizonRecheckMs
        heldBack = false
        const failure = await this.#publishBatch(rows)
        if (failure === undefined) {
          failedRounds = 0
          // On SQLite (better-sqlite3 is synchronous) with an in-database queue, a whole round
          // settles in microtasks: without this, a backlog would starve timers, signals and I/O
          // of the relay's process until the outbox is empty.
          await yieldToEventLoop()
        } else {
          const delay = Math.max(this.#backoff.delayMs(failedRounds), failure.retryAfterMs)
          failedRounds++
          clean = false
          await this.#pause(delay)
        }
      } catch (error) {
        if (error instanceof Halt || !this.#active()) return
        if (error instanceof RelayIdInUseError) {
          this.#idTakenOver(error)
          break
        }
        // A round cut short by a failure: what was read ahead of it is read again.
        this.#dropAhead()
        this.#emit({ type: 'error', phase: phaseOf(error), error: causeOf(error) })
        clean = false
        cleanUpTo = undefined
        await this.#pause(this.#backoff.delayMs(dbFailures))
        dbFailures++
      } finally {
        // Also on continue: an idle or held-back cycle is a clean one.
        if (clean) cleanUpTo = this.#roundsQueued
      }
    }
    // Stopping: a round read ahead is not published; the rounds in hand are marked before the
    // leases go.
    this.#dropAhead()
    try {
      await this.#settleMarks(0)
    } catch (error) {
      if (error instanceof Halt || !this.#active()) return
      // Unmarked rows are published again by whoever holds their partition next.
      this.#emit({ type: 'error', phase: phaseOf(error), error: causeOf(error) })
    }
  }

  #dropAhead(): void {
    void this.#ahead?.catch(() => {})
    this.#ahead = undefined
  }

  /** Rows confirmed by the broker and not yet marked (being marked, or waiting to be). */
  #unmarked(): number {
    return this.#markingIds.length + this.#toMarkCount
  }

  /**
   * Waits until at most `limit` rows are confirmed and unmarked; raises a background mark's
   * failure (as the loop's `mark` error) and a crash at `after-mark`.
   */
  async #settleMarks(limit: number): Promise<void> {
    for (;;) {
      if (this.#markFailure !== undefined) {
        const { error } = this.#markFailure
        this.#markFailure = undefined
        throw error
      }
      if (this.#state === 'crashed') throw new Halt()
      this.#resumeMarks()
      if (this.#unmarked() <= limit || this.#marking === undefined) break
      await this.#marking
    }
    await this.#reportMarks()
  }

  // The after-mark fault point, passed by the loop between steps (never while a publish is
  // out) once per committed mark statement.
  async #reportMarks(): Promise<void> {
    while (this.#marksReported < this.#marksDone) {
      this.#marksReported++
      await this.#fault('after-mark')
    }
  }

  /** Hands confirmed rows to the marker: marked by the next statement, in the background. */
  #queueMark(rows: readonly OutboxRow[], startedAt: number): void {
    this.#toMark.push({ ids: rows.map((row) => row.id), startedAt })
    this.#toMarkCount += rows.length
    this.#roundsQueued++
    if (this.#marking === undefined) this.#startMark()
  }

  /**
   * After a failed mark, the rounds queued behind it wait (no statement follows a failure at
   * once): once the loop has raised the failure and backed off, they are marked by the next
   * statement, even if no new round comes to start one.
   */
  #resumeMarks(): void {
    if (this.#marking === undefined && this.#markFailure === undefined) this.#startMark()
  }

  #startMark(): void {
    if (this.#toMark.length === 0 || this.#state === 'crashed') return
    const rounds = this.#toMark
    this.#toMark = []
    this.#toMarkCount = 0
    this.#markingIds = rounds.flatMap((round) => round.ids)
    this.#marking = (async () => {
      try {
        await this.#mark(rounds)
        this.#marksDone++
      } catch (error) {
        this.#markFailure ??= { error }
      } finally {
        this.#markingIds = []
        this.#marking = undefined
        // After #markFailure is set: the loop never counts a failed round as settled cleanly.
        this.#roundsSettled += rounds.length
      }
      if (this.#markFailure === undefined) this.#startMark()
    })()
  }

  #untilRebalance(): number {
    return Math.max(1, this.#rebalanceLeftMs())
  }

  // Time left before the next rebalance (<= 0: due), never more than its interval. The due time
  // is wall-clock time, and after the clock stepped back (an NTP correction) it lay as far
  // ahead as the step: an hour's step left the relay waiting an hour, in one timer that setting
  // the clock right again did not shorten, before it looked for free partitions again (with
  // none of its own, it waits for nothing else). The interval is counted from now instead.
  #rebalanceLeftMs(): number {
    const now = this.#clock.now()
    const everyMs = this.#rebalanceEveryMs
    if (this.#nextRebalanceAt - now > everyMs) this.#nextRebalanceAt = now + everyMs
    return this.#nextRebalanceAt - now
  }

  // Rows whose mark is under way or queued: a read must not hand them out again.
  #markPendingIds(publishing: readonly OutboxRow[]): Array<number | string> {
    if (this.#markingIds.length + this.#toMark.length + publishing.length === 0) return []
    const ids: Array<number | string> = publishing.map((row) => row.id)
    for (const id of this.#markingIds) ids.push(id)
    for (const round of this.#toMark) for (const id of round.ids) ids.push(id)
    return ids
  }

  /** Whether pending rows of the relay's partitions wait for the horizon (PostgreSQL). */
  async #heldBack(): Promise<boolean> {
    const sql = this.#sql.heldBack
    if (sql === undefined) return false
    try {
      const rows = await this.#db.query<{ held: boolean }>(sql, [
        listParam(this.#db.dialect, this.#leases.partitions),
      ])
      return rows[0]?.held === true
    } catch (error) {
      throw new PhaseError('read', error)
    }
  }

  // The oldest unparked rows of the relay's partitions, each with the event it is held behind
  // (if any): the free ones, at most a round, are published; the held ones are parked.
  //
  // A read of more than a round (rows were held back at the last one) leaves the payloads out:
  // most of what it finds is only parked by id, or left for the next read, and with them the
  // read carried up to parkingReadFactor rounds of payloads into memory (1,024 rows of 1 MiB
  // with the defaults). The payloads of the rows it keeps, at most a round, are read next.
  async #readBatch(publishing: readonly OutboxRow[] = []): Promise<ReadResult> {
    const withPayloads = this.#readLimit <= this.#roundSize
    let found: ReadRow[]
    try {
      found = await this.#db.query<ReadRow>(this.#sql.readBatch, [
        listParam(this.#db.dialect, this.#leases.partitions),
        this.#clock.now(),
        this.#readLimit,
        listParam(this.#db.dialect, [...this.#suspects.keys()]),
        listParam(this.#db.dialect, this.#markPendingIds(publishing)),
        withPayloads ? 1 : 0,
        this.#maxPayloadBytes,
      ])
    } catch (error) {
      throw new PhaseError('read', error)
    }
    const free: ReadRow[] = []
    const held: Array<number | string> = []
    for (const row of found) {
      // Never published: an earlier event of its aggregate is dead, waiting for a retry or
      // parked (the read checks each row it returns, whatever was parked).
      if (row.held_behind !== null && row.held_behind !== undefined) held.push(row.id)
      else if (free.length < this.#roundSize) free.push(row)
    }
    this.#readLimit =
      held.length > 0 ? Math.min(10_000, this.#roundSize * parkingReadFactor) : this.#roundSize
    const rows = withPayloads ? (free as OutboxRow[]) : await this.#withPayloads(free)
    return { rows, held }
  }

  /**
   * `rows` (read without payloads, in id order) with their payloads. A row gone meanwhile
   * (published by a relay that took its partition over, then pruned) is left out, and so are
   * the later rows of its aggregate in `rows`: the next read decides about them.
   */
  async #withPayloads(rows: readonly ReadRow[]): Promise<OutboxRow[]> {
    if (rows.length === 0) return []
    // Not the payload of a row the read found over the limit: the point was not to load it.
    const wanted = rows.filter((row) => !isOversize(row)).map((row) => row.id)
    let found: Array<{ id: number | string; payload: string }>
    try {
      found =
        wanted.length === 0
          ? []
          : await this.#db.query(this.#sql.payloads, [listParam(this.#db.dialect, wanted)])
    } catch (error) {
      throw new PhaseError('read', error)
    }
    const payloads = new Map(found.map((row) => [String(row.id), row.payload]))
    const missing = new Set<string>()
    const complete: OutboxRow[] = []
    for (const row of rows) {
      const payload = payloads.get(String(row.id))
      if (missing.has(row.aggregate_id)) continue
      // Payload null: toMessage refuses it by its payload_chars, and it is dead-lettered.
      if (isOversize(row)) complete.push(row as OutboxRow)
      else if (payload === undefined) missing.add(row.aggregate_id)
      else complete.push({ ...row, payload })
    }
    return complete
  }

  /**
   * Parks the rows a read found held back, so the next reads skip them; returns how many. The
   * statement checks again that each is held, and skips those held behind an event whose mark
   * is under way (on PostgreSQL that mark may not see the park and leave the row parked behind
   * a published event). Sent from the loop with no publish out, so no mark starts meanwhile for
   * rows not in that list. Fenced by the lease token like a mark: a relay that lost the
   * partition parks nothing.
   */
  async #park(ids: ReadonlyArray<number | string>): Promise<number> {
    try {
      const parked = await this.#db.query<{ id: number | string }>(this.#sql.park, [
        listParam(this.#db.dialect, ids),
        listParam(this.#db.dialect, this.#markPendingIds([])),
        this.id,
        this.#leases.tokens(),
      ])
      return parked.length
    } catch (error) {
      throw new PhaseError('read', error)
    }
  }

  /**
   * Unparks the rows of the relay's partitions parked behind an event no longer held (see
   * unparkStale), at most every unparkSweepEveryMs by the relay's clock, the first time at the
   * relay's first read. A due time further ahead than the interval (the clock stepped back) is
   * brought back, as for rebalancing.
   */
  async #sweepParked(): Promise<void> {
    const now = this.#clock.now()
    const leftMs = this.#nextSweepAt - now
    if (leftMs > 0 && leftMs <= unparkSweepEveryMs) return
    this.#nextSweepAt = now + unparkSweepEveryMs
    try {
      await this.#db.execute(this.#sql.unparkStale, [
        listParam(this.#db.dialect, this.#leases.partitions),
      ])
    } catch (error) {
      throw new PhaseError('read', error)
    }
  }

  /**
   * Publishes a batch; returns undefined when the round made progress, or why it failed.
   *
   * Who is to blame for a failed publish? An error that is the message's own fault
   * (`BROKER_REJECTED`, a permanent error) is charged to the event at once. Any other error is
   * unclear: the broker may be down. The event's aggregate then becomes a suspect: it is set
   * aside (the next reads skip it) while other aggregates are tried. As soon as another event
   * goes through, the broker is known to be up and every suspect is charged one attempt. If
   * nothing else is left to try, or the breaker opens, it was an outage: the suspects are
   * cleared without charge and everything is retried after a backoff.
   *
   * Aggregates that failed recently are sent last and alone, after the rest of their wave: a
   * poison event then never fails the call that carries the healthy events (nor the breaker's
   * half-open probe), and its failure is clearly its own once they went through.
   */
  async #publishBatch(rows: OutboxRow[]): Promise<WaveResult | undefined> {
    const startedAt = this.#clock.now()
    const waves = this.#ordering === 'batch' ? [rows] : splitIntoWaves(rows)
    const confirmed: OutboxRow[] = []
    const charged: WaveResult['charged'] = []
    const suspectsBefore = this.#suspects.size
    // Aggregates with a failure in this batch: their later events wait for the next round.
    const blocked = new Set<string>()
    let failure: WaveResult | undefined
    let attempted = false
    // At most batchSize events confirmed and unmarked at any moment (what a crash republishes).
    await this.#settleMarks(this.#batchSize - rows.length)
    // A full round suggests more waiting: read the next round while this one is out. It skips
    // this round's rows; it is used only if this round goes through entirely, since a failure
    // here must hold back the later events of its aggregate, which the read may hold.
    if (rows.length === this.#roundSize && this.#state === 'running') {
      await this.#fault('before-claim')
      if (this.#state === 'running') {
        const ahead = this.#readBatch(rows)
        // Handled when the loop takes it; a crash or stop may leave it behind.
        ahead.catch(() => {})
        this.#ahead = ahead
      }
    }
    for (const wave of waves) {
      const todo = wave.filter(
        (row) => !blocked.has(row.aggregate_id) && this.#leases.owns(row.partition_no),
      )
      if (todo.length === 0) continue
      // Not enough lease left to finish a publish: the loop renews or rebalances first.
      if (!this.#leaseUsable()) break
      attempted = true
      const clean = todo.filter((row) => !this.#recentFailures.has(row.aggregate_id))
      if (clean.length > 0) {
        const result = await this.#publishWave(clean, blocked)
        confirmed.push(...result.ok)
        charged.push(...result.charged)
        if (result.outage) {
          failure = result
          break
        }
      }
      for (const row of todo) {
        if (!this.#recentFailures.has(row.aggregate_id) || blocked.has(row.aggregate_id)) continue
        if (this.#holdBackWithoutLease(row, blocked)) continue
        try {
          await this.#send([row])
          confirmed.push(row)
        } catch (error) {
          this.#onSendFailure(error, 1)
          if (isCircuitRejection(error)) {
            failure = this.#outage(error)
            break
          }
          blocked.add(row.aggregate_id)
          if (isMessageFault(error) || confirmed.length > 0) charged.push({ row, error })
          else this.#suspect(row, error)
        }
      }
      if (failure !== undefined) break
    }
    if (confirmed.length > 0) {
      await this.#fault('after-publish')
      this.#queueMark(confirmed, startedAt)
      for (const row of confirmed) this.#recentFailures.delete(row.aggregate_id)
      // The broker took other events: the suspects' failures were their own.
      for (const suspect of this.#suspects.values()) charged.push(suspect)
      this.#suspects.clear()
    } else if (failure !== undefined) {
      this.#suspects.clear()
    }
    // Before the charges, which may throw: the round read ahead may hold the next event of an
    // aggregate whose event here was not confirmed, and the loop would publish it next.
    if (confirmed.length !== rows.length) this.#dropAhead()
    for (const { row, error } of charged) {
      this.#noteFailure(row.aggregate_id)
      await this.#charge(row, error)
    }
    const progress =
      confirmed.length > 0 || charged.length > 0 || this.#suspects.size > suspectsBefore
    if (!attempted || progress) return undefined
    return failure ?? { ok: [], charged: [], outage: true, retryAfterMs: 0 }
  }

  #suspect(row: OutboxRow, error: unknown): void {
    const { id, event_id, aggregate_id, attempts } = row
    this.#suspects.set(aggregate_id, { row: { id, event_id, aggregate_id, attempts }, error })
    this.#noteFailure(row.aggregate_id)
  }

  // Remembers (boundedly) that an aggregate's event failed, until one of its events succeeds.
  #noteFailure(aggregateId: string): void {
    this.#recentFailures.delete(aggregateId)
    this.#recentFailures.add(aggregateId)
    if (this.#recentFailures.size > 10_000) {
      const oldest = this.#recentFailures.values().next().value
      if (oldest !== undefined) this.#recentFailures.delete(oldest)
    }
  }

  async #publishWave(rows: OutboxRow[], blocked: Set<string>): Promise<WaveResult> {
    try {
      await this.#send(rows)
      return { ok: rows, charged: [], outage: false, retryAfterMs: 0 }
    } catch (error) {
      this.#onSendFailure(error, rows.length)
      if (isCircuitRejection(error)) return this.#outage(error)
      if (rows.length === 1) {
        const row = rows[0]!
        blocked.add(row.aggregate_id)
        if (isMessageFault(error))
          return { ok: [], charged: [{ row, error }], outage: false, retryAfterMs: 0 }
        this.#suspect(row, error)
        return { ok: [], charged: [], outage: false, retryAfterMs: 0 }
      }
    }
    // Isolation: which event failed the call? Each is sent alone, in order. Three unclear
    // failures before any success look like an outage: stop hammering the broker.
    const ok: OutboxRow[] = []
    const charged: WaveResult['charged'] = []
    let unclear = 0
    for (const row of rows) {
      if (blocked.has(row.aggregate_id)) continue
      if (this.#holdBackWithoutLease(row, blocked)) continue
      try {
        await this.#send([row])
        ok.push(row)
      } catch (error) {
        this.#onSendFailure(error, 1)
        if (isCircuitRejection(error)) return { ...this.#outage(error), ok, charged }
        blocked.add(row.aggregate_id)
        if (isMessageFault(error)) {
          charged.push({ row, error })
        } else {
          this.#suspect(row, error)
          if (ok.length === 0 && ++unclear >= 3) return { ...this.#outage(error), ok, charged }
        }
      }
    }
    return { ok, charged, outage: false, retryAfterMs: 0 }
  }

  // Before each send of a row alone (after a failed call, which may have taken the whole
  // publishTimeoutMs): a send starts only with enough lease left to finish, as a wave does. A
  // row left out blocks its aggregate for the rest of the round, so that no later wave sends
  // its next event first even if a renewal lands meanwhile; the next round reads it again.
  #holdBackWithoutLease(row: OutboxRow, blocked: Set<string>): boolean {
    if (this.#leaseUsable() && this.#leases.owns(row.partition_no)) return false
    blocked.add(row.aggregate_id)
    return true
  }

  #onSendFailure(error: unknown, count: number): void {
    // A refusal by the open circuit reached no broker: counted, each cooldown of an outage
    // counted its failed probe and the refusal of the send after it, twice the failed calls.
    if (!isCircuitRejection(error)) this.#publishFailures++
    this.#emit({ type: 'publishFailed', error, count })
  }

  async #send(rows: readonly OutboxRow[]): Promise<void> {
    const messages = rows.map((row) => toMessage(row, this.#maxPayloadBytes))
    try {
      await this.breaker.execute(({ signal }) => this.#publishWithTimeout(messages, signal))
    } catch (error) {
      if (error instanceof BrokenCircuitError) throw this.#openCircuitError(error)
      throw error
    }
  }

  /**
   * The open circuit's refusal, saying which breaker refused and the failure that opened it
   * (then its `cause`), still a `BrokenCircuitError` (`BROKEN_CIRCUIT`, same `retryAfterMs`).
   * Why: every round of an outage reported only "The circuit is open; retry after N ms", and
   * the broker's own error was in the few events before the circuit opened, long scrolled away.
   */
  #openCircuitError(refusal: BrokenCircuitError): BrokenCircuitError {
    const name = this.breaker.name === undefined ? '' : ` "${this.breaker.name}"`
    const state =
      refusal.retryAfterMs > 0
        ? `is open: nothing is sent to the broker for ${refusal.retryAfterMs} ms more (relay.circuitBreaker.cooldownMs)`
        : 'is half-open with its probe still under way'
    const last = this.#lastCounted
    let why: string
    if (last === undefined) why = 'no failure that opened it is known to this relay'
    else if (last.reason === 'slow')
      why = 'the last failure it counted was a publish slower than relay.circuitBreaker.slowCallMs'
    else why = `the last failure it counted: ${errorText(last.error)}`
    return new BrokenCircuitError(refusal.retryAfterMs, {
      message: `relay: the publisher's circuit breaker${name} ${state}; ${why}`,
      cause: last?.error,
    })
  }

  async #publishWithTimeout(messages: OutgoingMessage[], signal: AbortSignal): Promise<void> {
    const controller = new AbortController()
    const onAbort = (): void => controller.abort(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    let timer: TimerHandle | undefined
    const timedOut = new Promise<never>((_, reject) => {
      timer = this.#clock.setTimeout(() => {
        const error = publishTimeoutError(this.#publishTimeoutMs, messages)
        controller.abort(error)
        reject(error)
      }, this.#publishTimeoutMs)
    })
    try {
      // The publish timeout is also the publish's deadline: a publisher built on breakwater's
      // retry and timeout policies (the webhook publisher) sees it (currentDeadline), clamps
      // its attempts to it and gives up before a retry wait would outlast it, with its own
      // error (a 503, say) rather than this timeout cutting the wait short.
      const publishing = withDeadline(
        this.#publishTimeoutMs,
        () => this.#publisher.publish(messages, controller.signal),
        { clock: this.#clock },
      )
      // A publisher that ignores its signal may settle after the timeout; nobody awaits it then.
      publishing.catch(() => {})
      await Promise.race([publishing, timedOut])
    } finally {
      this.#clock.clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
    }
  }

  // One statement for the rounds confirmed since the last one; each round that had events
  // marked counts as a batch and is reported on its own (count, time since it was read).
  async #mark(rounds: readonly MarkRound[]): Promise<void> {
    const ids = rounds.flatMap((round) => round.ids)
    let marked: Set<number>
    try {
      const result = await this.#db.query<{ id: number | string }>(this.#sql.markPublished, [
        this.#clock.now(),
        listParam(this.#db.dialect, ids),
        this.id,
        this.#leases.tokens(),
      ])
      marked = new Set(result.map((row) => Number(row.id)))
    } catch (error) {
      // Unmarked rows are read and published again: duplicates, never losses.
      throw new PhaseError('mark', error)
    }
    this.#published += marked.size
    if (marked.size < ids.length) {
      // Some partition changed hands while the batch was out: learn which.
      const lost = await this.#leases.renew().catch((error: unknown) => {
        if (error instanceof RelayIdInUseError) this.#idTakenOver(error)
        return [] as number[]
      })
      if (lost.length > 0) this.#reportChange({ claimed: [], released: [], lost })
    }
    const now = this.#clock.now()
    for (const round of rounds) {
      let count = 0
      for (const id of round.ids) if (marked.has(Number(id))) count++
      if (count === 0) continue
      this.#batches++
      this.#emit({ type: 'published', count, durationMs: now - round.startedAt })
      if (publishedChannel.hasSubscribers) publishedChannel.publish({ relayId: this.id, count })
    }
  }

  async #charge(row: ChargedRow, failure: unknown): Promise<void> {
    const now = this.#clock.now()
    const charged = readStoredWholeNumber(row.attempts)
    // A count changed outside breakwater: text made the backoff throw, so the event was never
    // charged and was published again at every round; a negative one retried it for as many
    // rounds. With no count to go by, the event is dead-lettered now, naming the column;
    // attempts is left as it is (redrive sets it to 0). So is a payload above maxPayloadBytes:
    // no attempt can succeed, and each would only wait out the backoff to fail again.
    const error =
      charged === undefined
        ? new StoredDataError(
            outboxPlace(row, 'attempts'),
            `is not a count of attempts (a whole number from 0): ${describeValue(row.attempts)}; failed with ${errorText(failure)}`,
            failure,
          )
        : failure
    const attempts = (charged ?? 0) + 1
    const retryAt = now + Math.ceil(this.#backoff.delayMs(attempts - 1))
    let result: Array<{ attempts: number; dead_at: number | null }>
    try {
      result = await this.#db.query(this.#sql.charge, [
        row.id,
        errorText(error),
        this.#maxAttempts,
        retryAt,
        now,
        this.id,
        this.#leases.tokens(),
        charged === undefined || isPayloadTooLarge(failure) ? 1 : 0,
      ])
    } catch (cause) {
      throw new PhaseError('charge', cause)
    }
    const updated = result[0]
    if (updated === undefined) return // the partition changed hands: its new owner decides
    if (updated.dead_at !== null && updated.dead_at !== undefined) {
      this.#deadLettered++
      const event = {
        type: 'deadLettered' as const,
        eventId: row.event_id,
        aggregateId: row.aggregate_id,
        // Read as the charge read it: a count changed outside breakwater (text, a fraction or
        // a negative number, left as it is by the dead-lettering) is no count, and Number()
        // of it gave NaN or the stray value; the event is still emitted and counted.
        attempts: readStoredWholeNumber(updated.attempts),
        error,
      }
      this.#emit(event)
      if (deadLetteredChannel.hasSubscribers)
        deadLetteredChannel.publish({ relayId: this.id, ...event })
    } else {
      this.#emit({
        type: 'retryScheduled',
        eventId: row.event_id,
        attempts: Number(updated.attempts),
        retryAt,
        error,
      })
    }
  }
}

// Not a timer: it only lets the event loop turn, so a test clock has nothing to drive here.
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

class PhaseError extends Error {
  readonly phase: 'read' | 'mark' | 'charge'
  constructor(phase: 'read' | 'mark' | 'charge', cause: unknown) {
    super(`relay ${phase} failed`, { cause })
    this.phase = phase
  }
}

function phaseOf(error: unknown): 'read' | 'mark' | 'charge' | 'lease' {
  return error instanceof PhaseError ? error.phase : 'lease'
}

function causeOf(error: unknown): unknown {
  return error instanceof PhaseError ? error.cause : error
}

/**
 * The oldest created_at of `rows`, leaving out one that is not a whole number from 0 (changed
 * outside breakwater: text made the lag metric NaN, a negative one a lag of decades); undefined
 * when none can be read.
 */
function oldest(rows: readonly OutboxRow[]): number | undefined {
  let min: number | undefined
  for (const row of rows) {
    const createdAt = readStoredWholeNumber(row.created_at)
    if (createdAt !== undefined && (min === undefined || createdAt < min)) min = createdAt
  }
  return min
}

/**
 * The message the relay publishes for `row`. A payload above `maxPayloadBytes` throws
 * {@link PayloadTooLargeError} before anything is sent: a message fault, dead-lettered at once
 * (see #charge), rather than a write of many megabytes the broker refuses at every attempt.
 */
function toMessage(row: OutboxRow, maxPayloadBytes: number): OutgoingMessage {
  // Left out of the read for more characters than the limit allows bytes: never loaded.
  if (isOversize(row))
    throw new PayloadTooLargeError(
      `event ${JSON.stringify(row.event_id)} (row ${Number(row.id)})`,
      Number(row.payload_chars),
      maxPayloadBytes,
      'relay',
      'characters',
    )
  const bytes =
    typeof row.payload === 'string' ? oversizeBytes(row.payload, maxPayloadBytes) : undefined
  if (bytes !== undefined)
    throw new PayloadTooLargeError(
      `event ${JSON.stringify(row.event_id)} (row ${Number(row.id)})`,
      bytes,
      maxPayloadBytes,
      'relay',
    )
  const headers = storedHeaders(row)
  headers[EVENT_TYPE_HEADER] = row.event_type
  headers[AGGREGATE_TYPE_HEADER] = row.aggregate_type
  return {
    id: row.event_id,
    topic: row.topic,
    key: row.aggregate_id,
    payload: row.payload,
    headers,
  }
}

/** Whether the read left `row`'s payload out as certainly above the relay's limit. */
function isOversize(row: Pick<OutboxRow, 'payload_chars'>): boolean {
  return row.payload_chars !== null && row.payload_chars !== undefined
}

/** Where `column` of an outbox row is stored, for {@link StoredDataError}. */
function outboxPlace(row: Pick<OutboxRow, 'id' | 'event_id'>, column: string): StoredPlace {
  return {
    table: outboxTable,
    row: `row ${Number(row.id)} (event ${JSON.stringify(row.event_id)})`,
    column,
  }
}

/**
 * The row's headers, as `enqueue` stores them (a JSON object of strings). A row changed behind
 * breakwater's back fails with {@link StoredDataError} naming it: a message fault, so the event
 * is charged and dead-lettered like any other poison event. A bare SyntaxError or TypeError
 * was an unclear failure, retried for ever without naming the row.
 */
function storedHeaders(row: OutboxRow): Record<string, string> {
  const where = () => outboxPlace(row, 'headers')
  const headers = parseStoredObject(row.headers, where)
  for (const name of Object.keys(headers)) {
    const value = headers[name]
    if (typeof value !== 'string')
      throw new StoredDataError(
        where(),
        `holds ${JSON.stringify(name)}: ${describeValue(value)}, not a string`,
      )
  }
  return headers as Record<string, string>
}

/**
 * Creates an outbox relay: it reads committed, unpublished outbox rows in batches, publishes
 * them, and marks them published only after the publisher resolved (the broker confirmed), so
 * a crash at any point loses nothing; it may publish a batch again, and consumers dedupe by
 * message id (the inbox).
 *
 * Any number of relays may run against one database. Rows carry a partition (a hash of the
 * aggregate id); relays lease partitions (a fair share each, renewed on a timer, fenced by a
 * token) and publish only their own, so no two relays publish the same rows at once, and
 * within an aggregate events go out in id order, each only after the previous one was
 * confirmed (see {@link RelayOrdering}). On PostgreSQL a row is read only once every
 * transaction that could still commit an earlier row has ended, so a late commit is never
 * overtaken or skipped.
 *
 * Wakes on PostgreSQL notifications from enqueues, and polls with backoff otherwise (always
 * on SQLite). Broker failures back off (`retryBackoff`) behind a circuit breaker; an event that
 * fails `maxAttempts` times by its own fault is dead-lettered (`listDead`, `redrive`) without
 * blocking other aggregates, while its own aggregate's later events wait behind it. The
 * events waiting behind a dead or retrying event are parked (outbox migration 4) by the read
 * that finds them, so later reads skip them instead of checking each again, and unparked when
 * the event they wait for is published (or, for one that stopped holding them back some other
 * way, by a sweep the relay runs every minute of its clock). Every read still checks each event
 * it takes against the dead, retrying and parked events before it: parking saves work, the
 * order never rests on it. Events waiting for their own retry are read from an index ordered
 * by retry time (outbox migration 5), so reads do not step over those not yet due.
 *
 * A started relay keeps the Node.js process alive until `stop()`, like a listening server
 * (`keepAlive: false` turns that off).
 *
 * An unknown (misspelt) option, top-level or in `retention`, is refused with
 * `InvalidOptionError` (`INVALID_OPTION`) naming it (`relay.maxAttemps`); so is one in
 * `retryBackoff` or `circuitBreaker`.
 *
 * @example
 * ```ts
 * import { createRelay, createSqlQueue, migrateOutbox, migrateSqlQueue } from 'breakwater/outbox'
 * await migrateOutbox(db)
 * await migrateSqlQueue(db)
 * const queue = createSqlQueue(db)
 * const relay = createRelay({ db, publisher: queue.publisher })
 * relay.events.on((e) => { if (e.type === 'deadLettered') console.warn('dead', e.eventId) })
 * await relay.start()
 * process.once('SIGTERM', () => void relay.stop())
 * ```
 */
export function createRelay(options: RelayOptions): Relay {
  return new OutboxRelay(options)
}

/**
 * The relay's own publish timeout, saying what ran out: it fires before the adapters' own
 * (`publishTimeoutMs` 5 s against their 10 s by default), so a broker that takes publishes and
 * never confirms them (frozen, or a RabbitMQ quorum queue without a leader after a crash) is
 * reported and logged with this error. The generic "The operation timed out after 5000 ms"
 * named neither the publish, its topics, nor the setting.
 */
function publishTimeoutError(
  timeoutMs: number,
  messages: readonly OutgoingMessage[],
): TimeoutError {
  const count = messages.length
  const topics = [...new Set(messages.map((message) => message.topic))]
  const shown = topics.slice(0, 3).map((topic) => JSON.stringify(topic))
  if (topics.length > 3) shown.push(`${topics.length - 3} more`)
  const events = count === 1 ? '1 event' : `${count} events`
  const topicText = `${topics.length === 1 ? 'topic' : 'topics'} ${shown.join(', ')}`
  return new TimeoutError(timeoutMs, {
    message: `relay: the publisher did not confirm ${events} (${topicText}) within ${timeoutMs} ms (relay.publishTimeoutMs); the broker is down, overloaded or not answering, and ${count === 1 ? 'the event' : 'they'} will be published again`,
  })
}
