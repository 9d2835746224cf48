// A model-based hunt for races in the SQL queue broker, on a real SQLite file. fast-check
// generates command sequences over two consumer processes, A and B (each a queue instance with
// its own driver on the same file, as two processes would have), competing in one consumer
// group: publishes of one to three messages over a few keys (through A, B or a separate
// publisher); subscriptions opened and closed (a close waits for the handler in hand, so the
// sequence goes on meanwhile); a scripted handler that acks, throws (the message comes back
// after retryDelayMs) or hangs until a Release command; a process crash (its driver refuses
// every statement from then on, so it stops extending its leases and cannot ack what it
// holds); a stalled connection (statements wait, so a live process's lease runs out); clock
// jumps below and past the visibility timeout and the retry delay; and pruning.
//
// A wrapper around each process's driver watches the statements the broker runs: inside every
// lease transaction it reads who held the rows before and whether an earlier message of a
// leased key is still held; it records what every ack, retry and release changed. Draining
// fails the hung handlers of crashed or stalled processes (a late retry, which the lease-token
// fence must stop) and acks the others. What is checked after every command, and again once
// everything is released and drained, is what the header and TSDoc of
// src/brokers/sql-queue.ts promise:
// - nothing is delivered that was not published (id, key and payload);
// - "a key's next message is leased only once no earlier one is held (leased or waiting for its
//   retry)": a lease never takes a message while an earlier message of its key is held under
//   another lease or a retry delay;
// - "a running handler's lease is extended ... a consumer that dies loses its leases": a lease
//   never takes a row from a process that is alive and whose connection did not stall since it
//   got that lease, and a message is never handled by two subscriptions at once unless one of
//   them is in such a dead or stalled process. This found a bug, now fixed and replayed by the
//   last test: the broker dated a lease before waiting for its transaction, so a lease that
//   waited (for a stalled connection, or for another process's write lock) arrived shortened or
//   already expired, and its handler ran while another consumer took the message;
// - "messages of one key never run concurrently" within one subscription;
// - a message whose handler failed is leased again only once retryDelayMs has passed;
// - an ack or retry of a process that is alive and did not stall since it got the lease
//   finds its row still under that lease (the lease-token fence only stops stale settles);
// - redelivery (a handler invoked again for a message it already ran for) needs an excuse: an
//   earlier handling threw, or an earlier or this handling is in a process that crashed or
//   stalled since it got the lease (its lease could run out, its ack could be lost). A
//   message whose ack deleted its delivery row is never handled again, except by a process
//   whose own lease of it ran out under a stall or crash (it runs what it leased before
//   looking at the database again);
// - at the end every published message was handled and acknowledged (an ack deleted its row)
//   and the group has no delivery rows left: nothing is lost.
// Per-key order across the group is NOT asserted on its own: the TSDoc promises per-key order
// for a single consumer and says competing consumers may run one key's messages concurrently;
// the leasing rule above is the documented mechanism and is asserted exactly.
//
// Both processes run on one ManualClock (the queue's timers and timestamps all read it), so
// nothing sleeps in real time. PostgreSQL is left out for the reason the relay model gives: its
// statements settle on real I/O, which a ManualClock jump does not wait for.
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSqlQueue,
  migrateSqlQueue,
  pruneSqlQueue,
  queueDeliveriesTable,
  queueGroupsTable,
  queueTable,
  type SqlQueue,
} from '../../src/brokers/sql-queue.js'
import type { IncomingMessage, Subscription } from '../../src/brokers/types.js'
import {
  openDatabase,
  type SqlDriver,
  type SqlExecutor,
  type SqlTransaction,
} from '../../src/stores/index.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { holdOpenTransaction } from '../support/held-transaction.js'
import { settleOnClock } from '../support/settle.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { StallableDriver } from '../support/stall.js'

const topic = 'orders'
const group = 'g'
const keys = ['k1', 'k2', 'k3'] as const
const visibilityTimeoutMs = 600
const retryDelayMs = 150
const T0 = 1_700_000_000_000

type SlotName = 'A' | 'B'
type Outcome = 'ack' | 'throw'

/** How often the runs reached the situations the invariants are about (asserted at the end). */
const coverage = {
  runs: 0,
  withRetry: 0,
  withHang: 0,
  withCrash: 0,
  withStall: 0,
  /** A lease took a row whose previous lease (of a crashed or stalled process) ran out. */
  withTakeover: 0,
  withRedelivery: 0,
  /** One message handled by two subscriptions at once (one of them dead or stalled). */
  withConcurrentHandling: 0,
  /** Leased but unstarted messages handed back (close, or a failure earlier in the chain). */
  withRelease: 0,
  withPrune: 0,
  deliveries: 0,
}

