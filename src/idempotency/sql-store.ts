import { describeValue, InvalidOptionError } from '../core/errors.js'
import {
  parseStoredObject,
  readStoredNumber,
  StoredDataError,
  type StoredPlace,
} from '../stores/errors.js'
import {
  type AppliedMigration,
  runMigrations,
  type SqlDriver,
  type SqlExecutor,
  type SqlTransaction,
  type SqlWrite,
  type WriteCheck,
} from '../stores/index.js'
import { IdempotencyInProgressError } from './errors.js'
import {
  maxGroupSize,
  type ResultUnit,
  runClaimGroup,
  runResultGroup,
  TurnGroups,
} from './pg-groups.js'
import {
  type IdempotencyStatements,
  idempotencyMigrations,
  idempotencyStatements,
  idempotencyTable,
  leaseLostSqlState,
} from './sql.js'
import type {
  ClaimInput,
  ClaimOutcome,
  IdempotencyClaimSteps,
  IdempotencyRecord,
  IdempotencyStore,
  LeaseRef,
  StoredResult,
  TakeoverInput,
} from './store.js'
import type { JsonValue } from './types.js'

interface RecordRow {
  scope: string
  idem_key: string
  fingerprint: string
  state: string
  lease_token: string
  lease_expires_at: number | string | null
  attempt: number | string
  recovery_point: string | null
  recovery_data: string | null
  response_status: number | null
  response_headers: string | null
  response_body: Uint8Array | null
  created_at: number | string
  updated_at: number | string
  expires_at: number | string
}

// What the claim returns: the token when it claimed; on PostgreSQL also the existing record's
// columns (all NULL when it claimed, or when its snapshot cannot see the winner yet).
type ClaimRow = { claimed_token: string | null } & {
  [K in keyof RecordRow]?: RecordRow[K] | null
}

function toRecord(row: RecordRow): IdempotencyRecord {
  const completed = row.state === 'completed'
  const attempt = storedNumber(row, 'attempt')
  if (!Number.isInteger(attempt) || attempt < 1) {
    throw new StoredDataError(
      placeOf(row, 'attempt')(),
      `is not a positive whole number: ${attempt}`,
    )
  }
  return {
    scope: row.scope,
    key: row.idem_key,
    fingerprint: row.fingerprint,
    state: completed ? 'completed' : 'in_progress',
    leaseToken: row.lease_token,
    leaseExpiresAtMs: storedLeaseEnd(row, completed),
    attempt,
    recoveryPoint: row.recovery_point ?? undefined,
    phases:
      row.recovery_data === null
        ? {}
        : (storedJson(row, 'recovery_data') as Record<string, JsonValue>),
    result: completed
      ? {
          status: storedStatus(row),
          headers:
            row.response_headers === null
              ? {}
              : (storedJson(row, 'response_headers') as Record<string, string | string[]>),
          body: storedBody(row),
          bodyPlace: placeOf(row, 'response_body'),
        }
      : undefined,
    createdAtMs: storedNumber(row, 'created_at'),
    updatedAtMs: storedNumber(row, 'updated_at'),
    expiresAtMs: storedNumber(row, 'expires_at'),
  }
}

/**
 * A number column of the record. Read with `Number()`, SQLite's text set by hand into an INTEGER
 * column (`'soon'`) became NaN: a NaN lease end made callers poll NaN ms, a NaN retention end kept
 * the record for ever. Refused naming the key and the column, as the Redis store refuses a field.
 * Digit text is a number: PostgreSQL's BIGINT arrives as text through an executor whose pool does
 * not parse int8 (`fromKysely`), a BigInt from a better-sqlite3 with safe integers. Checked with
 * typeof, so a replay words nothing.
 */
function storedNumber(row: RecordRow, column: NumberColumn): number {
  const number = readStoredNumber(row[column])
  if (number !== undefined) return number
  throw new StoredDataError(
    placeOf(row, column)(),
    `is not a number: ${describeValue(row[column])}`,
  )
}

/**
 * The lease end: none once completed, a number while in progress. An in-progress record without
 * one (a row changed outside breakwater) was taken for an expired lease, but the takeover's
 * `lease_expires_at <= now` never matches NULL, so every call with the key was answered 409
 * in-progress for the record's whole retention, and nothing was reported.
 */
function storedLeaseEnd(row: RecordRow, completed: boolean): number | undefined {
  if (row.lease_expires_at !== null) return storedNumber(row, 'lease_expires_at')
  if (completed) return undefined
  throw new StoredDataError(
    placeOf(row, 'lease_expires_at')(),
    'is empty on a record in progress, which must have a lease end',
  )
}

