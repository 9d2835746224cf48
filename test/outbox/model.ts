// Pieces of the outbox model tests (relay, relay-dead-letters and inbox): a command that acts
// and then checks, the coverage check, and for the relay a process that can crash at a fault
// point, the lease check at the start of a publish, who holds which partition, and the
// invariants on what the recording broker stored against what was committed.
import type fc from 'fast-check'
import { expect } from 'vitest'
import type { OutgoingMessage } from '../../src/brokers/types.js'
import {
  createOutbox,
  createRelay,
  type Outbox,
  outboxPartitionsTable,
  outboxRelaysTable,
  outboxTable,
  partitionOf,
  type Relay,
  type RelayEvent,
  type RelayFaultPoint,
  type RelayOptions,
} from '../../src/outbox/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { settleOnClock } from '../support/settle.js'

/** The model of the model tests: none, the invariants are checked against the real system. */
export type NoModel = Record<string, never>

/**
 * A command that does `act`, then `after` (let the system run, check the invariants). An `act`
 * that returns false found nothing to do (a stop of a relay not running): `after` is skipped.
 */
export class Step<W> implements fc.AsyncCommand<NoModel, W> {
  constructor(
    readonly label: string,
    readonly act: (w: W) => unknown,
    readonly after: (w: W) => Promise<void>,
  ) {}
  check = (_m: NoModel) => true
  async run(_m: NoModel, w: W): Promise<void> {
    if ((await this.act(w)) === false) return
    await this.after(w)
  }
  toString = () => this.label
}

/** Where a crash strikes: the relay's next fault point, or the next time it passes this one. */
export type CrashPoint = RelayFaultPoint | 'next'

/** A message as the recording broker stored it. */
export interface Publication {
  readonly id: string
  readonly key: string
  /** The relay whose call stored it. */
  readonly by: string
}

/**
 * One relay process: a relay, its crash plan, and its stop in progress. A crash is a throwing
 * fault hook, which halts the relay as a dead process would: no mark, no lease release.
 */
export class RelayProcess {
  readonly relay: Relay
  /** Set by {@link crash}: the fault hook throws at this point. */
  crashAt: CrashPoint | undefined
  /** A stop that waits for the batch in hand. */
  stopping: Promise<void> | undefined

  constructor(
    readonly name: string,
    options: Omit<RelayOptions, 'faults'>,
    onEvent: (name: string, event: RelayEvent) => void,
  ) {
    this.relay = createRelay({ ...options, faults: (point) => this.#fault(point) })
    this.relay.events.on((event) => onEvent(name, event))
  }

  /** Started and neither stopped nor crashed (it may be stopping, or about to crash). */
  get alive(): boolean {
    const state = this.relay.state
    return state === 'new' || state === 'running' || state === 'stopping'
  }

  /** Crashes the relay at `at`; an idle relay reaches its next fault point at once. */
  crash(at: CrashPoint): void {
    this.crashAt = at
    this.relay.wake()
  }

  #fault(point: RelayFaultPoint): void {
    if (this.crashAt === undefined || (this.crashAt !== 'next' && this.crashAt !== point)) return
    this.crashAt = undefined
    throw new Error(`${this.name} crashes at ${point}`)
  }
}

/** A partition's lease row. */
export interface LeaseRow {
  readonly partition_no: number
  readonly owner: string | null
  readonly lease_expires_at: number | null
}

/** The partitions' lease rows as they are now. */
export function readLeases(db: SqlDriver): Promise<LeaseRow[]> {
  return db.query<LeaseRow>(
    `SELECT partition_no, owner, lease_expires_at FROM ${outboxPartitionsTable}`,
  )
}

/**
 * What breaks the relay's promise that it starts a publish only while it holds, in the
 * database, the lease of the partition of every message with at least `minLeftMs` of it left.
 * Relay ids are `<name>-run<n>`; `by` is the name. Times in the text are from `t0`.
 */
export function leaseViolations(
  leases: readonly LeaseRow[],
  by: string,
  messages: readonly OutgoingMessage[],
  now: number,
  minLeftMs: number,
  t0: number,
): string[] {
  const violations: string[] = []
  for (const m of messages) {
    const partition = partitionOf(m.key)
    const lease = leases.find((l) => Number(l.partition_no) === partition)
    const owner = lease?.owner?.replace(/-run\d+$/, '') ?? 'nobody'
    const leftMs = Number(lease?.lease_expires_at ?? 0) - now
    if (owner !== by || leftMs < minLeftMs) {
      violations.push(
        `${by} started publishing ${m.id} at ${now - t0} ms while partition ${partition} was ${owner}'s for ${leftMs} ms more`,
      )
    }
  }
  return violations
}

/**
 * Follows partitionsChanged and stopped events: per partition, the relay whose claim is the
 * latest not released, to spot a takeover (a claim of a partition another relay never let go).
 */
export class PartitionHolders {
  readonly #holders = new Map<number, string>()