/** A crash throws this from every statement of the dead process. */
class ProcessDead extends Error {}

/**
 * One queue process's driver: the real SQLite driver, with a stall (every new statement waits
 * until resumed, as when the connection hangs), a crash (every statement fails from then on),
 * and a watch on the broker's lease, ack and release statements for the invariants.
 */
class ProcessDriver extends StallableDriver {
  dead = false

  constructor(
    inner: SqlDriver,
    readonly process: QueueProcess,
    readonly world: World,
  ) {
    super(inner)
  }

  override async execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    const askedAt = this.world.clock.now()
    const result = await super.execute(sql, params)
    this.world.observeStatement(this.process, sql, params ?? [], result.rowCount, askedAt)
    return result
  }

  override transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    // The broker dates a lease when its statement runs, inside the transaction: a stall before
    // that does not count against it.
    return super.transaction((tx) => fn(this.#watch(tx, this.process.stallEpoch)))
  }

  /** The process's driver is shared with its later incarnations: never closed here. */
  override async close(): Promise<void> {}

  /**
   * `tx`, with the lease statement observed from inside its own transaction; `epoch` is the
   * process's stall count when the transaction began.
   */
  #watch(tx: SqlTransaction, epoch: number): SqlTransaction {
    const world = this.world
    const process = this.process
    const watched: SqlTransaction = {
      dialect: tx.dialect,
      // Retries, releases and extensions run in a transaction of their own (behind the
      // group's lease lock on PostgreSQL): watched as the driver's own statements are.
      async execute(sql, params) {
        const askedAt = world.clock.now()
        const result = await tx.execute(sql, params)
        world.observeStatement(process, sql, params ?? [], result.rowCount, askedAt)
        return result
      },
      transaction: (fn) => tx.transaction(fn),
      async query<R = Record<string, unknown>>(
        sql: string,
        params?: readonly unknown[],
      ): Promise<R[]> {
        if (!isLease(sql)) return tx.query<R>(sql, params)
        return (await world.observeLease(process, epoch, tx, sql, params ?? [])) as R[]
      },
    }
    return watched
  }

  protected override async passed(): Promise<void> {
    await super.passed()
    if (this.dead) throw new ProcessDead(`${this.process.name} is dead`)
  }
}

function isLease(sql: string): boolean {
  return sql.includes('SET held_until = $4, lease_token = $5')
}
function isAck(sql: string): boolean {
  return sql.startsWith(`DELETE FROM ${queueDeliveriesTable}`)
}
function isRetry(sql: string): boolean {
  return sql.includes('SET held_until = $5, lease_token = NULL')
}
function isRelease(sql: string): boolean {
  return sql.includes('delivery_count = delivery_count - 1')
}

/** One handler invocation, as the test saw it. */
interface Handling {
  readonly id: string
  readonly key: string
  readonly sub: number
  readonly process: QueueProcess
  /** The process's stall count when it asked for the lease of this invocation. */
  readonly epochAtLease: number
  readonly deliveryCount: number
  running: boolean
  threw: boolean
}

/** A handler waiting for a Release command. */
interface Hung {
  readonly handling: Handling
  readonly release: (outcome: Outcome) => void
}

/** One incarnation of a consumer process: a queue instance on the slot's driver. */
class QueueProcess {
  readonly driver: ProcessDriver
  readonly queue: SqlQueue
  /** Open subscriptions (at most one not closing). */
  readonly subs = new Map<number, { sub: Subscription; closing?: Promise<void> }>()
  /** Counts the stalls of this process's connection. */
  stallEpoch = 0
  crashed = false
  /** Per message id, the stall count when this process last asked for the lease it got. */
  readonly leasedAt = new Map<string, number>()

  constructor(
    readonly name: string,
    readonly slot: SlotName,
    inner: SqlDriver,
    world: World,
  ) {
    this.driver = new ProcessDriver(inner, this, world)
    this.queue = createSqlQueue(this.driver, {
      clock: world.clock,
      visibilityTimeoutMs,
      retryDelayMs,
      prefetch: 3,
      // A runs one handler at a time, B two: per-key order must hold either way.
      concurrency: slot === 'A' ? 1 : 2,
      pollIntervalMs: 10,
      maxPollIntervalMs: 50,
      onError: () => {},
    })
  }