type NumberColumn =
  | 'lease_expires_at'
  | 'attempt'
  | 'response_status'
  | 'created_at'
  | 'updated_at'
  | 'expires_at'

/**
 * The recorded status: none for an `idempotent()` result, else one a response can be sent with.
 * Anything else (text or a fraction on SQLite, `42` on either database) failed every replay.
 */
function storedStatus(row: RecordRow): number | undefined {
  const stored: unknown = row.response_status
  if (stored === null) return undefined
  const status = readStoredNumber(stored) ?? Number.NaN
  if (Number.isInteger(status) && status >= 100 && status <= 599) return status
  throw new StoredDataError(
    placeOf(row, 'response_status')(),
    `is not an HTTP status from 100 to 599: ${describeValue(stored)}`,
  )
}

/**
 * A JSON object column of the record, parsed. Text that is not JSON, or JSON that is not an
 * object (`null` headers, a row changed outside breakwater), fails with StoredDataError naming
 * the key and the column, not a bare SyntaxError or a TypeError in the replay.
 */
function storedJson(
  row: RecordRow,
  column: 'recovery_data' | 'response_headers',
): Record<string, unknown> {
  return parseStoredObject(row[column], placeOf(row, column))
}

/**
 * The recorded body. On SQLite a text set into the BLOB column by hand stays text: refused here,
 * naming the key, rather than handed on as a string that no replay can send or decode.
 */
function storedBody(row: RecordRow): Uint8Array {
  const body: unknown = row.response_body
  if (body === null) return new Uint8Array(0)
  if (body instanceof Uint8Array) return body
  throw new StoredDataError(placeOf(row, 'response_body')(), `is not bytes (${typeof body})`)
}

/**
 * @internal Where `column` of the record of `key` is, built only when it is reported (a command
 * handler names a replayed result of the wrong shape alike). The key only, not the scope: a
 * scope may be derived from a caller's credential.
 */
export const recordPlace = (key: string, column: string) => (): StoredPlace => ({
  table: idempotencyTable,
  row: `record of key ${JSON.stringify(key)}`,
  column,
})

const placeOf = (row: RecordRow, column: string) => recordPlace(row.idem_key, column)

// Times are stored as whole epoch milliseconds, floored as `storedTime` (src/core/clock.ts) floors
// a clock's reading for the other capabilities. This store floors the values it is handed rather
// than reading a clock: the IdempotencyStore interface takes times from any caller.
const ms = Math.floor

// better-sqlite3 binds Buffers (not every Uint8Array view) as BLOBs; pg accepts both.
const asBuffer = (bytes: Uint8Array): Buffer =>
  Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/**
 * The claim steps over one executor: the driver (autocommit) or an open transaction. A class:
 * with `claim: 'in-transaction'` one is made per request, over that request's transaction.
 */
class ClaimSteps implements IdempotencyClaimSteps {
  readonly #executor: SqlExecutor
  readonly #sql: IdempotencyStatements
  readonly #claimSql: string
  /** The driver's group commit, for a claim outside any transaction (SQLite). */
  readonly #atomically: SqlDriver['writeAtomically']
  /** A group of claims in one statement, for a claim outside any transaction (PostgreSQL). */
  readonly #grouped: ((input: ClaimInput) => Promise<ClaimRow | undefined>) | undefined

  constructor(
    executor: SqlExecutor,
    sql: IdempotencyStatements,
    claimSql: string,
    atomically?: SqlDriver['writeAtomically'],
    grouped?: (input: ClaimInput) => Promise<ClaimRow | undefined>,
  ) {
    this.#executor = executor
    this.#sql = sql
    this.#claimSql = claimSql
    this.#atomically = atomically
    this.#grouped = grouped
  }

  async get(scope: string, key: string): Promise<IdempotencyRecord | undefined> {
    const rows = await this.#executor.query<RecordRow>(this.#sql.select, [scope, key])
    return rows[0] === undefined ? undefined : toRecord(rows[0])
  }