  /** Notes `name`'s event; returns the relays it took partitions over from (usually none). */
  follow(name: string, event: RelayEvent): Set<string> {
    const from = new Set<string>()
    if (event.type === 'stopped') {
      for (const [p, holder] of this.#holders) if (holder === name) this.#holders.delete(p)
    }
    if (event.type !== 'partitionsChanged') return from
    for (const p of event.claimed) {
      const holder = this.#holders.get(p)
      if (holder !== undefined && holder !== name) from.add(holder)
      this.#holders.set(p, name)
    }
    for (const p of [...event.released, ...event.lost]) {
      if (this.#holders.get(p) === name) this.#holders.delete(p)
    }
    return from
  }
}

/**
 * The invariants on what the broker stored: per aggregate, the first publications are a
 * prefix of the commit order (a repeat is allowed); the outbox holds exactly the committed
 * events; and every row marked published was published. `describe` adds the model's trace.
 */
export async function expectPublishedInOrder(
  db: SqlDriver,
  log: readonly Publication[],
  committed: ReadonlyMap<string, readonly string[]>,
  describe: () => string,
): Promise<void> {
  const firstPublished = new Set<string>()
  const count = new Map<string, number>()
  for (const { id, key } of log) {
    if (firstPublished.has(id)) continue
    firstPublished.add(id)
    const n = count.get(key) ?? 0
    count.set(key, n + 1)
    const expected = committed.get(key)?.[n]
    expect(id, `${key}: ${id} first published where ${expected} was due\n${describe()}`).toBe(
      expected,
    )
  }
  const rows = await db.query<{ event_id: string; published_at: number | null }>(
    `SELECT event_id, published_at FROM ${outboxTable} ORDER BY id`,
  )
  expect(rows.map((r) => r.event_id).sort()).toEqual([...committed.values()].flat().sort())
  const markedUnpublished = rows
    .filter((r) => r.published_at !== null && !firstPublished.has(r.event_id))
    .map((r) => r.event_id)
  expect(markedUnpublished, `marked published, never published\n${describe()}`).toEqual([])
}

/** Empties the outbox and frees every partition, for the next generated sequence. */
export async function resetOutbox(db: SqlDriver): Promise<void> {
  await db.execute(`DELETE FROM ${outboxTable}`)
  await db.execute(`UPDATE ${outboxPartitionsTable} SET owner = NULL, lease_expires_at = NULL`)
  await db.execute(`DELETE FROM ${outboxRelaysTable}`)
}

/**
 * Fails unless every counter in `keys` is above zero: a property whose generator stopped
 * reaching the situations its invariants are about would pass vacuously.
 */
export function expectCovered<K extends string>(
  coverage: Readonly<Record<K, number>>,
  keys: readonly K[],
): void {
  for (const key of keys) {
    expect(coverage[key], `${key} in ${JSON.stringify(coverage)}`).toBeGreaterThan(0)
  }
}

/**
 * What the relay model tests' worlds share: one ManualClock and outbox for every relay, what
 * was committed and what the broker stored, the trace for failure messages, and settling and
 * stopping the relay processes on the clock.
 */
export abstract class RelayModelWorld {
  readonly clock: ManualClock
  readonly outbox: Outbox
  /** Committed event ids per aggregate, in commit order. */
  readonly committed = new Map<string, string[]>()
  /** What the broker stored, in order (with repeats). */
  readonly log: Publication[] = []
  /** Commands and what the relays and the broker did meanwhile, for failure messages. */
  readonly trace: string[] = []

  constructor(startMs: number) {
    this.clock = new ManualClock(startMs)
    this.outbox = createOutbox({ clock: this.clock, topic: 'orders' })
  }

  /** The relay processes in their slots, alive or not. */
  abstract processes(): RelayProcess[]

  /** Notes `events`, just committed in one transaction, in commit order. */
  protected noteCommitted(events: readonly { id: string; aggregateId: string }[]): void {
    for (const event of events) {
      const list = this.committed.get(event.aggregateId) ?? []
      list.push(event.id)
      this.committed.set(event.aggregateId, list)
    }
  }

  /** Moves the clock in steps until `promise` settles (a stop waiting for its batch). */
  async settle(promise: Promise<unknown>, what: string): Promise<void> {
    await settleOnClock(this.clock, promise, what, () => this.describe())
  }

  describe(): string {
    return `trace:\n${this.trace.join('\n')}\nbroker log: ${this.log.map((p) => `${p.id}@${p.by}`).join(' ')}`
  }

  /** Stops every live process (crash plans dropped), each after the batch it has in hand. */
  async stopAll(): Promise<void> {
    for (const process of this.processes()) {
      process.crashAt = undefined
      if (!process.alive) continue
      await this.settle(process.stopping ?? process.relay.stop(), `${process.name}'s stop`)
    }
  }
}