  /** Whether it may have lost a lease it took when its stall count was `epochAtLease`. */
  excused(epochAtLease: number | undefined): boolean {
    return this.crashed || this.driver.stalled || this.stallEpoch !== epochAtLease
  }

  /** A subscription that is open and not closing. */
  get active(): boolean {
    return [...this.subs.values()].some((s) => s.closing === undefined)
  }
}

/** The system under test for one generated sequence, and what the commands script. */
class World {
  readonly clock = new ManualClock(T0)
  readonly publisher: SqlQueue
  readonly slots: Record<SlotName, QueueProcess | undefined> = { A: undefined, B: undefined }
  readonly processes: QueueProcess[] = []
  /** Published messages by id: key and payload. */
  readonly published = new Map<string, string>()
  /** Published ids per key, in publish order. */
  readonly publishOrder = new Map<string, string[]>()
  readonly handlings: Handling[] = []
  /** Per message id, when the retry a failed handler wrote lets it be leased again. */
  readonly retryAt = new Map<string, number>()
  /** Message ids whose delivery row an ack deleted. */
  readonly acked = new Set<string>()
  /** Delivery seq to message id, learnt inside lease transactions. */
  readonly seqIds = new Map<number, string>()
  /** Lease token to the process that took it and its stall count when it asked for it. */
  readonly tokens = new Map<string, { process: QueueProcess; epoch: number }>()
  /** Broken promises (must stay empty). */
  readonly violations: string[] = []
  /** Commands and what the processes did meanwhile, for failure messages. */
  readonly trace: string[] = []
  failNext = 0
  hangNext = false
  readonly hung: Hung[] = []
  #published = 0
  #subs = 0
  #incarnations = 0
  retries = 0
  hangs = 0
  crashes = 0
  stalls = 0
  takeovers = 0
  redeliveries = 0
  concurrentHandlings = 0
  releases = 0
  pruned = 0

  constructor(
    /** Reads and pruning: the observer's view of the database. */
    readonly db: SqlDriver,
    readonly slotDbs: Record<SlotName, SqlDriver>,
  ) {
    this.publisher = createSqlQueue(db, { clock: this.clock })
  }

  /** The slot's process if it is alive, else a new incarnation of it. */
  processIn(slot: SlotName): QueueProcess {
    const current = this.slots[slot]
    if (current !== undefined && !current.crashed) return current
    const process = new QueueProcess(
      `${slot}${++this.#incarnations}`,
      slot,
      this.slotDbs[slot],
      this,
    )
    this.slots[slot] = process
    this.processes.push(process)
    this.trace.push(`  ${process.name}: starts`)
    return process
  }

  async publish(via: SlotName | 'P', msgKeys: readonly string[]): Promise<void> {
    const process = via === 'P' ? undefined : this.slots[via]
    const usable = process !== undefined && !process.crashed && !process.driver.stalled
    const queue = usable ? process.queue : this.publisher
    const messages = msgKeys.map((key) => {
      const id = `m${++this.#published}`
      return { id, topic, key, payload: `${key}:${id}`, headers: {} }
    })
    await queue.publisher.publish(messages)
    for (const m of messages) {
      this.published.set(m.id, m.payload)
      const list = this.publishOrder.get(m.key) ?? []
      list.push(m.id)
      this.publishOrder.set(m.key, list)
    }
    this.trace.push(
      `  published ${messages.map((m) => `${m.id}(${m.key})`).join(' ')} via ${usable ? process.name : 'publisher'}`,
    )
  }

  async subscribe(slot: SlotName): Promise<void> {
    const current = this.slots[slot]
    if (current !== undefined && !current.crashed && (current.active || current.driver.stalled))
      return
    const process = this.processIn(slot)
    const subId = ++this.#subs
    const sub = await process.queue.subscriber.subscribe(topic, group, (m) =>
      this.handle(process, subId, m),
    )
    process.subs.set(subId, { sub })
    this.trace.push(`  ${process.name}: subscribed (sub ${subId})`)
  }

  unsubscribe(slot: SlotName): void {
    const process = this.slots[slot]
    if (process === undefined || process.crashed) return
    for (const [subId, entry] of process.subs) {
      if (entry.closing !== undefined) continue
      this.trace.push(`  ${process.name}: closes sub ${subId}`)
      entry.closing = entry.sub.close().then(() => {
        process.subs.delete(subId)
        this.trace.push(`  ${process.name}: sub ${subId} closed`)
      })
    }
  }

