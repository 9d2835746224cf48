import { type Clock, storedTime } from '../core/clock.js'
import type { SqlDriver, SqlExecutor, SqlTransaction } from '../stores/index.js'
import { measuredOnceBegun, measuredQuery, queryLast } from '../stores/measured.js'
import { sagaNotifyChannel, sagaStatements } from './sql.js'
import type { SagaRow } from './state.js'

// The saga capability's reads and writes. Every write of an instance's state is fenced by its
// lease token: `UPDATE ... WHERE id = $1 AND lease_token = $2`. A claim increments the token,
// so once another worker has taken an instance over, the previous holder's writes match no row
// and change nothing (0 rows -> the holder stops working on that instance).

/** One timeline row to write with a state transition. */
export interface TimelineRecord {
  readonly at: number
  readonly kind: string
  readonly step: string | null
  readonly attempt: number | null
  readonly worker: string | null
  readonly detail: string | null
}

/** A fenced write of an instance's whole state. */
export interface TransitionWrite {
  readonly id: string
  /** The lease token the writer holds. */
  readonly token: number
  readonly status: string
  readonly context: string
  readonly steps: string
  readonly stepIndex: number
  readonly attempt: number
  readonly nextRunAt: number
  readonly leaseOwner: string | null
  readonly leaseExpiresAt: number | null
  readonly reason: string | null
  readonly now: number
  readonly finishedAt: number | null
  readonly events: readonly TimelineRecord[]
  /**
   * A held lease (not a release) measured from when the write goes out rather than from when
   * it was built: `leaseExpiresAt` is recomputed on `clock` once the write's transaction has
   * begun (after waiting for the SQLite writer or a batch in flight), and again after the
   * transaction's commit work ran. Built before, a wait or slow `atCommit` work was taken off
   * the lease the next step starts on.
   */
  readonly lease?: MeasuredLease
}

/** A lease to measure from when its write goes out: see {@link TransitionWrite.lease}. */
export interface MeasuredLease {
  readonly clock: Clock
  readonly ms: number
}

/**
 * The write (a transition or a new instance) with its lease end measured from now (see
 * {@link TransitionWrite.lease}); the same object when that changes nothing.
 */
function stamped<
  W extends { readonly lease?: MeasuredLease; readonly leaseExpiresAt: number | null },
>(write: W): W {
  if (write.lease === undefined || write.leaseExpiresAt === null) return write
  const leaseExpiresAt = storedTime(write.lease.clock) + write.lease.ms
  return leaseExpiresAt > write.leaseExpiresAt ? { ...write, leaseExpiresAt } : write
}

/**
 * The reason as the `reason` column stores it. It is built from error messages and an
 * operator's cancel reason, which may hold NUL: PostgreSQL text cannot, so the write of the
 * failure was refused every time and the saga never left its failing step (and in a group
 * commit, the writes of every other instance of the batch were refused with it). The NUL is
 * written as `\0`. Half of a surrogate pair, which has no UTF-8 form, is written as U+FFFD:
 * in PostgreSQL's batched write (a JSON parameter) it was refused the same way (22P02), and
 * SQLite stored three bytes read back as three U+FFFD. The timeline keeps the error as it was
 * (JSON escapes both).
 */
export function storedReason(reason: string | null): string | null {
  return reason === null ? null : reason.replaceAll('\u0000', '\\0').replace(/\p{Cs}/gu, '\ufffd')
}

/** Writes a transition's timeline events with `insertEvent` (SQLite: one row per event). */
async function insertTimeline(
  tx: SqlExecutor,
  insertEvent: string,
  write: TransitionWrite,
): Promise<void> {
  for (const e of write.events) {
    await tx.execute(insertEvent, [write.id, e.at, e.kind, e.step, e.attempt, e.worker, e.detail])
  }
}

function transitionParams(write: TransitionWrite): unknown[] {
  return [
    write.id,
    write.token,
    write.status,
    write.context,
    write.steps,
    write.stepIndex,
    write.attempt,
    write.nextRunAt,
    write.leaseOwner,
    write.leaseExpiresAt,
    storedReason(write.reason),
    write.now,
    write.finishedAt,
  ]
}

/**
 * Work run inside the transition's transaction, once the token is seen to hold and before the
 * fenced write; a write the token no longer allows rolls it back.
 */
export type CommitWork = (tx: SqlTransaction) => Promise<void>

/**
 * Writes a transition. Resolves to whether a cancel was requested and the lease end written, or
 * `undefined` when the token no longer holds (the lease was taken over): then nothing was
 * written, and `work` did not run or was rolled back.
 */