  async claim(input: ClaimInput): Promise<ClaimOutcome> {
    const params = claimParams(input)
    const counted = this.#sql.claimCounted
    if (counted !== undefined) {
      const rowCount =
        this.#atomically === undefined
          ? (await this.#executor.execute(counted, params)).rowCount
          : (await this.#atomically([{ sql: counted, params }]))[0]
      if (rowCount === 1) return claimed
      return { claimed: false, existing: await this.get(input.scope, input.key) }
    }
    const row =
      this.#grouped === undefined
        ? (await this.#executor.query<ClaimRow>(this.#claimSql, params))[0]
        : await this.#grouped(input)
    if (row !== undefined && row.claimed_token !== null) return claimed
    // The existing record comes in the same row when the statement's snapshot shows it.
    if (row?.idem_key != null) return { claimed: false, existing: toRecord(row as RecordRow) }
    return { claimed: false, existing: await this.get(input.scope, input.key) }
  }

  async takeOver(input: TakeoverInput): Promise<boolean> {
    const { rowCount } = await this.#executor.execute(this.#sql.takeOver, [
      input.scope,
      input.key,
      input.previousLeaseToken,
      input.leaseToken,
      ms(input.leaseExpiresAtMs),
      ms(input.nowMs),
    ])
    return rowCount === 1
  }

  async recycle(input: TakeoverInput): Promise<boolean> {
    const { rowCount } = await this.#executor.execute(this.#sql.recycle, [
      input.scope,
      input.key,
      input.previousLeaseToken,
      input.fingerprint,
      input.leaseToken,
      ms(input.leaseExpiresAtMs),
      ms(input.nowMs),
      ms(input.expiresAtMs),
    ])
    return rowCount === 1
  }
}

const claimed: ClaimOutcome = { claimed: true }

/** The parameters of the claim statements (`claim`, `claimCounted`, `claimInTransaction`). */
function claimParams(input: ClaimInput): unknown[] {
  return [
    input.scope,
    input.key,
    input.fingerprint,
    input.leaseToken,
    ms(input.leaseExpiresAtMs),
    ms(input.nowMs),
    ms(input.expiresAtMs),
  ]
}

/** The parameters of the fenced result write (`complete`, `completeOrRaise`). */
function completeParams(
  lease: LeaseRef,
  result: StoredResult,
  nowMs: number,
  expiresAtMs: number,
): unknown[] {
  return [
    lease.scope,
    lease.key,
    lease.leaseToken,
    result.status ?? null,
    JSON.stringify(result.headers),
    asBuffer(result.body),
    ms(nowMs),
    ms(expiresAtMs),
  ]
}

// A grouped result write that changed no row: the lease was lost, so the unit (the handler's
// deferred writes with it) is rolled back. Never escapes this file.
const leaseLostRefusal = new Error('idempotency: lease lost at the grouped result write')
const leaseHeld: WriteCheck = (rowCounts) =>
  rowCounts[rowCounts.length - 1] === 1 ? undefined : leaseLostRefusal

/**
 * The idempotency store on breakwater's SQL seam, for SQLite and PostgreSQL. Run
 * {@link migrateIdempotency} (or the CLI's `breakwater migrate`) once before use.
 *
 * Every protocol step is one statement: a claim is one `INSERT ... ON CONFLICT` (on PostgreSQL
 * it also reads the existing record, so a replay is one round trip; on SQLite, where a read
 * costs no round trip, the key is read before the claim and a conflict is read after it), the
 * result is recorded by one fenced `UPDATE` inside the handler's own transaction. It supports
 * both claim modes (`claim: 'leased'` and `'in-transaction'`).
 *
 * @example
 * ```ts
 * const db = await openDatabase('sqlite:./.breakwater/app.db')
 * await migrateIdempotency(db)
 * const idempotency = createIdempotency({ store: createSqlIdempotencyStore(db) })
 * ```
 */
