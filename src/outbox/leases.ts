import { randomUUID } from 'node:crypto'
import type { Clock } from '../core/clock.js'
import { BreakwaterError } from '../core/errors.js'
import type { SqlDriver } from '../stores/index.js'
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
   * or claim plus the lease length (measured before the statement ran, so never optimistic).
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
      if (await this.#heartbeat()) return
      const rows = await this.#db.query<{ expires_at: number | string }>(this.#sql.holder, [
        this.#relayId,
      ])
      const expiresAt = Number(rows[0]?.expires_at ?? 0)
      await wait(Math.max(0, expiresAt - this.#clock.now()) + 1)
      if (!(await this.#heartbeat())) throw new RelayIdInUseError(this.#relayId)
    })
  }

  /**
   * Extends every held lease and the relay's heartbeat; returns partitions found lost. Rejects
   * with {@link RelayIdInUseError} (its `lost`: what was held) once another instance holds the id.
   */
  renew(): Promise<number[]> {
    return this.#serial(() => this.#renew())
  }

  /** Renews, then claims or releases partitions towards the fair share. */
  rebalance(): Promise<LeaseChange> {
    return this.#serial(async () => {
      const lost = await this.#renew()
      const now = this.#clock.now()
      await this.#db.execute(this.#sql.forgetRelays, [now])
      const live = await this.#db.query<{ n: number | string }>(this.#sql.liveRelays, [now])
      const relays = Math.max(1, Number(live[0]?.n ?? 1))
      const share = Math.ceil(OUTBOX_PARTITIONS / relays)
      let claimed: number[] = []
      let released: number[] = []
      if (this.#owned.size > share) {
        released = this.partitions.slice(share)
        const tokens = this.#tokensOf(released)
        // Forgotten before the statement: if its reply is lost after it ran, the partitions are
        // free in the database and another relay may claim them at once. If it did not run,
        // they are still held there, unknown to this relay, until their lease runs out.
        this.forget(released)
        await this.#db.execute(this.#sql.release, [this.#relayId, tokens, this.#instance])
      } else if (this.#owned.size < share) {
        const start = this.#clock.now()
        const rows = await this.#db.query<{ partition_no: number; token: number }>(
          this.#sql.claim,
          [this.#relayId, start + this.#leaseMs, start, share - this.#owned.size, this.#instance],
        )
        claimed = rows.map((r) => Number(r.partition_no))
        for (const row of rows) this.#owned.set(Number(row.partition_no), Number(row.token))
        // The renewal and the claim both set leases; the earlier one bounds them all.
      }
      return { claimed, released, lost }
    })
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

  // Renews the heartbeat; false if another live instance holds the id. The first time this
  // instance gets the id, the tokens of partitions recorded for it are bumped: they were held
  // by an earlier instance (crashed, or stalled past its heartbeat), whose writes must fail.
  async #heartbeat(): Promise<boolean> {
    const now = this.#clock.now()
    const rows = await this.#db.query(this.#sql.heartbeat, [
      this.#relayId,
      this.#startedAt,
      now + this.#leaseMs,
      this.#instance,
      now,
    ])
    if (rows.length === 0) {
      this.#holdsId = false
      return false
    }
    if (!this.#holdsId) {
      await this.#db.execute(this.#sql.fence, [this.#relayId])
      this.#holdsId = true
    }
    return true
  }

  async #renew(): Promise<number[]> {
    const start = this.#clock.now()
    const expires = start + this.#leaseMs
    if (!(await this.#heartbeat())) {
      // Another instance took the id over: everything held is lost to it, for good (this
      // instance can never take the id back while the other one lives), so the relay stops.
      const lost = this.partitions
      this.#owned.clear()
      this.#validUntil = 0
      this.#retired = new RelayIdInUseError(this.#relayId)
      throw new RelayIdInUseError(this.#relayId, lost)
    }
    // Only the partitions held with the tokens this instance knows: one whose token moved on
    // was taken over (by another relay, or by a new instance of this id fencing it while this
    // renewal ran), and the new token is not this instance's to adopt.
    const rows = await this.#db.query<{ partition_no: number; token: number }>(this.#sql.renew, [
      this.#relayId,
      expires,
      this.#instance,
      this.tokens(),
    ])
    const fresh = new Map<number, number>()
    for (const row of rows) fresh.set(Number(row.partition_no), Number(row.token))
    const lost: number[] = []
    for (const [partition, token] of this.#owned) {
      if (fresh.get(partition) !== token) lost.push(partition)
    }
    this.#owned = fresh
    this.#validUntil = expires
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
