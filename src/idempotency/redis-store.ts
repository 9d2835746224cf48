// The Redis idempotency store. The `ioredis` driver is imported lazily, here only. Every
// step is one Lua script, so it is atomic on the Redis server; nothing here is atomic with
// a SQL database, which is why this store has no `inTransaction` and its ctx.tx runs no SQL.
import type { Redis } from 'ioredis'
import { InvalidOptionError } from '../core/errors.js'
import { checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import { parseStoredObject, StoredDataError, type StoredPlace } from '../stores/errors.js'
import {
  DriverMissingError,
  redactUrl,
  type SqlTransaction,
  StoreClosedError,
} from '../stores/index.js'
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

/**
 * The commands the store sends through a given client: an ioredis `Redis` is one. Typed
 * structurally, as the framework adapters are, because a declaration that imported ioredis's
 * `Redis` type would fail the compile of every TypeScript application without ioredis (an
 * optional peer) that imports breakwater/idempotency, or make this option `any` under
 * `skipLibCheck`.
 */
export interface RedisIdempotencyClient {
  callBuffer(...args: [command: string, ...args: (string | Buffer | number)[]]): Promise<unknown>
  hmget(key: string, ...fields: string[]): Promise<(string | null)[]>
  hgetallBuffer(key: string): Promise<Record<string, Buffer>>
}

/** Options of {@link createRedisIdempotencyStore}. Exactly one of `url` and `client` is given. */
export interface RedisIdempotencyStoreOptions {
  /**
   * A `redis://` or `rediss://` URL; the store opens its own connection on first use and
   * closes it in `close()`.
   * @default undefined (then `client` is required)
   */
  readonly url?: string | undefined
  /**
   * An ioredis client the caller owns (not closed by `close()`). It must not use
   * `enableAutoPipelining` (ioredis 6 breaks `call()` with it) nor
   * `autoResendUnfulfilledCommands: false` (ioredis 6 then never settles a command whose
   * connection was lost before its reply): such a client, or one without
   * ioredis's `callBuffer`, `hmget` and `hgetallBuffer` (a node-redis client), is refused here
   * with `InvalidOptionError` naming `client`.
   * @default undefined (then `url` is required)
   */
  readonly client?: RedisIdempotencyClient | undefined
  /**
   * Prefix of every key the store writes; one hash per idempotency key.
   * @default 'breakwater:idempotency:'
   */
  readonly keyPrefix?: string | undefined
}

/** The keys RedisIdempotencyStoreOptions takes (internal: not exported from the package root). */
export const redisStoreOptions = optionKeys<RedisIdempotencyStoreOptions>({
  url: true,
  client: true,
  keyPrefix: true,
})

/** The store returned by {@link createRedisIdempotencyStore}. */
export interface RedisIdempotencyStore extends IdempotencyStore {
  /**
   * Closes the connection the store opened from `url` (a given `client` is left open). Every
   * later call rejects with `StoreClosedError` (`STORE_CLOSED`), as the SQL drivers' do.
   */
  close(): Promise<void>
}

// Field names of the record hash (short, since every key holds them).
// s scope, k key, fp fingerprint, st state, lt lease token, le lease end, at attempt,
// rp recovery point, ph phases JSON, rr result present, rs status, rh headers JSON,
// rb body bytes, ca created, ua updated, ea expires.
const writeFresh = `
local function fresh(key, a)
  redis.call('DEL', key)
  redis.call('HSET', key, 's', ARGV[a], 'k', ARGV[a + 1], 'fp', ARGV[a + 2], 'st', 'in_progress',
    'lt', ARGV[a + 3], 'le', ARGV[a + 4], 'at', 1, 'ph', '{}', 'ca', ARGV[a + 5],
    'ua', ARGV[a + 5], 'ea', ARGV[a + 6])
  redis.call('PEXPIRE', key, ARGV[a + 7])
end
`

// Every script comes out the same when it runs twice: ioredis sends a command again on a new
// connection when the old one was lost before its reply came (autoResendUnfulfilledCommands),
// and the caller's lease token, new for every claim, tells its own earlier run apart from
// anyone else's. Else a claim sent twice would find its own record and answer 409 (holding the
// key for a lease), and a result recorded twice would report the lease lost.

// ARGV: scope, key, fingerprint, token, leaseEnd, now, expires, ttl.
const claimScript = `${writeFresh}
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'lt') == ARGV[4] then return 1 end
  return redis.call('HGETALL', KEYS[1])
end
fresh(KEYS[1], 1)
return 1
`

// A key must not expire while its lease is live: a takeover or a phase that moves the lease end
// past the key's expiry moves the expiry (and the TTL) with it. ARGV: now, lease end.
const keepLease = `
local function keep(key, now, leaseEnd)
  if (tonumber(redis.call('HGET', key, 'ea')) or 0) < tonumber(leaseEnd) then
    redis.call('HSET', key, 'ea', leaseEnd)
    redis.call('PEXPIRE', key, math.max(1, tonumber(leaseEnd) - tonumber(now)))
  end
end
`

// ARGV: previous token, now, new token, new lease end.
const takeOverScript = `${keepLease}
local r = redis.call('HMGET', KEYS[1], 'st', 'lt', 'le')
if r[2] == ARGV[3] then return 1 end
if r[1] ~= 'in_progress' or r[2] ~= ARGV[1] then return 0 end
if (tonumber(r[3]) or 0) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'lt', ARGV[3], 'le', ARGV[4], 'ua', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'at', 1)
keep(KEYS[1], ARGV[2], ARGV[4])
return 1
`

// ARGV: previous token, then the claim arguments.
const recycleScript = `${writeFresh}
local r = redis.call('HMGET', KEYS[1], 'lt', 'ea')
if r[1] == ARGV[5] then return 1 end
if r[1] ~= ARGV[1] or tonumber(r[2]) > tonumber(ARGV[7]) then return 0 end
fresh(KEYS[1], 2)
return 1
`

// KEYS: the record, its release mark. ARGV: token, how long the mark lives (ms).
// The mark (the releasing token) lets a second run of this script, sent again by ioredis after
// a connection lost before the reply, report the release the first run made instead of "not
// held"; otherwise the 'released' event went missing.
const releaseScript = `
local r = redis.call('HMGET', KEYS[1], 'st', 'lt')
if r[1] == 'in_progress' and r[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
if r[1] == false and redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
return 0
`

/**
 * How long a release mark lives: longer than ioredis takes to reconnect and send a command
 * again (seconds), short enough that marks of released keys (rare: failed work) cost nothing.
 */
const releaseMarkMs = 600_000

// One write per key, 8 arguments each: kind, token, then the kind's values. Every lease is
// checked before anything is written, so a transaction applies all of its writes or none.
// complete: now, expires, ttl, status, headers JSON, body; phase: now, lease end, point, phases.
// The script is atomic: a result already completed under this very lease means this is the
// script's second run, and every write of the first one was applied.
const commitScript = `${keepLease}
for i = 1, #KEYS do
  local r = redis.call('HMGET', KEYS[i], 'st', 'lt')
  local b = (i - 1) * 8
  if r[1] == 'completed' and r[2] == ARGV[b + 2] and ARGV[b + 1] == 'complete' then return 0 end
  if r[1] ~= 'in_progress' or r[2] ~= ARGV[b + 2] then return i end
end
for i = 1, #KEYS do
  local b = (i - 1) * 8
  if ARGV[b + 1] == 'complete' then
    redis.call('HSET', KEYS[i], 'st', 'completed', 'ua', ARGV[b + 3], 'ea', ARGV[b + 4],
      'rr', '1', 'rs', ARGV[b + 6], 'rh', ARGV[b + 7], 'rb', ARGV[b + 8])
    redis.call('HDEL', KEYS[i], 'le')
    redis.call('PEXPIRE', KEYS[i], ARGV[b + 5])
  else
    redis.call('HSET', KEYS[i], 'ua', ARGV[b + 3], 'le', ARGV[b + 4], 'rp', ARGV[b + 5],
      'ph', ARGV[b + 6])
    keep(KEYS[i], ARGV[b + 3], ARGV[b + 4])
  end
end
return 0
`

interface Staged {
  readonly lease: LeaseRef
  readonly args: readonly (string | Buffer)[]
}

/**
 * The `ctx.tx` of the Redis store. Redis has no SQL and no transaction shared with your
 * database, so statements reject with a clear error instead of running without atomicity;
 * the store's own writes are staged and applied in one fenced script when it commits.
 */
class RedisTransaction implements SqlTransaction {
  // Only here to satisfy the executor type: no statement ever runs.
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
    'The Redis idempotency store has no SQL database: ctx.tx cannot run statements, and writes to ' +
      'your own database are not atomic with the recorded result; use createSqlIdempotencyStore ' +
      'for that',
  )
}