  /** The handler of every subscription: checks the delivery, then acks, throws or hangs. */
  handle(process: QueueProcess, sub: number, m: IncomingMessage): Promise<void> {
    const payload = Buffer.from(m.payload).toString('utf8')
    const handling: Handling = {
      id: m.id,
      key: m.key,
      sub,
      process,
      epochAtLease: process.leasedAt.get(m.id) ?? -1,
      deliveryCount: m.deliveryCount,
      running: true,
      threw: false,
    }
    const where = `${process.name}/sub ${sub}`
    this.trace.push(`  ${where}: handles ${m.id}(${m.key}) #${m.deliveryCount}`)
    if (this.published.get(m.id) !== payload || payload !== `${m.key}:${m.id}`)
      this.violations.push(`${where} got ${m.id}/${m.key}/${payload}, which was not published`)
    const sameKey = this.handlings.find((h) => h.running && h.sub === sub && h.key === m.key)
    if (sameKey !== undefined)
      this.violations.push(`${where} runs ${m.id} while ${sameKey.id} of key ${m.key} still runs`)
    const selfExcused = process.excused(handling.epochAtLease)
    const earlier = this.handlings.filter((h) => h.id === m.id)
    if (earlier.length > 0) {
      this.redeliveries++
      const excused =
        selfExcused || earlier.some((h) => h.threw || h.process.excused(h.epochAtLease))
      if (!excused)
        this.violations.push(
          `${where} handles ${m.id} again with no failure, crash or stall to excuse it`,
        )
      if (this.acked.has(m.id) && !selfExcused)
        this.violations.push(`${where} handles ${m.id} although an ack deleted its row`)
      for (const other of earlier.filter((h) => h.running)) {
        this.concurrentHandlings++
        if (!selfExcused && !other.process.excused(other.epochAtLease))
          this.violations.push(
            `${where} handles ${m.id} while ${other.process.name}/sub ${other.sub}, alive and not stalled, still runs it`,
          )
      }
    }
    this.handlings.push(handling)
    const settle = (outcome: Outcome): Promise<void> => {
      handling.running = false
      if (outcome === 'ack') return Promise.resolve()
      handling.threw = true
      this.retries++
      return Promise.reject(new Error(`handler fails on ${m.id}`))
    }
    if (this.failNext > 0) {
      this.failNext--
      this.trace.push(`  ${where}: ${m.id} throws`)
      return settle('throw')
    }
    if (this.hangNext) {
      this.hangNext = false
      this.hangs++
      this.trace.push(`  ${where}: ${m.id} hangs`)
      return new Promise<void>((resolve, reject) => {
        this.hung.push({
          handling,
          release: (outcome) => settle(outcome).then(resolve, reject),
        })
      })
    }
    return settle('ack')
  }