export function createSqlIdempotencyStore(db: SqlDriver): IdempotencyStore {
  if (
    typeof db !== 'object' ||
    db === null ||
    typeof db.transaction !== 'function' ||
    !(db.dialect in idempotencyStatements)
  ) {
    throw new InvalidOptionError('db', 'a SqlDriver (sqlite or postgres)', db)
  }
  const sql: IdempotencyStatements = idempotencyStatements[db.dialect]
  // Bound once: the claim and the result share COMMITs with other requests' (group commit):
  // through the driver's writeAtomically on SQLite, as merged statements on PostgreSQL.
  const atomically = db.writeAtomically?.bind(db)
  const claimAll = sql.claimAll
  const claimGroups =
    atomically !== undefined || claimAll === undefined
      ? undefined
      : new TurnGroups<ClaimInput, ClaimRow | undefined>(
          (members) =>
            runClaimGroup(
              db,
              claimAll,
              members,
              async (input) => {
                const rows = await db.query<ClaimRow>(sql.claim, claimParams(input))
                return rows[0]
              },
              claimParams,
            ),
          maxGroupSize,
        )
  const resultGroups =
    atomically !== undefined || sql.completeAll === undefined
      ? undefined
      : new TurnGroups<ResultUnit, boolean>(
          (members) =>
            runResultGroup(db, sql, members, (unit) =>
              completeParams(unit.lease, unit.result, unit.nowMs, unit.expiresAtMs),
            ),
          maxGroupSize,
        )
  const autocommit = new ClaimSteps(
    db,
    sql,
    sql.claim,
    atomically,
    claimGroups === undefined ? undefined : (input) => claimGroups.add(input),
  )
  // The transactions a complete() rolled back on finding the lease lost (PostgreSQL), with
  // that lease: the driver rejects them with the raw BW001 error, reported by `transaction`
  // as the lease-lost error instead.
  const lostAtFinish = new WeakMap<SqlTransaction, LeaseRef>()

  return {
    dialect: db.dialect,
    claim: (input) => autocommit.claim(input),
    get: (scope, key) => autocommit.get(scope, key),
    takeOver: (input) => autocommit.takeOver(input),
    recycle: (input) => autocommit.recycle(input),

    inTransaction(tx: SqlTransaction): IdempotencyClaimSteps {
      return new ClaimSteps(tx, sql, sql.claimInTransaction)
    },

    async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
      let opened: SqlTransaction | undefined
      try {
        return await db.transaction((tx) => {
          opened = tx
          return fn(tx)
        })
      } catch (error) {
        // A callback that threw its own error after complete() returned false gets that error.
        const lost = opened === undefined ? undefined : lostAtFinish.get(opened)
        if (
          lost !== undefined &&
          (error as { code?: unknown } | null)?.code === leaseLostSqlState
        ) {
          throw new IdempotencyInProgressError(lost.key, 'lease-lost', 0)
        }
        throw error
      }
    },

    ...(resultGroups === undefined
      ? {}
      : {
          completeAtomically: (
            writes: readonly SqlWrite[],
            lease: LeaseRef,
            result: StoredResult,
            nowMs: number,
            expiresAtMs: number,
          ): Promise<boolean> => resultGroups.add({ writes, lease, result, nowMs, expiresAtMs }),
        }),
    ...(atomically === undefined
      ? {}
      : {
          async completeAtomically(
            writes: readonly SqlWrite[],
            lease: LeaseRef,
            result: StoredResult,
            nowMs: number,
            expiresAtMs: number,
          ): Promise<boolean> {
            const complete = {
              sql: sql.complete,
              params: completeParams(lease, result, nowMs, expiresAtMs),
            }
            try {
              await atomically(writes.length === 0 ? [complete] : [...writes, complete], leaseHeld)
              return true
            } catch (error) {
              if (error === leaseLostRefusal) return false
              throw error
            }
          },
        }),

    async complete(
      tx: SqlTransaction,
      lease: LeaseRef,
      result: StoredResult,
      nowMs: number,
      expiresAtMs: number,
    ): Promise<boolean> {
      const params = completeParams(lease, result, nowMs, expiresAtMs)
      // On PostgreSQL the result write and COMMIT share one round trip when the transaction is
      // breakwater's own; the write raises when the lease is lost, which rolls everything back.
      if (sql.completeOrRaise !== undefined && tx.finish !== undefined) {
        try {
          await tx.finish(sql.completeOrRaise, params)
          return true
        } catch (error) {
          if ((error as { code?: unknown } | null)?.code === leaseLostSqlState) {
            lostAtFinish.set(tx, lease)
            return false
          }
          throw error
        }
      }
      const { rowCount } = await tx.execute(sql.complete, params)
      return rowCount === 1
    },

    async savePhase(
      tx: SqlTransaction,
      lease: LeaseRef,
      point: string,
      phases: Readonly<Record<string, JsonValue>>,
      nowMs: number,
      leaseExpiresAtMs: number,
    ): Promise<boolean> {
      const { rowCount } = await tx.execute(sql.savePhase, [
        lease.scope,
        lease.key,
        lease.leaseToken,
        point,
        JSON.stringify(phases),
        ms(leaseExpiresAtMs),
        ms(nowMs),
      ])
      return rowCount === 1
    },

    async release(lease: LeaseRef): Promise<boolean> {
      const { rowCount } = await db.execute(sql.release, [lease.scope, lease.key, lease.leaseToken])
      return rowCount === 1
    },

    async sweep(nowMs: number, limit: number): Promise<number> {
      const { rowCount } = await db.execute(sql.sweep, [ms(nowMs), limit])
      return rowCount
    },
  }
}

/**
 * Applies the idempotency capability's pending migrations (capability name `idempotency`).
 * Safe to run from several processes at once.
 */
export function migrateIdempotency(db: SqlDriver): Promise<AppliedMigration[]> {
  return runMigrations(db, 'idempotency', idempotencyMigrations)
}