export async function writeTransition(
  db: SqlDriver,
  built: TransitionWrite,
  work: readonly CommitWork[],
): Promise<BatchOutcome> {
  const statements = sagaStatements[db.dialect]
  const outcome = (
    write: TransitionWrite,
    rows: { cancel_requested: number | boolean }[],
  ): BatchOutcome =>
    rows.length === 0
      ? undefined
      : {
          cancelRequested: rows[0]!.cancel_requested,
          leaseExpiresAt: write.leaseExpiresAt,
        }
  const params = (write: TransitionWrite): unknown[] =>
    db.dialect === 'postgres'
      ? [...transitionParams(write), JSON.stringify(write.events)]
      : transitionParams(write)

  if (work.length === 0 && (db.dialect === 'postgres' || built.events.length === 0)) {
    // A single statement commits on its own: one round trip per transition.
    const write = stamped(built)
    return outcome(write, await db.query(statements.transition, params(write)))
  }
  try {
    return await db.transaction(async (tx) => {
      // The work runs only while the token holds, as it ran after the fenced write before.
      const held = await tx.query(statements.leaseHeld, [built.id, built.token])
      if (held.length === 0) return undefined
      for (const w of work) await w(tx)
      // The fenced write comes after the work, which may take long (atCommit work): on
      // PostgreSQL the row is locked only from here to the commit, so a cancelSaga made while
      // the work ran commits at once and this write reads it back, instead of waiting for the
      // row and landing unseen just after the commit (the run then started its next step).
      // Measured now: neither the wait for the transaction nor the work is the lease's.
      const write = stamped(built)
      const result = outcome(write, await tx.query(statements.transition, params(write)))
      // Taken over while the work ran: what it wrote is rolled back with the transaction.
      if (result === undefined) throw new TakenOver()
      if (db.dialect === 'sqlite') {
        await insertTimeline(tx, statements.insertEvent, write)
      }
      return result
    })
  } catch (error) {
    if (error instanceof TakenOver) return undefined
    throw error
  }
}

/** Rolls a transition's transaction back when its fenced write finds the lease taken over. */
class TakenOver extends Error {}

/**
 * A list of strings (the claim's definition keys, the renewal's ids) in the form the dialect's
 * statements take: a PostgreSQL array, a JSON array for SQLite's `json_each`.
 */
export function stringListParam(db: SqlExecutor, keys: readonly string[]): unknown {
  return db.dialect === 'postgres' ? [...keys] : JSON.stringify(keys)
}

/**
 * Claims up to `lease.ms`-long leases on up to `limit` runnable instances of the given
 * definitions. The new leases and what is due are measured from when the claim runs (after the
 * wait for the writer or a connection): measured before, a long wait wrote leases already over.
 * Whether another worker's lease has run out is judged as of when the claim was asked for, before
 * that wait: a lease that ran out during it may only have gone unrenewed because its owner's
 * renewal was queued behind the same writer (SQLite) or pool, and taking it then ran its step on
 * two workers at once. A worker that did die loses the instance at the next claim instead.
 * `inHand` gives the ids of the instances the claiming worker is running, which it never takes
 * back from itself (see the claim statement).
 */
export function claimInstances(
  db: SqlDriver,
  owner: string,
  lease: MeasuredLease,
  keys: unknown,
  limit: number,
  inHand: () => readonly string[] = () => [],
): Promise<SagaRow[]> {
  // One statement: on PostgreSQL it travels with BEGIN and COMMIT, one round trip. The ids in
  // hand are read when it goes out too: a run tracked during the wait is left out as well.
  return measuredQuery<SagaRow>(db, lease.clock, (now, asked) => ({
    sql: sagaStatements[db.dialect].claim,
    params: [owner, now + lease.ms, now, keys, limit, asked, stringListParam(db, inHand())],
  }))
}

/** Instances of one definition no worker at hand has: see {@link findMissingDefinitions}. */
export interface MissingDefinition {
  /** The definition's name. */
  readonly name: string
  /** The definition's version. */
  readonly version: number
  /** How many instances. */
  readonly count: number
}

/**
 * Per definition (name and version) not among `keys`, how many instances have been due, and
 * without a live lease, since `cutoff` (epoch ms): instances only a worker with that definition
 * could run. Reads only; nothing is claimed or changed.
 */
export async function findMissingDefinitions(
  db: SqlDriver,
  cutoff: number,
  keys: unknown,
): Promise<MissingDefinition[]> {
  const rows = await db.query<{ name: string; version: number | string; n: number | string }>(
    sagaStatements[db.dialect].missingDefinitions,
    [cutoff, keys],
  )
  return rows.map((r) => ({ name: r.name, version: Number(r.version), count: Number(r.n) }))
}

/** What {@link renewLeases} found. */
export interface RenewedLeases {
  /** The instances whose leases were extended, with their tokens. */
  readonly renewed: Map<string, number>
  /**
   * PostgreSQL: instances still held but row-locked by another transaction (typically the
   * holder's own step commit), passed over this round rather than waited for. Neither renewed
   * nor lost.
   */
  readonly locked: Set<string>
  /** The lease end written. */
  readonly leaseEnd: number
}