  /**
   * Runs the lease statement of `process` inside its transaction, reading first who held the
   * rows, and afterwards whether an earlier message of a leased key is still held by someone
   * else; records the violations of the leasing rule and of live leases.
   */
  async observeLease(
    process: QueueProcess,
    epoch: number,
    tx: SqlExecutor,
    sql: string,
    params: readonly unknown[],
  ): Promise<unknown[]> {
    const [leaseTopic, leaseGroup, now, , token] = params as [
      string,
      string,
      number,
      number,
      string,
    ]
    const before = await tx.query<{
      seq: number
      lease_token: string | null
      held_until: number | null
      message_id: string | null
    }>(
      `SELECT d.seq, d.lease_token, d.held_until, m.message_id FROM ${queueDeliveriesTable} d
       LEFT JOIN ${queueTable} m ON m.seq = d.seq WHERE d.topic = $1 AND d.group_name = $2`,
      [leaseTopic, leaseGroup],
    )
    for (const row of before)
      if (row.message_id !== null) this.seqIds.set(Number(row.seq), row.message_id)
    const rows = await tx.query<{ seq: number }>(sql, params)
    this.tokens.set(token, { process, epoch })
    const blocked = await tx.query<{ seq: number; earlier: number; holder: string | null }>(
      `SELECT w.seq, h.seq AS earlier, h.lease_token AS holder
       FROM ${queueDeliveriesTable} w JOIN ${queueDeliveriesTable} h
         ON h.topic = w.topic AND h.group_name = w.group_name AND h.msg_key = w.msg_key
        AND h.seq < w.seq
       WHERE w.topic = $1 AND w.group_name = $2 AND w.lease_token = $3
         AND h.held_until IS NOT NULL AND h.held_until > $4
         AND (h.lease_token IS NULL OR h.lease_token <> $3)`,
      [leaseTopic, leaseGroup, token, now],
    )
    for (const b of blocked) {
      const holder =
        b.holder === null ? 'a retry delay' : (this.tokens.get(b.holder)?.process.name ?? '?')
      this.violations.push(
        `${process.name} leased ${this.idOf(b.seq)} while ${this.idOf(b.earlier)} of its key was held by ${holder}`,
      )
    }
    const leased = rows.map((r) => Number(r.seq))
    for (const seq of leased) {
      const id = this.idOf(seq)
      process.leasedAt.set(id, epoch)
      const retryAt = this.retryAt.get(id)
      this.retryAt.delete(id)
      if (retryAt !== undefined && retryAt > now)
        this.violations.push(
          `${process.name} leased ${id} at ${now - T0} ms, before its retry delay ended at ${retryAt - T0} ms`,
        )
      const prior = before.find((r) => Number(r.seq) === seq)
      if (prior?.lease_token === null || prior?.lease_token === undefined) continue
      this.takeovers++
      const holder = this.tokens.get(prior.lease_token)
      if (holder === undefined) continue
      if (!holder.process.excused(holder.epoch))
        this.violations.push(
          `${process.name} leased ${id} whose lease ${holder.process.name} (alive, not stalled) still held (held until ${Number(prior.held_until) - T0}, now ${now - T0})`,
        )
    }
    if (leased.length > 0)
      this.trace.push(
        `  ${process.name}: leased ${leased.map((s) => this.idOf(s)).join(' ')} at ${now - T0} ms`,
      )
    return rows
  }

  /**
   * Follows acks (which rows they deleted), retries (when the message may come back: the
   * broker reads the clock just before it asks for the statement, at `askedAt`) and releases.
   */
  observeStatement(
    process: QueueProcess,
    sql: string,
    params: readonly unknown[],
    rowCount: number,
    askedAt: number,
  ): void {
    const settles = isAck(sql) ? 'ack' : isRetry(sql) ? 'retry' : undefined
    if (settles !== undefined) {
      const id = this.idOf(Number(params[2]))
      if (rowCount > 0) {
        if (settles === 'ack') this.acked.add(id)
        else this.retryAt.set(id, askedAt + retryDelayMs)
        this.trace.push(`  ${process.name}: ${settles} of ${id} written`)
        return
      }
      // The row is no longer under this lease: fine if the lease may have run out, a broken
      // fence or lease otherwise.
      const lease = this.tokens.get(String(params[3]))
      this.trace.push(`  ${process.name}: ${settles} of ${id} matched nothing`)
      if (lease !== undefined && !lease.process.excused(lease.epoch))
        this.violations.push(
          `${process.name}'s ${settles} of ${id} found its lease gone although ${process.name} is alive and did not stall`,
        )
    } else if (isRelease(sql) && rowCount > 0) {
      this.releases++
      this.trace.push(`  ${process.name}: released ${rowCount}`)
    }
  }

  idOf(seq: number): string {
    return this.seqIds.get(seq) ?? `seq ${seq}`
  }

  /** Ends `which` hung handler, by default the oldest (or disarms the hang not yet taken). */
  release(outcome: Outcome, which: Hung | undefined = this.hung[0]): void {
    this.hangNext = false
    if (which === undefined) return
    const hung = which
    this.hung.splice(this.hung.indexOf(hung), 1)
    this.trace.push(`  ${hung.handling.process.name}: ${hung.handling.id} released (${outcome})`)
    hung.release(outcome)
  }

  /** Moves the clock in steps until `promise` settles (a close waiting for its handler). */
  async settle(promise: Promise<unknown>, what: string): Promise<void> {
    await settleOnClock(this.clock, promise, what, () => this.describe())
  }

  describe(): string {
    return `trace:\n${this.trace.join('\n')}`
  }
}

/** Delivery rows the group still has. */
async function pendingDeliveries(w: World): Promise<string[]> {
  const rows = await w.db.query<{ message_id: string }>(
    `SELECT m.message_id FROM ${queueDeliveriesTable} d JOIN ${queueTable} m ON m.seq = d.seq
     WHERE d.group_name = $1 ORDER BY d.seq`,
    [group],
  )
  return rows.map((r) => r.message_id)
}

