import { randomUUID } from 'node:crypto'
import type { Clock } from '../core/clock.js'
import { BreakwaterError } from '../core/errors.js'
import { readStoredWholeNumber } from '../stores/errors.js'
import type { SqlDriver, SqlTransaction } from '../stores/index.js'
import { measuredOnceBegun, measuredQuery, queryLast } from '../stores/measured.js'
import { OUTBOX_PARTITIONS } from './partition.js'
import { listParam, type OutboxStatements, outboxStatements } from './sql.js'

/**
 * A relay's id is held by another live relay instance (another process started with the same
 * `relayId`); this one publishes nothing. `start()` rejects with it; a running relay that finds
 * its id taken over (it stalled past its heartbeat and another instance started with the id)
 * stops itself and reports it in a `failed` event.
 */
export class RelayIdInUseError extends BreakwaterError {
  /** The relay id in use. */
  readonly relayId: string
  /** The partitions this instance held when it found its id taken over (empty at start). */
  readonly lost: readonly number[]

  constructor(relayId: string, lost: readonly number[] = []) {
    super(
      'RELAY_ID_IN_USE',
      `relay id '${relayId}' is held by another live relay; give each relay process its own relayId`,
    )
    this.relayId = relayId
    this.lost = lost
  }
}

/** What a rebalance changed. */
export interface LeaseChange {
  readonly claimed: readonly number[]
  readonly released: readonly number[]
  readonly lost: readonly number[]
}

/** What a rebalance did: the lease changes, and the rows of the partitions table it recreated. */
export interface Rebalanced extends LeaseChange {
  /**
   * Rows of the partitions table (0..63) this relay's statement recreated because they were
   * missing (deleted by hand); 0 nearly always. When relays recreate rows at once, each row is
   * counted by the one whose statement created it, so the counts add up to the rows restored.
   */
  readonly recreated: number
}

/**
 * A relay's partition leases. Each partition row names its owner, when the lease ends and a
 * fencing token that grows by one at every takeover; the relay publishes only rows of
 * partitions it holds, and its "mark published" writes check owner and token, so a relay that
 * lost a partition (it stalled past its lease and another relay took over) writes nothing for
 * it. Relays register in a heartbeat table; each aims for a fair share, ceil(partitions / live
 * relays): it claims free or expired partitions up to it and releases any above it.
 *
 * The heartbeat row carries a token per relay instance (per process): the id is taken only if
 * free, held by this instance, or held by one whose heartbeat expired, so a second live process
 * with the same relay id gets {@link RelayIdInUseError} instead of renewing (and publishing)
 * the first one's partitions. Taking an id over bumps the fencing token of every partition
 * recorded for it, so the previous instance, should it still be alive, writes nothing more.
 *
 * Every operation runs one at a time (a promise chain), so a renewal never races a claim in
 * the relay's view of what it owns.
 *
 * Leases and the heartbeat are written to run `leaseMs` from when their statements run, once
 * their transaction has begun (after the wait for SQLite's writer or a pool connection), while
 * another relay's lease or heartbeat counts as run out only if it had when the operation was
 * asked for: see `measuredOnceBegun`. The relay's own view ({@link validUntil}) is measured from
 * before that wait, so it never runs later than what the database holds.
 */
export class PartitionLeases {
  readonly #db: SqlDriver
  readonly #sql: OutboxStatements
  readonly #relayId: string
  readonly #clock: Clock
  readonly #leaseMs: number
  readonly #startedAt: number
  readonly #instance = randomUUID()
  // Whether this instance has taken the id (and fenced off any earlier instance of it).
  #holdsId = false
  // partition -> fencing token
  #owned = new Map<number, number>()
  #validUntil = 0
  #chain: Promise<unknown> = Promise.resolve()
  // Set once this instance is done with the database: its id was taken over (it can never get
  // it back while the other instance lives) or its relay crashed. Operations still queued then
  // send nothing: a heartbeat would at best be a stray write, and once the new holder's own
  // heartbeat ran out (a short stall) it would take the id back and fence the live relay off.
  #retired: Error | undefined

  constructor(db: SqlDriver, relayId: string, clock: Clock, leaseMs: number) {
    this.#db = db
    this.#sql = outboxStatements[db.dialect]
    this.#relayId = relayId
    this.#clock = clock
    this.#leaseMs = leaseMs
    this.#startedAt = clock.now()
  }