/**
 * Extends the leases `owner` holds on the instances `ids` (the ones it runs) to `leaseMs` from
 * when the statement runs; resolves to those renewed (with their tokens) and, on PostgreSQL,
 * those passed over because their row is locked.
 */
export async function renewLeases(
  db: SqlDriver,
  owner: string,
  clock: Clock,
  leaseMs: number,
  ids: readonly string[],
): Promise<RenewedLeases> {
  // Measured once the transaction has begun: the wait for SQLite's writer (a step's atCommit
  // transaction, another process) or for a pool connection is not taken off the leases.
  const { rows, leaseEnd } = await measuredOnceBegun(db, clock, async (tx, now) => {
    const leaseEnd = now + leaseMs
    // The only statement: it commits with the transaction (one round trip on PostgreSQL).
    const rows = await queryLast<{
      id: string
      lease_token: number
      renewed?: number | string
    }>(tx, sagaStatements[db.dialect].renew, [leaseEnd, owner, stringListParam(db, ids)])
    return { rows, leaseEnd }
  })
  const renewed = new Map<string, number>()
  const locked = new Set<string>()
  for (const r of rows) {
    // SQLite's statement has no `renewed` column: it renews every row it returns.
    if (r.renewed === undefined || Number(r.renewed) === 1) renewed.set(r.id, Number(r.lease_token))
    else locked.add(r.id)
  }
  return { renewed, locked, leaseEnd }
}

/**
 * Extends one lease to `leaseMs` from when the statement runs, if the token still holds;
 * resolves to the lease end written, or `undefined` when the instance is someone else's.
 */
export function renewLease(
  db: SqlDriver,
  id: string,
  token: number,
  clock: Clock,
  leaseMs: number,
): Promise<number | undefined> {
  // Measured once its transaction has begun (see measuredOnceBegun). Only a lease found already
  // run out is renewed here (after a pause), so BEGIN and COMMIT cost next to nothing.
  return measuredOnceBegun(db, clock, async (tx, now) => {
    const leaseEnd = now + leaseMs
    const { rowCount } = await tx.execute(sagaStatements[db.dialect].renewOne, [
      id,
      token,
      leaseEnd,
    ])
    return rowCount > 0 ? leaseEnd : undefined
  })
}

/**
 * How long a claimed instance with a stored row it cannot read (`STORED_DATA_INVALID`: its
 * state, its step index, a reply or a timeline detail it needs) is held before it is claimed,
 * and reported, again: nothing but a fix of the row can make it readable, so it is not retried
 * at every lease. A minute: an operator's fix is picked up within it.
 */
export const unreadableHoldMs = 60_000

/**
 * Holds such an instance for {@link unreadableHoldMs}: extends its lease (the lease columns
 * only; its state is left as it is), if the token still holds.
 */
export function holdUnreadable(
  db: SqlDriver,
  id: string,
  token: number,
  clock: Clock,
): Promise<number | undefined> {
  return renewLease(db, id, token, clock, unreadableHoldMs)
}

/** The values of a new instance. */
export interface NewInstance {
  readonly id: string
  readonly name: string
  readonly version: number
  readonly key: string
  readonly input: string
  readonly steps: string
  readonly nextRunAt: number
  readonly leaseOwner: string | null
  readonly leaseExpiresAt: number | null
  readonly leaseToken: number
  readonly attempt: number
  readonly now: number
  /**
   * A held lease measured from when the insert goes out (see {@link TransitionWrite.lease}):
   * `leaseExpiresAt` is recomputed on `clock` when the batch is sent (on SQLite, once its
   * transaction has begun), so the wait for a flush in flight or the writer is not taken off it.
   */
  readonly lease?: MeasuredLease
}

/**
 * Inserts an instance with one statement (so it joins the caller's transaction when `executor`
 * is one). Resolves to false when the id already exists. On PostgreSQL with `notify`, the same
 * statement sends NOTIFY, delivered when the insert commits.
 */
export async function insertInstance(
  executor: SqlExecutor,
  instance: NewInstance,
  notify: boolean,
): Promise<boolean> {
  const statements = sagaStatements[executor.dialect]
  const params: unknown[] = [
    instance.id,
    instance.name,
    instance.version,
    instance.key,
    instance.input,
    instance.steps,
    instance.nextRunAt,
    instance.leaseOwner,
    instance.leaseExpiresAt,
    instance.leaseToken,
    instance.attempt,
    instance.now,
  ]
  if (notify && executor.dialect === 'postgres') {
    const rows = await executor.query(statements.insertNotify, [...params, sagaNotifyChannel])
    return rows.length > 0
  }
  const rows = await executor.query(statements.insert, params)
  return rows.length > 0
}