/** The invariants that must hold at any moment; see the file comment. */
function checkInvariants(w: World): void {
  expect(w.violations, `broken promises\n${w.describe()}`).toEqual([])
}

type Model = Record<string, never>
type Command = fc.AsyncCommand<Model, World>

class Publish implements Command {
  constructor(
    readonly via: SlotName | 'P',
    readonly keys: readonly string[],
  ) {}
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    w.trace.push(this.toString())
    await w.publish(this.via, this.keys)
    await flushJobs()
    checkInvariants(w)
  }
  toString = () => `publish ${this.keys.join(',')} via ${this.via}`
}

class Subscribe implements Command {
  constructor(readonly slot: SlotName) {}
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    w.trace.push(this.toString())
    await w.subscribe(this.slot)
    await flushJobs()
    checkInvariants(w)
  }
  toString = () => `subscribe on ${this.slot}`
}

class Unsubscribe implements Command {
  constructor(readonly slot: SlotName) {}
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    w.trace.push(this.toString())
    w.unsubscribe(this.slot)
    await flushJobs()
    checkInvariants(w)
  }
  toString = () => `unsubscribe on ${this.slot}`
}

class Crash implements Command {
  constructor(readonly slot: SlotName) {}
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    const process = w.slots[this.slot]
    if (process === undefined || process.crashed) return
    w.trace.push(`${this.toString()} (${process.name})`)
    process.crashed = true
    process.driver.dead = true
    w.crashes++
    await flushJobs()
    checkInvariants(w)
  }
  toString = () => `crash ${this.slot}`
}

class Stall implements Command {
  constructor(readonly slot: SlotName) {}
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    const process = w.slots[this.slot]
    if (process === undefined || process.crashed || process.driver.stalled) return
    w.trace.push(`${this.toString()} (${process.name})`)
    process.stallEpoch++
    process.driver.stall()
    w.stalls++
    await flushJobs()
    checkInvariants(w)
  }
  toString = () => `stall ${this.slot}'s connection`
}

class Resume implements Command {
  constructor(readonly slot: SlotName) {}
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    const process = w.slots[this.slot]
    if (process?.driver.stalled !== true) return
    w.trace.push(`${this.toString()} (${process.name})`)
    process.driver.resume()
    await flushJobs()
    checkInvariants(w)
  }
  toString = () => `resume ${this.slot}'s connection`
}

class FailNext implements Command {
  constructor(readonly times: number) {}
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    w.trace.push(this.toString())
    w.failNext += this.times
  }
  toString = () => `next ${this.times} handler calls throw`
}

class HangNext implements Command {
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    if (w.hangNext || w.hung.length >= 2) return
    w.trace.push(this.toString())
    w.hangNext = true
  }
  toString = () => 'next handler call hangs'
}

class Release implements Command {
  constructor(readonly outcome: Outcome) {}
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    if (w.hung.length === 0) return
    w.trace.push(this.toString())
    w.release(this.outcome)
    await flushJobs()
    checkInvariants(w)
  }
  toString = () => `release the oldest hung handler (${this.outcome})`
}

class Advance implements Command {
  constructor(readonly ms: number) {}
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    w.trace.push(this.toString())
    await w.clock.advance(this.ms)
    checkInvariants(w)
  }
  toString = () => `advance the clock ${this.ms} ms`
}

class Prune implements Command {
  check = (_m: Model) => true
  async run(_m: Model, w: World): Promise<void> {
    // Before the group exists nothing is fanned out to it, and the TSDoc says pruning then
    // removes what it would have been backfilled with: not what this test is about.
    const groups = await w.db.query(`SELECT 1 FROM ${queueGroupsTable}`)
    if (groups.length === 0) return
    const removed = await pruneSqlQueue(w.db, { olderThanMs: 0, clock: w.clock })
    w.trace.push(`${this.toString()}: ${removed} removed`)
    w.pruned += removed
    checkInvariants(w)
  }
  toString = () => 'prune'
}

