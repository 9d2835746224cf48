import type { SqlDriver } from '../stores/index.js'
import {
  type BatchOutcome,
  type InsertOutcome,
  type NewInstance,
  type TransitionWrite,
  writeBatch,
} from './store.js'

interface Pending<T> {
  readonly resolve: (value: T) => void
  readonly reject: (error: unknown) => void
}

/**
 * Group commit for one worker: inserts and fenced transitions of all the instances the worker
 * runs are queued and written together. One flush runs at a time; whatever queued meanwhile
 * goes into the next one, so a lone write goes out at once and, under load, batches grow by
 * themselves (no timer, no added latency). Lease renewals run between flushes (`exclusive`):
 * on PostgreSQL two multi-row updates of the same worker's rows on two connections could
 * otherwise lock them in opposite orders and deadlock.
 */
export class WriteBatcher {
  readonly #db: SqlDriver
  readonly #maxBatch: number
  #inserts: { instance: NewInstance; pending: Pending<InsertOutcome> }[] = []
  #writes: { write: TransitionWrite; pending: Pending<BatchOutcome> }[] = []
  #exclusive: { run: () => Promise<unknown>; pending: Pending<unknown> }[] = []
  #flushing = false

  constructor(db: SqlDriver, maxBatch: number) {
    this.#db = db
    this.#maxBatch = maxBatch
  }

  insert(instance: NewInstance): Promise<InsertOutcome> {
    return new Promise((resolve, reject) => {
      this.#inserts.push({ instance, pending: { resolve, reject } })
      this.#kick()
    })
  }

  write(write: TransitionWrite): Promise<BatchOutcome> {
    return new Promise((resolve, reject) => {
      this.#writes.push({ write, pending: { resolve, reject } })
      this.#kick()
    })
  }

  /** Runs `fn` when no flush is in flight. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#exclusive.push({
        run: fn,
        pending: { resolve: resolve as (value: unknown) => void, reject },
      })
      this.#kick()
    })
  }

  #kick(): void {
    if (!this.#flushing) void this.#flush()
  }

  async #flush(): Promise<void> {
    this.#flushing = true
    try {
      for (;;) {
        const job = this.#exclusive.shift()
        if (job !== undefined) {
          try {
            job.pending.resolve(await job.run())
          } catch (error) {
            job.pending.reject(error)
          }
          continue
        }
        if (this.#inserts.length === 0 && this.#writes.length === 0) return
        const inserts = this.#inserts.splice(0, this.#maxBatch)
        const writes = this.#writes.splice(0, this.#maxBatch)
        // On PostgreSQL the two statements commit separately, so each part settles on its own.
        const parts =
          this.#db.dialect === 'postgres' && inserts.length > 0 && writes.length > 0
            ? [
                { inserts, writes: [] },
                { inserts: [], writes },
              ]
            : [{ inserts, writes }]
        for (const part of parts) {
          try {
            const { inserted, written } = await writeBatch(
              this.#db,
              part.inserts.map((i) => i.instance),
              part.writes.map((w) => w.write),
            )
            for (const [n, i] of part.inserts.entries()) i.pending.resolve(inserted[n])
            for (const [n, w] of part.writes.entries()) w.pending.resolve(written[n])
          } catch (error) {
            // The database failed (not a token): every writer gives its instance up; the
            // leases expire and the persisted state decides what runs next.
            for (const i of part.inserts) i.pending.reject(error)
            for (const w of part.writes) w.pending.reject(error)
          }
        }
      }
    } finally {
      this.#flushing = false
    }
  }
}
