import type { SqlTransaction } from '../stores/index.js'
import { IdempotencyInProgressError } from './errors.js'
import type {
  ClaimInput,
  ClaimOutcome,
  IdempotencyRecord,
  IdempotencyStore,
  LeaseRef,
  StoredResult,
  TakeoverInput,
} from './store.js'
import type { JsonValue } from './types.js'

interface Staged {
  readonly lease: LeaseRef
  readonly apply: (record: IdempotencyRecord) => IdempotencyRecord
}

/**
 * The transaction of the in-memory store: there is no database, so statements reject; the
 * store's own writes are staged and applied when the transaction commits, so a handler that
 * throws after `complete` leaves nothing behind, as with SQL.
 */
class MemoryTransaction implements SqlTransaction {
  // The memory store has no SQL at all; 'sqlite' is only here to satisfy the executor type.
  readonly dialect = 'sqlite' as const
  readonly staged: Staged[] = []
  open = true

  query<R>(): Promise<R[]> {
    return Promise.reject(noSql())
  }

  execute(): Promise<{ rowCount: number }> {
    return Promise.reject(noSql())
  }

  transaction<T>(): Promise<T> {
    return Promise.reject(noSql())
  }
}

function noSql(): TypeError {
  return new TypeError(
    'The in-memory idempotency store has no database: use a SQL store for business writes in ctx.tx',
  )
}

const id = (scope: string, key: string): string => `${scope}\u0000${key}`

/**
 * A record as a caller may keep it: a SQL store hands out rows it decoded, so changing one (or
 * the body or phases that were passed in) never changes what is replayed later; this store
 * copies on the way in and out to behave the same. Records hold only plain data, so a
 * structured clone copies them whole.
 */
const copied = <T>(value: T): T => structuredClone(value)

/**
 * An idempotency store in process memory, for unit tests and single-process prototypes. It
 * keeps the same semantics as the SQL store (atomic claims, fenced writes, staged commits) but
 * nothing survives a restart and `ctx.tx` cannot run statements.
 *
 * @example
 * ```ts
 * const idempotency = createIdempotency({ store: createMemoryIdempotencyStore() })
 * ```
 */
export function createMemoryIdempotencyStore(): IdempotencyStore & {
  /** Number of records held (for tests). */
  readonly size: number
} {
  const records = new Map<string, IdempotencyRecord>()

  const holds = (lease: LeaseRef): IdempotencyRecord | undefined => {
    const record = records.get(id(lease.scope, lease.key))
    return record !== undefined &&
      record.state === 'in_progress' &&
      record.leaseToken === lease.leaseToken
      ? record
      : undefined
  }

  const fresh = (input: ClaimInput, attempt: number): IdempotencyRecord => ({
    scope: input.scope,
    key: input.key,
    fingerprint: input.fingerprint,
    state: 'in_progress',
    leaseToken: input.leaseToken,
    leaseExpiresAtMs: input.leaseExpiresAtMs,
    attempt,
    recoveryPoint: undefined,
    phases: {},
    result: undefined,
    createdAtMs: input.nowMs,
    updatedAtMs: input.nowMs,
    expiresAtMs: input.expiresAtMs,
  })

  const asMemoryTx = (tx: SqlTransaction): MemoryTransaction => {
    if (!(tx instanceof MemoryTransaction) || !tx.open) {
      throw new TypeError('Not an open transaction of this in-memory idempotency store')
    }
    return tx
  }

  return {
    get size() {
      return records.size
    },

    async claim(input: ClaimInput): Promise<ClaimOutcome> {
      const existing = records.get(id(input.scope, input.key))
      if (existing !== undefined) return { claimed: false, existing: copied(existing) }
      records.set(id(input.scope, input.key), fresh(input, 1))
      return { claimed: true }
    },

    async get(scope: string, key: string) {
      const record = records.get(id(scope, key))
      return record === undefined ? undefined : copied(record)
    },

    async takeOver(input: TakeoverInput): Promise<boolean> {
      const record = records.get(id(input.scope, input.key))
      if (
        record === undefined ||
        record.state !== 'in_progress' ||
        record.leaseToken !== input.previousLeaseToken ||
        (record.leaseExpiresAtMs ?? 0) > input.nowMs
      ) {
        return false
      }
      records.set(id(input.scope, input.key), {
        ...record,
        leaseToken: input.leaseToken,
        leaseExpiresAtMs: input.leaseExpiresAtMs,
        attempt: record.attempt + 1,
        updatedAtMs: input.nowMs,
        // Never expire (be swept or recycled) while the lease is live.
        expiresAtMs: Math.max(record.expiresAtMs, input.leaseExpiresAtMs),
      })
      return true
    },

    async recycle(input: TakeoverInput): Promise<boolean> {
      const record = records.get(id(input.scope, input.key))
      if (
        record === undefined ||
        record.leaseToken !== input.previousLeaseToken ||
        record.expiresAtMs > input.nowMs
      ) {
        return false
      }
      records.set(id(input.scope, input.key), fresh(input, 1))
      return true
    },

    async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
      const tx = new MemoryTransaction()
      try {
        const value = await fn(tx)
        // SQL holds a row lock from the fenced UPDATE to COMMIT; here the fence is checked
        // again at commit, and a lost lease rolls the whole transaction back.
        for (const write of tx.staged) {
          if (holds(write.lease) === undefined) {
            throw new IdempotencyInProgressError(write.lease.key, 'lease-lost', 0)
          }
        }
        for (const write of tx.staged) {
          const name = id(write.lease.scope, write.lease.key)
          records.set(name, write.apply(records.get(name)!))
        }
        return value
      } finally {
        tx.open = false
      }
    },

    async complete(
      tx: SqlTransaction,
      lease: LeaseRef,
      result: StoredResult,
      nowMs: number,
      expiresAtMs: number,
    ): Promise<boolean> {
      const memoryTx = asMemoryTx(tx)
      if (holds(lease) === undefined) return false
      const recorded = copied({ status: result.status, headers: result.headers, body: result.body })
      memoryTx.staged.push({
        lease,
        apply: (record) => ({
          ...record,
          state: 'completed',
          leaseExpiresAtMs: undefined,
          result: recorded,
          updatedAtMs: nowMs,
          expiresAtMs,
        }),
      })
      return true
    },

    async savePhase(
      tx: SqlTransaction,
      lease: LeaseRef,
      point: string,
      phases: Readonly<Record<string, JsonValue>>,
      nowMs: number,
      leaseExpiresAtMs: number,
    ): Promise<boolean> {
      const memoryTx = asMemoryTx(tx)
      if (holds(lease) === undefined) return false
      const saved = copied(phases)
      memoryTx.staged.push({
        lease,
        apply: (record) => ({
          ...record,
          recoveryPoint: point,
          phases: saved,
          leaseExpiresAtMs,
          updatedAtMs: nowMs,
          expiresAtMs: Math.max(record.expiresAtMs, leaseExpiresAtMs),
        }),
      })
      return true
    },

    async release(lease: LeaseRef): Promise<boolean> {
      if (holds(lease) === undefined) return false
      records.delete(id(lease.scope, lease.key))
      return true
    },

    async sweep(nowMs: number, limit: number): Promise<number> {
      let deleted = 0
      for (const [name, record] of records) {
        if (deleted >= limit) break
        if (record.expiresAtMs <= nowMs) {
          records.delete(name)
          deleted++
        }
      }
      return deleted
    },
  }
}