const slotArb = fc.constantFrom<SlotName>('A', 'B')
// Publishes, subscriptions, hangs, stalls and long clock jumps weigh more: handing a message
// to a second consumer needs a backlog, a hung handler, a stalled or dead holder and a lease
// running out while another consumer polls.
const commands = [
  fc
    .tuple(
      fc.constantFrom<SlotName | 'P'>('A', 'B', 'P'),
      fc.array(fc.constantFrom(...keys), { minLength: 1, maxLength: 3 }),
    )
    .map(([via, ks]) => new Publish(via, ks)),
  fc
    .tuple(fc.constantFrom<SlotName | 'P'>('A', 'B', 'P'), fc.constantFrom(...keys))
    .map(([via, k]) => new Publish(via, [k, k])),
  slotArb.map((slot) => new Subscribe(slot)),
  slotArb.map((slot) => new Subscribe(slot)),
  slotArb.map((slot) => new Unsubscribe(slot)),
  slotArb.map((slot) => new Crash(slot)),
  slotArb.map((slot) => new Stall(slot)),
  slotArb.map((slot) => new Stall(slot)),
  slotArb.map((slot) => new Resume(slot)),
  fc.integer({ min: 1, max: 2 }).map((n) => new FailNext(n)),
  fc.constant(new HangNext()),
  fc.constant(new HangNext()),
  fc.constantFrom<Outcome>('ack', 'throw').map((outcome) => new Release(outcome)),
  fc
    .constantFrom(
      10,
      50,
      retryDelayMs + 1,
      visibilityTimeoutMs / 3 - 1,
      visibilityTimeoutMs - 1,
      visibilityTimeoutMs + 1,
      3 * visibilityTimeoutMs,
    )
    .map((ms) => new Advance(ms)),
  fc.constantFrom(10, 50, retryDelayMs + 1).map((ms) => new Advance(ms)),
  fc.constantFrom(visibilityTimeoutMs + 1, 3 * visibilityTimeoutMs).map((ms) => new Advance(ms)),
  fc.constant(new Prune()),
]

/**
 * Ends every disturbance (hung handlers released: those of processes that crashed or stalled
 * since their lease fail, the others ack; scripted failures dropped,
 * stalls resumed, closes awaited), keeps one live subscription, and moves the clock until the
 * group has nothing left; then every published message must have been acknowledged.
 */
async function drain(w: World): Promise<void> {
  w.trace.push('drain')
  w.failNext = 0
  w.hangNext = false
  for (const process of w.processes) process.driver.resume()
  // Handlers of processes that crashed or stalled since their lease fail late (their retry
  // must not disturb whoever holds the message now); the others ack.
  for (const stale of w.hung.filter((h) => h.handling.process.excused(h.handling.epochAtLease)))
    w.release('throw', stale)
  while (w.hung.length > 0) w.release('ack')
  for (const process of w.processes) {
    for (const [subId, entry] of [...process.subs]) {
      if (entry.closing !== undefined)
        await w.settle(entry.closing, `${process.name}'s close of sub ${subId}`)
    }
  }
  const live = w.processes.some((p) => !p.crashed && p.active)
  if (!live) await w.subscribe(w.slots.A?.crashed === false ? 'A' : 'B')
  for (let step = 0; step < 100; step++) {
    if ((await pendingDeliveries(w)).length === 0 && !w.handlings.some((h) => h.running)) break
    await w.clock.advance(100)
  }
  expect(await pendingDeliveries(w), `deliveries never acknowledged\n${w.describe()}`).toEqual([])
  checkInvariants(w)
  const lost = [...w.published.keys()].filter((id) => !w.acked.has(id))
  expect(lost, `published, never acknowledged\n${w.describe()}`).toEqual([])
}

/** Closes every process of this sequence, so that nothing of it outlives it. */
async function shutDown(w: World): Promise<void> {
  w.failNext = 0
  w.hangNext = false
  for (const process of w.processes) process.driver.resume()
  while (w.hung.length > 0) w.release('ack')
  for (const process of w.processes)
    await w.settle(process.queue.close(), `${process.name}'s close`)
  await w.publisher.close()
}

function tally(w: World): void {
  coverage.runs++
  if (w.retries > 0) coverage.withRetry++
  if (w.hangs > 0) coverage.withHang++
  if (w.crashes > 0) coverage.withCrash++
  if (w.stalls > 0) coverage.withStall++
  if (w.takeovers > 0) coverage.withTakeover++
  if (w.redeliveries > 0) coverage.withRedelivery++
  if (w.concurrentHandlings > 0) coverage.withConcurrentHandling++
  if (w.releases > 0) coverage.withRelease++
  if (w.pruned > 0) coverage.withPrune++
  coverage.deliveries += w.handlings.length
}