  /** The partitions held, ascending. */
  get partitions(): number[] {
    return [...this.#owned.keys()].sort((a, b) => a - b)
  }

  /** How many partitions are held. */
  get size(): number {
    return this.#owned.size
  }

  /** Whether `partition` is held. */
  owns(partition: number): boolean {
    return this.#owned.has(partition)
  }

  /**
   * The end of the leases as this relay knows them: the start of the last successful renewal
   * plus the lease length. Measured from before the renewal waited for the database, while the
   * database measures from after, so it is never later than the leases the database holds.
   */
  get validUntil(): number {
    return this.#validUntil
  }

  /** The fencing tokens as a list indexed by partition (-1 where not held). */
  tokens(): unknown {
    return this.#tokensOf(this.#owned.keys())
  }

  // The tokens of `partitions` (held ones) as a list indexed by partition, -1 elsewhere.
  #tokensOf(partitions: Iterable<number>): unknown {
    const tokens = new Array<number>(OUTBOX_PARTITIONS).fill(-1)
    for (const partition of partitions) {
      const token = this.#owned.get(partition)
      if (token !== undefined) tokens[partition] = token
    }
    return listParam(this.#db.dialect, tokens)
  }

  /** Drops partitions from the local view (the database said they are no longer ours). */
  forget(partitions: Iterable<number>): void {
    for (const p of partitions) this.#owned.delete(p)
  }

  /**
   * Takes the relay id for this instance. If another live instance holds it, waits once until
   * that heartbeat's expiry (a crashed relay restarted with its old id comes up then, at most
   * leaseMs later) and rejects with {@link RelayIdInUseError} if it was renewed meanwhile.
   * `wait` sleeps on the relay's clock and rejects when the relay is stopped.
   */
  register(wait: (ms: number) => Promise<void>): Promise<void> {
    return this.#serial(async () => {
      if (await this.#beat()) return
      const rows = await this.#db.query<{ expires_at: number | string }>(this.#sql.holder, [
        this.#relayId,
      ])
      // Not a whole number (changed outside breakwater): the heartbeat statement takes such an
      // end as run out, so it is no reason to wait; Number() made it NaN, and a wait of NaN.
      const expiresAt = readStoredWholeNumber(rows[0]?.expires_at) ?? 0
      await wait(Math.max(0, expiresAt - this.#clock.now()) + 1)
      if (!(await this.#beat())) throw new RelayIdInUseError(this.#relayId)
    })
  }

  /**
   * Extends every held lease and the relay's heartbeat; returns partitions found lost. Rejects
   * with {@link RelayIdInUseError} (its `lost`: what was held) once another instance holds the id.
   */
  renew(): Promise<number[]> {
    return this.#serial(() => this.#renew())
  }

  /**
   * Renews, then claims or releases partitions towards the fair share, recreating missing rows
   * of the partitions table when the claim comes up short.
   */
  rebalance(): Promise<Rebalanced> {
    return this.#serial(async () => {
      const lost = await this.#renew()
      const now = this.#clock.now()
      await this.#db.execute(this.#sql.forgetRelays, [now])
      const live = await this.#db.query<{ n: number | string }>(this.#sql.liveRelays, [now])
      const relays = Math.max(1, Number(live[0]?.n ?? 1))
      const share = Math.ceil(OUTBOX_PARTITIONS / relays)
      let claimed: number[] = []
      let released: number[] = []
      let recreated = 0
      if (this.#owned.size > share) {
        released = this.partitions.slice(share)
        const tokens = this.#tokensOf(released)
        // Forgotten before the statement: if its reply is lost after it ran, the partitions are
        // free in the database and another relay may claim them at once. If it did not run,
        // they are still held there, unknown to this relay, until their lease runs out.
        this.forget(released)
        await this.#db.execute(this.#sql.release, [this.#relayId, tokens, this.#instance])
      } else if (this.#owned.size < share) {
        // The new leases run from when the claim runs; another relay's lease counts as run out
        // only if it had when the claim was asked for (its renewal may be queued behind ours).
        const wanted = share - this.#owned.size
        claimed = await this.#claim(wanted)
        // Short: other relays hold the rest, or rows of the partitions table were deleted by
        // hand (a relay claims only rows that exist, so their events were never published).
        const restored = claimed.length < wanted ? await this.#restoreMissing() : undefined
        if (restored !== undefined) {
          recreated = restored
          claimed = [...claimed, ...(await this.#claim(wanted - claimed.length))]
        }
        // The renewal and the claim both set leases; the earlier one bounds them all.
      }
      return { claimed, released, lost, recreated }
    })
  }

  // Claims up to `wanted` free or expired partitions; returns them.
  async #claim(wanted: number): Promise<number[]> {
    const rows = await measuredQuery<{ partition_no: number; token: number }>(
      this.#db,
      this.#clock,
      (now, asked) => ({
        sql: this.#sql.claim,
        params: [this.#relayId, now + this.#leaseMs, asked, wanted, this.#instance],
      }),
    )
    for (const row of rows) this.#owned.set(Number(row.partition_no), Number(row.token))
    return rows.map((r) => Number(r.partition_no))
  }

  // Recreates missing rows of partitions 0..63: undefined if none was missing, else how many this
  // statement created (0 when another relay's got there first; the claim is tried again all the
  // same, as those rows are new and free). Looked for only when a claim came up short: on a
  // relay's first rebalances (a relay is short of all 64 until it has claimed its share) and
  // while other relays hold the rest: one read of a 64-row table per rebalance then, no
  // write (on SQLite a write would take the writer lock every round). Any relay may do it, at
  // once with others: restorePartitions creates each row once, with a token no relay can hold.
  async #restoreMissing(): Promise<number | undefined> {
    const rows = await this.#db.query<{ n: number | string }>(this.#sql.partitionRows)
    if (Number(rows[0]?.n ?? 0) >= OUTBOX_PARTITIONS) return undefined
    const { rowCount } = await this.#db.execute(this.#sql.restorePartitions, [this.#clock.now()])
    return rowCount
  }

  /**
   * Ends this instance's use of the database at once (its relay crashed): operations still
   * queued, and later ones, reject with `reason` without a statement. Nothing is released; the
   * leases run out.
   */
  retire(reason: Error): void {
    this.#retired ??= reason
    this.#owned.clear()
    this.#validUntil = 0
  }

  /** Releases every partition and removes the relay's heartbeat (a graceful stop). */
  releaseAll(): Promise<void> {
    return this.#serial(async () => {
      const tokens = this.tokens()
      this.#owned.clear()
      this.#validUntil = 0
      await this.#db.execute(this.#sql.release, [this.#relayId, tokens, this.#instance])
      await this.#db.execute(this.#sql.unregister, [this.#relayId, this.#instance])
    })
  }

  // Renews the heartbeat in its own transaction; false if another live instance holds the id.
  async #beat(): Promise<boolean> {
    const held = await measuredOnceBegun(this.#db, this.#clock, (tx, now, asked) =>
      this.#heartbeat(tx, now, asked, true),
    )
    this.#holdsId = held
    return held
  }

  // Renews the heartbeat in `tx` to leaseMs from `now`, taking the id over from an instance
  // whose heartbeat had run out by `asked`; false if another live instance holds the id. The
  // first time this instance gets the id, the tokens of partitions recorded for it are bumped
  // (with `last`, as the transaction's last statement): they were held by an earlier instance
  // (crashed, or stalled past its heartbeat), whose writes must fail. The caller records that
  // the id is held once the transaction has committed.
  async #heartbeat(
    tx: SqlTransaction,
    now: number,
    asked: number,
    last: boolean,
  ): Promise<boolean> {
    const rows = await tx.query(this.#sql.heartbeat, [
      this.#relayId,
      this.#startedAt,
      now + this.#leaseMs,
      this.#instance,
      asked,
    ])
    if (rows.length === 0) return false
    if (!this.#holdsId) {
      const params = [this.#relayId]
      await (last ? queryLast(tx, this.#sql.fence, params) : tx.execute(this.#sql.fence, params))
    }
    return true
  }

  async #renew(): Promise<number[]> {
    // Heartbeat and leases in one transaction, so both run from when it has begun. On
    // PostgreSQL it costs what the two statements did: BEGIN goes with the heartbeat and
    // COMMIT with the renewal.
    const renewal = await measuredOnceBegun(this.#db, this.#clock, async (tx, now, asked) => {
      if (!(await this.#heartbeat(tx, now, asked, false))) return undefined
      // Only the partitions held with the tokens this instance knows: one whose token moved on
      // was taken over (by another relay, or by a new instance of this id fencing it while
      // this renewal ran), and the new token is not this instance's to adopt.
      const rows = await queryLast<{ partition_no: number; token: number }>(tx, this.#sql.renew, [
        this.#relayId,
        now + this.#leaseMs,
        this.#instance,
        this.tokens(),
      ])
      return { rows, asked }
    })
    this.#holdsId = renewal !== undefined
    if (renewal === undefined) {
      // Another instance took the id over: everything held is lost to it, for good (this
      // instance can never take the id back while the other one lives), so the relay stops.
      const lost = this.partitions
      this.#owned.clear()
      this.#validUntil = 0
      this.#retired = new RelayIdInUseError(this.#relayId)
      throw new RelayIdInUseError(this.#relayId, lost)
    }
    const fresh = new Map<number, number>()
    for (const row of renewal.rows) fresh.set(Number(row.partition_no), Number(row.token))
    const lost: number[] = []
    for (const [partition, token] of this.#owned) {
      if (fresh.get(partition) !== token) lost.push(partition)
    }
    this.#owned = fresh
    // From before the wait: never later than the leases just written.
    this.#validUntil = renewal.asked + this.#leaseMs
    return lost
  }

  #serial<T>(run: () => Promise<T>): Promise<T> {
    const guarded = (): Promise<T> => {
      // Lost nothing more: what it held was reported by the operation that found out.
      return this.#retired === undefined ? run() : Promise.reject(this.#retired)
    }
    const next = this.#chain.then(guarded, guarded)
    this.#chain = next.catch(() => {})
    return next
  }
}