/**
 * The outcome of one fenced write: the row's `cancel_requested` as stored and the lease end
 * written (null for a release), or `undefined` when the token no longer held. The flag is
 * given as read, not as a boolean: only 0 and 1 are written, and the run checks it
 * (storedCancelRequested) as the claim does, so a value edited in while a step ran is
 * reported, not read by `Boolean(Number())` ('true' as no request, 2 as one).
 */
export type BatchOutcome =
  | { readonly cancelRequested: number | boolean; readonly leaseExpiresAt: number | null }
  | undefined

/**
 * The outcome of one insert: the lease end written (null for an instance inserted without a
 * lease), or `undefined` when the id already existed and nothing was inserted.
 */
export type InsertOutcome = { readonly leaseExpiresAt: number | null } | undefined

/**
 * Writes many inserts and fenced transitions at once (group commit): on PostgreSQL one
 * statement for the inserts and one for the transitions, each committing on its own; on SQLite
 * one transaction. Resolves to each insert's and each transition's outcome (`undefined` where
 * the id existed or the token no longer held), in input order.
 */
export async function writeBatch(
  db: SqlDriver,
  built: readonly NewInstance[],
  builtWrites: readonly TransitionWrite[],
): Promise<{ inserted: InsertOutcome[]; written: BatchOutcome[] }> {
  const statements = sagaStatements[db.dialect]
  const insertOutcome = (i: NewInstance, created: boolean): InsertOutcome =>
    created ? { leaseExpiresAt: i.leaseExpiresAt } : undefined
  if (db.dialect === 'postgres') {
    let inserted: InsertOutcome[] = []
    if (built.length > 0) {
      // Measured when the batch goes out, not when each insert joined the queue.
      const inserts = built.map(stamped)
      const rows = await db.query<{ id: string }>(statements.insertBatch, [
        JSON.stringify(
          inserts.map((i) => ({
            id: i.id,
            name: i.name,
            version: i.version,
            definition: i.key,
            input: i.input,
            steps: i.steps,
            attempt: i.attempt,
            next_run_at: i.nextRunAt,
            lease_owner: i.leaseOwner,
            lease_expires_at: i.leaseExpiresAt,
            lease_token: i.leaseToken,
            now: i.now,
          })),
        ),
      ])
      const ids = new Set(rows.map((r) => r.id))
      inserted = inserts.map((i) => insertOutcome(i, ids.has(i.id)))
    }
    let written: BatchOutcome[] = []
    if (builtWrites.length > 0) {
      // Measured when the batch goes out, not when each write joined the queue.
      const writes = builtWrites.map(stamped)
      let n = 0
      const rows = await db.query<{ id: string; lease_token: number; cancel_requested: number }>(
        statements.transitionBatch,
        [
          JSON.stringify(
            writes.map((w) => ({
              id: w.id,
              token: w.token,
              status: w.status,
              context: w.context,
              steps: w.steps,
              step_index: w.stepIndex,
              attempt: w.attempt,
              next_run_at: w.nextRunAt,
              lease_owner: w.leaseOwner,
              lease_expires_at: w.leaseExpiresAt,
              reason: storedReason(w.reason),
              now: w.now,
              finished_at: w.finishedAt,
              events: w.events.map((e) => ({ ...e, n: n++ })),
            })),
          ),
        ],
      )
      // By id and token: a stale run's write of an instance must not read as the fresh one's.
      const key = (id: string, token: number) => `${Number(token)}:${id}`
      const byKey = new Map(rows.map((r) => [key(r.id, r.lease_token), r.cancel_requested]))
      written = writes.map((w) => {
        const cancelRequested = byKey.get(key(w.id, w.token))
        return cancelRequested === undefined
          ? undefined
          : { cancelRequested, leaseExpiresAt: w.leaseExpiresAt }
      })
    }
    return { inserted, written }
  }
  return db.transaction(async (tx) => {
    // Measured once the transaction has begun: the wait for the writer is not the leases'.
    const inserted: InsertOutcome[] = []
    for (const i of built.map(stamped))
      inserted.push(insertOutcome(i, await insertInstance(tx, i, false)))
    const written: BatchOutcome[] = []
    for (const w of builtWrites.map(stamped)) {
      const rows = await tx.query<{ cancel_requested: number }>(
        statements.transition,
        transitionParams(w),
      )
      if (rows.length === 0) {
        written.push(undefined)
        continue
      }
      await insertTimeline(tx, statements.insertEvent, w)
      written.push({
        cancelRequested: rows[0]!.cancel_requested,
        leaseExpiresAt: w.leaseExpiresAt,
      })
    }
    return { inserted, written }
  })
}