describe('SQL queue interleavings on sqlite', () => {
  let file: TestSqlite
  let db: SqlDriver
  let slotDbs: Record<SlotName, SqlDriver>

  beforeAll(async () => {
    file = createTestSqlite('sql_queue_model')
    db = await openDatabase(file.url)
    await migrateSqlQueue(db)
    slotDbs = { A: await openDatabase(file.url), B: await openDatabase(file.url) }
  })
  afterAll(async () => {
    await slotDbs?.A.close()
    await slotDbs?.B.close()
    await db?.close()
    file?.cleanup()
  })

  it('every interleaving of publishes, subscriptions, handler outcomes, crashes, stalls and clock jumps delivers everything, leasing by the rules', async () => {
    await fc.assert(
      fc.asyncProperty(fc.commands(commands, { maxCommands: 35 }), async (cmds) => {
        for (const table of [queueDeliveriesTable, queueGroupsTable, queueTable])
          await db.execute(`DELETE FROM ${table}`)
        const world = new World(db, slotDbs)
        try {
          await fc.asyncModelRun(() => ({ model: {}, real: world }), cmds)
          await drain(world)
          tally(world)
        } finally {
          await shutDown(world)
        }
      }),
      { numRuns: 1500 },
    )
    // The generator must keep reaching the situations the invariants are about: a property
    // that stopped exercising them would pass vacuously.
    for (const key of [
      'withRetry',
      'withHang',
      'withCrash',
      'withStall',
      'withTakeover',
      'withRedelivery',
      'withConcurrentHandling',
      'withRelease',
      'withPrune',
    ] as const) {
      expect(coverage[key], `${key} in ${JSON.stringify(coverage)}`).toBeGreaterThan(0)
    }
    // The bound is for CPU, not for anything timed (every timer is the ManualClock's): the 1500
    // runs take about 9 s alone on the two-core machine and 92 s beside twelve busy loops (load
    // 13, the same 18 s of CPU), where 60 s timed out. 240 s leaves room for a load of about 25.
  }, 240_000)

  // Shrunk from the property (a bug, now fixed):
  // [subscribe on B, stall B's connection, advance the clock 601 ms, subscribe on A, publish
  // k1,k1, stall A's connection, advance the clock 10 ms] then drain. Here without any stall:
  // both processes wait for a third one's write lock, as processes sharing a SQLite file do.
  // QueueSubscription.#lease read `now` before `db.transaction` waited for the lock, so the
  // lease it wrote (held_until = now + visibilityTimeoutMs) was already over when the wait took
  // longer than the timeout; #dispatch then ran the handler and first extended the lease a
  // third of the timeout later, and meanwhile the other consumer's next poll took the message:
  // one message, two live consumers, at the same time.
  it("a lease that waited for the write lock starts when it is written, so a live consumer's message stays its own", async () => {
    const clock = new ManualClock(T0)
    const options = {
      clock,
      visibilityTimeoutMs,
      pollIntervalMs: 10,
      maxPollIntervalMs: 10,
      onError: () => {},
    }
    const queues = [createSqlQueue(slotDbs.A, options), createSqlQueue(slotDbs.B, options)]
    const running = new Map<string, string>()
    const overlaps: string[] = []
    const hold = gate()
    const handler = (name: string) => async (m: IncomingMessage) => {
      const other = running.get(m.id)
      if (other !== undefined) overlaps.push(`${name} got ${m.id} while ${other} runs it`)
      running.set(m.id, name)
      await hold.promise
      running.delete(m.id)
    }
    const lockTopic = 'lock-wait'
    try {
      await queues[0]!.subscriber.subscribe(lockTopic, group, handler('A'))
      await queues[1]!.subscriber.subscribe(lockTopic, group, handler('B'))
      await createSqlQueue(db, { clock }).publisher.publish([
        { id: 'lw1', topic: lockTopic, key: 'k', payload: 'x', headers: {} },
      ])
      // Another process writes; both consumers' next polls (at +10 ms) wait for its lock.
      const writer = await holdOpenTransaction(db, (tx) =>
        tx.execute(`UPDATE ${queueGroupsTable} SET created_at = created_at WHERE topic = $1`, [
          lockTopic,
        ]),
      )
      await clock.advance(10)
      await clock.advance(visibilityTimeoutMs + 1)
      await writer.commit()
      await flushJobs()
      // One of them leased lw1 (with the `now` of before the wait) and runs it; the other
      // polls 10 ms later.
      expect(running.size).toBe(1)
      await clock.advance(10)
      await clock.advance(10)
      expect(overlaps).toEqual([])
    } finally {
      hold.open()
      for (const q of queues) {
        const closing = q.close()
        for (let i = 0; i < 50; i++) await clock.advance(50)
        await closing
      }
    }
  })
})