const ttlMs = (expiresAtMs: number, nowMs: number): string =>
  String(Math.max(1, Math.ceil(expiresAtMs - nowMs)))

/**
 * The record in an HGETALL reply. Every field is checked as it is read: a hash changed outside
 * breakwater (an HSET by hand) fails with StoredDataError naming the key prefix, the key and the
 * field, rather than a bare SyntaxError, a NaN status or lease end, or a missing fingerprint
 * read as '' (which would answer the client with a mismatch). `key` is the key asked for, not
 * the stored `k`, and the scope is left out of the message, as the SQL store leaves it out: it
 * may be derived from a caller's credential.
 */
function toRecord(reply: readonly Buffer[], keyPrefix: string, key: string): IdempotencyRecord {
  const fields = new Map<string, Buffer>()
  for (let i = 0; i + 1 < reply.length; i += 2) fields.set(reply[i]!.toString(), reply[i + 1]!)
  const where = (column: string) => (): StoredPlace => ({
    table: keyPrefix,
    row: `record of key ${JSON.stringify(key)}`,
    column,
  })
  const invalid = (name: string, problem: string): StoredDataError =>
    new StoredDataError(where(name)(), problem)
  const bytes = (name: string): Buffer => {
    const value = fields.get(name)
    if (value === undefined) throw invalid(name, 'is missing')
    return value
  }
  const text = (name: string): string => bytes(name).toString()
  const num = (name: string): number => {
    const value = text(name)
    // Number('') and Number(' ') are 0: blank is refused as well as NaN.
    const parsed = value.trim() === '' ? Number.NaN : Number(value)
    if (!Number.isFinite(parsed)) throw invalid(name, `is not a number: ${JSON.stringify(value)}`)
    return parsed
  }
  const state = text('st')
  if (state !== 'in_progress' && state !== 'completed') {
    throw invalid('st', `is not in_progress or completed: ${JSON.stringify(state)}`)
  }
  const attempt = num('at')
  if (!Number.isInteger(attempt) || attempt < 1) {
    throw invalid('at', `is not a positive whole number: ${attempt}`)
  }
  let result: StoredResult | undefined
  if (state === 'completed') {
    // The commit script writes rr, rs, rh and rb with st = 'completed', in one step.
    const present = text('rr')
    if (present !== '1') throw invalid('rr', `is not 1: ${JSON.stringify(present)}`)
    const status = text('rs')
    const code = Number(status)
    if (status !== '' && !(/^\d+$/.test(status) && code >= 100 && code <= 599)) {
      throw invalid('rs', `is not an HTTP status from 100 to 599: ${JSON.stringify(status)}`)
    }
    result = {
      status: status === '' ? undefined : code,
      headers: parseStoredObject(text('rh'), where('rh')) as StoredResult['headers'],
      body: new Uint8Array(bytes('rb')),
      // A body idempotent() cannot decode is named as this field, as the other fields are.
      bodyPlace: where('rb'),
    }
  }
  return {
    scope: text('s'),
    key: text('k'),
    fingerprint: text('fp'),
    state,
    leaseToken: text('lt'),
    // Absent once completed; the scripts also take an absent one as ended.
    leaseExpiresAtMs: fields.has('le') ? num('le') : undefined,
    attempt,
    recoveryPoint: fields.get('rp')?.toString(),
    phases: parseStoredObject(text('ph'), where('ph')) as Record<string, JsonValue>,
    result,
    createdAtMs: num('ca'),
    updatedAtMs: num('ua'),
    expiresAtMs: num('ea'),
  }
}

/**
 * Whether a command failed with Redis's own answer (a `ReplyError` of ioredis, named so by
 * redis-errors): the server read it and refused it, so it did not run past the error.
 */
function repliedWithError(error: unknown): boolean {
  return error instanceof Error && error.name === 'ReplyError'
}

/**
 * Checks a given `client` once, here: one the store cannot use was taken without a word, and
 * every request then failed (a 500). A node-redis client has none of the commands the store
 * sends (a bare TypeError, `callBuffer is not a function`); an ioredis client with
 * `enableAutoPipelining` sends each Lua script as the command's name through `callBuffer`
 * (`ERR unknown command`). One with `autoResendUnfulfilledCommands: false` drops a command
 * whose connection was lost before its reply without failing it: the request hung for good.
 */
function checkClient(client: unknown): void {
  const commands = client as Partial<Record<keyof RedisIdempotencyClient, unknown>> | null
  if (
    typeof commands !== 'object' ||
    commands === null ||
    typeof commands.callBuffer !== 'function' ||
    typeof commands.hmget !== 'function' ||
    typeof commands.hgetallBuffer !== 'function'
  ) {
    throw new InvalidOptionError(
      'client',
      'an ioredis client (with callBuffer, hmget and hgetallBuffer)',
      client,
    )
  }
  const options = (
    client as {
      options?: { enableAutoPipelining?: unknown; autoResendUnfulfilledCommands?: unknown }
    }
  ).options
  if (options?.enableAutoPipelining === true) {
    throw new InvalidOptionError(
      'client',
      "an ioredis client without enableAutoPipelining (ioredis 6 sends the store's scripts wrongly with it)",
      client,
    )
  }
  if (options?.autoResendUnfulfilledCommands === false) {
    throw new InvalidOptionError(
      'client',
      'an ioredis client with autoResendUnfulfilledCommands (without it, ioredis 6 never settles a command whose connection was lost before its reply, and the call waits for ever)',
      client,
    )
  }
}

/**
 * An idempotency store in Redis, for services without a SQL database. Each step (claim,
 * takeover, recycle, fenced completion, release) is one atomic Lua script; every key gets a
 * TTL equal to its retention, so Redis deletes expired keys itself and `sweep` is a no-op
 * (returns 0).
 *
 * Not atomic with SQL business writes: `ctx.tx` rejects every statement, and
 * `claim: 'in-transaction'` is refused (the store has no `inTransaction`). A handler that
 * writes to its own database and crashes before the result is recorded will run again on
 * retry, so make those writes idempotent themselves, or use `createSqlIdempotencyStore`.
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const store = createRedisIdempotencyStore({ url: 'redis://localhost:6379' })
 * const idempotency = createIdempotency({ store })
 * // on shutdown
 * await store.close()
 * ```
 */
export function createRedisIdempotencyStore(
  options: RedisIdempotencyStoreOptions,
): RedisIdempotencyStore {
  checkObject('options', options)
  // A misspelt keyPrefix would share the default prefix with every other store.
  checkOptionKeys('options', options, redisStoreOptions, { bareNames: true })
  const { url, client: given } = options
  if ((url === undefined) === (given === undefined)) {
    throw new InvalidOptionError('url', 'exactly one of url and client', url)
  }
  if (url !== undefined && (typeof url !== 'string' || !/^rediss?:\/\//i.test(url))) {
    // Named in the message without its password.
    throw new InvalidOptionError(
      'url',
      'a redis:// or rediss:// URL',
      typeof url === 'string' ? redactUrl(url) : url,
    )
  }
  if (given !== undefined) checkClient(given)
  const keyPrefix = options.keyPrefix ?? 'breakwater:idempotency:'
  if (typeof keyPrefix !== 'string') {
    throw new InvalidOptionError('keyPrefix', 'a string', keyPrefix)
  }

  // The client the store opened from `url`: the one close() quits.
  let connecting: Promise<Redis> | undefined
  let closed = false
  const connect = (): Promise<RedisIdempotencyClient> => {
    if (closed) {
      // As the SQL drivers answer after close(): a coded error, not a programming error.
      return Promise.reject(new StoreClosedError('redis', 'The Redis idempotency store is closed'))
    }
    if (given !== undefined) return Promise.resolve(given)
    connecting ??= (async () => {
      const { Redis: RedisClient } = await import('ioredis').catch((error: unknown) => {
        throw new DriverMissingError('ioredis', error)
      })
      const client = new RedisClient(url!, {
        lazyConnect: true,
        // Not enableAutoPipelining: in ioredis 6 it breaks call()/callBuffer().
        enableAutoPipelining: false,
        connectionName: 'breakwater-idempotency',
      })
      // Without a listener ioredis logs errors; commands still reject with them.
      client.on('error', () => {})
      try {
        await client.connect()
      } catch (error) {
        // ioredis would go on reconnecting this client in the background, forever (a timer that
        // keeps the process alive, and one more client for every call that fails so): the next
        // call connects afresh instead.
        client.disconnect()
        throw error
      }
      return client
    })().catch((error: unknown) => {
      connecting = undefined
      throw error
    })
    return connecting
  }

  // The scope's length first, so no (scope, key) pair can collide with another.
  const redisKey = (scope: string, key: string): string =>
    `${keyPrefix}${scope.length}:${scope}:${key}`
  // Starts with a letter where a record's key starts with a digit: the two never collide.
  const releaseMarkKey = (scope: string, key: string): string =>
    `${keyPrefix}released:${scope.length}:${scope}:${key}`

  // The errors of commit scripts that may have run all the same: sent on a connection lost
  // before the reply came, and failed by ioredis rather than sent again (maxRetriesPerRequest
  // reached, or no reconnection), or queued while offline and failed so (which never ran,
  // though nothing tells the two apart).
  const inDoubt = new WeakSet<object>()

  const run = async (script: string, keys: readonly string[], args: readonly (string | Buffer)[]) =>
    (await connect()).callBuffer('EVAL', script, keys.length, ...keys, ...args)

  const claimArgs = (input: ClaimInput): string[] => [
    input.scope,
    input.key,
    input.fingerprint,
    input.leaseToken,
    String(input.leaseExpiresAtMs),
    String(input.nowMs),
    String(input.expiresAtMs),
    ttlMs(input.expiresAtMs, input.nowMs),
  ]

  const holds = async (lease: LeaseRef): Promise<boolean> => {
    const client = await connect()
    const [state, token] = await client.hmget(redisKey(lease.scope, lease.key), 'st', 'lt')
    return state === 'in_progress' && token === lease.leaseToken
  }

  const asRedisTx = (tx: SqlTransaction): RedisTransaction => {
    if (!(tx instanceof RedisTransaction) || !tx.open) {
      throw new TypeError('Not an open transaction of this Redis idempotency store')
    }
    return tx
  }

  return {
    async claim(input: ClaimInput): Promise<ClaimOutcome> {
      const reply = await run(claimScript, [redisKey(input.scope, input.key)], claimArgs(input))
      if (Array.isArray(reply))
        return { claimed: false, existing: toRecord(reply as Buffer[], keyPrefix, input.key) }
      return { claimed: true }
    },

    async get(scope: string, key: string) {
      const client = await connect()
      const reply = await client.hgetallBuffer(redisKey(scope, key))
      const flat: Buffer[] = []
      for (const [name, value] of Object.entries(reply)) flat.push(Buffer.from(name), value)
      return flat.length === 0 ? undefined : toRecord(flat, keyPrefix, key)
    },

    async takeOver(input: TakeoverInput): Promise<boolean> {
      const reply = await run(
        takeOverScript,
        [redisKey(input.scope, input.key)],
        [
          input.previousLeaseToken,
          String(input.nowMs),
          input.leaseToken,
          String(input.leaseExpiresAtMs),
        ],
      )
      return reply === 1
    },

    async recycle(input: TakeoverInput): Promise<boolean> {
      const reply = await run(
        recycleScript,
        [redisKey(input.scope, input.key)],
        [input.previousLeaseToken, ...claimArgs(input)],
      )
      return reply === 1
    },

    async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
      const tx = new RedisTransaction()
      try {
        const value = await fn(tx)
        if (tx.staged.length > 0) {
          const client = await connect()
          let failed: unknown
          try {
            failed = await client.callBuffer(
              'EVAL',
              commitScript,
              tx.staged.length,
              ...tx.staged.map((write) => redisKey(write.lease.scope, write.lease.key)),
              ...tx.staged.flatMap((write) => write.args),
            )
          } catch (error) {
            // Redis answered with an error (a ReplyError: the script's checks come before its
            // first write, so nothing was written), or ioredis gave up on the script: it may
            // have run before the connection was lost (see commitInDoubt).
            if (!repliedWithError(error) && typeof error === 'object' && error !== null) {
              inDoubt.add(error)
            }
            throw error
          }
          // The script checked every lease before writing: a lost one means nothing was written.
          const lost = typeof failed === 'number' && failed > 0 ? tx.staged[failed - 1] : undefined
          if (lost !== undefined) {
            throw new IdempotencyInProgressError(lost.lease.key, 'lease-lost', 0)
          }
        }
        return value
      } finally {
        tx.open = false
      }
    },

    commitInDoubt(error: unknown): boolean {
      return typeof error === 'object' && error !== null && inDoubt.has(error)
    },

    async complete(
      tx: SqlTransaction,
      lease: LeaseRef,
      result: StoredResult,
      nowMs: number,
      expiresAtMs: number,
    ): Promise<boolean> {
      const redisTx = asRedisTx(tx)
      if (!(await holds(lease))) return false
      redisTx.staged.push({
        lease,
        args: [
          'complete',
          lease.leaseToken,
          String(nowMs),
          String(expiresAtMs),
          ttlMs(expiresAtMs, nowMs),
          result.status === undefined ? '' : String(result.status),
          JSON.stringify(result.headers),
          Buffer.from(result.body.buffer, result.body.byteOffset, result.body.byteLength),
        ],
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
      const redisTx = asRedisTx(tx)
      if (!(await holds(lease))) return false
      redisTx.staged.push({
        lease,
        args: [
          'phase',
          lease.leaseToken,
          String(nowMs),
          String(leaseExpiresAtMs),
          point,
          JSON.stringify(phases),
          '',
          '',
        ],
      })
      return true
    },

    async release(lease: LeaseRef): Promise<boolean> {
      const reply = await run(
        releaseScript,
        [redisKey(lease.scope, lease.key), releaseMarkKey(lease.scope, lease.key)],
        [lease.leaseToken, String(releaseMarkMs)],
      )
      return reply === 1
    },

    // Redis deletes each key when its TTL (the retention) ends, so there is nothing to sweep.
    async sweep(): Promise<number> {
      return 0
    },

    async close(): Promise<void> {
      closed = true
      const pending = connecting
      connecting = undefined
      if (pending === undefined) return
      const client = await pending.catch(() => undefined)
      await client?.quit().catch(() => client.disconnect())
    },
  }
}
