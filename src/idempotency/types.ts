import type { Jsonified } from '../core/jsonified.js'
import type { SqlTransaction } from '../stores/index.js'

/** A value that survives `JSON.stringify` / `JSON.parse` unchanged. */
export type JsonValue =
  | string
  | number
  | boolean
  | null
  | readonly JsonValue[]
  | { readonly [key: string]: JsonValue }

/**
 * An HTTP request as the framework-free core sees it. Each adapter (node:http, Express, Fastify,
 * Hono, the proxy) builds one from its own request object.
 */
export interface IdempotencyRequest {
  /** The HTTP method, any case. */
  readonly method: string
  /**
   * What the request targets, used in the default fingerprint: the adapters pass the path with
   * its query string as received (`/accounts/7/charges?expand=fee`).
   */
  readonly route: string
  /** Reads a request header (case-insensitive name); undefined when absent. */
  header(name: string): string | undefined
  /**
   * Whether a header (lower-case name) came on more than one line, for adapters whose framework
   * counts them (Node's `req.headersDistinct`); undefined when it cannot tell. Asked only about
   * an `Idempotency-Key` value containing a comma. Without an answer, a value containing `, `
   * (how repeated lines are joined) counts as repeated.
   */
  headerRepeated?(name: string): boolean | undefined
  /**
   * The request body bytes, for the fingerprint. Adapters whose framework has already parsed
   * the body pass its canonical JSON (see `parsedBodyBytes`). Reading it throws
   * `IdempotencyBodyUnavailableError` where the adapter has no body to give (Fastify, when the
   * route's parser left a body unparsed).
   */
  readonly body: Uint8Array
  /**
   * Set by adapters that pass a framework's parsed body (Express, Fastify): the bytes releases
   * before fingerprint v2 hashed for it. It makes the default fingerprint `v2:`, and lets a
   * `v1:` record those releases stored match its own retry (see `defaultFingerprint`).
   */
  readonly earlierBody?: Uint8Array | undefined
  /** A scope computed by the adapter (overrides the core's `scope` option when set). */
  readonly scope?: string | undefined
  /** Aborts a wait in `onConcurrent: 'wait'` mode (e.g. when the client disconnects). */
  readonly signal?: AbortSignal | undefined
  /** The framework's own request object, for a custom `scope` or `fingerprint` function. */
  readonly native?: unknown | undefined
}

/**
 * An HTTP response: what a handler produced, what is replayed, or a problem response. Header
 * names are lower case.
 */
export interface IdempotencyResponse {
  /** The HTTP status code. */
  readonly status: number
  /** The response headers (lower-case names; arrays for repeated headers such as set-cookie). */
  readonly headers: Readonly<Record<string, string | readonly string[]>>
  /** The body bytes. */
  readonly body: Uint8Array
}

/**
 * What the handler of a keyed request (or the function given to `idempotent()`) receives.
 *
 * Business writes go through `tx`: the result is recorded in that same transaction, so either
 * both commit or neither does. For a multi-step handler with calls to other systems in between,
 * `phase()` commits a step and its result as a recovery point, as in Stripe's "atomic phases".
 */
export interface IdempotencyContext {
  /** The idempotency key. */
  readonly key: string
  /** The scope the key lives in (tenant, credential hash, or a user-defined scope). */
  readonly scope: string
  /**
   * The transaction in which the result is recorded. It opens on its first statement (so a
   * handler that first calls other services does not hold a database transaction meanwhile)
   * and commits after the handler's result is recorded in it. Its statements fail once the
   * result has been recorded or rolled back.
   *
   * With the in-memory store there is no database: every statement on `tx` rejects.
   */
  readonly tx: SqlTransaction
  /**
   * Sends a write through {@link tx} without waiting for its answer, for a handler that does
   * not need it (an `INSERT` or `UPDATE` whose row count it does not read). The write keeps its
   * place among `tx`'s statements, and the result's write and `COMMIT` follow it on the same
   * connection: on PostgreSQL they share its round trip, so a new key costs one round trip
   * less than with `await ctx.tx.execute(...)` (see docs/idempotency.md, "Deferred writes").
   *
   * If the write fails, nothing commits: the request ends as if the handler had thrown that
   * write's error (the response the handler produced is not sent, and the key is released as
   * for any other error), and `idempotent()` rejects with it. On PostgreSQL a failed statement
   * also aborts the transaction, so statements sent after it fail with "current transaction is
   * aborted". A write deferred inside a savepoint (`tx.transaction(fn)`) that fails fails the
   * request too, even when the savepoint rolled back and the handler caught that. Throws at
   * once, sending nothing, once `tx` refuses statements (the result was recorded, the lease was
   * lost, or an atomic phase is running).
   *
   * @example
   * ```ts
   * ctx.deferWrite('INSERT INTO charges (id, amount) VALUES ($1, $2)', [ctx.key, amount])
   * res.writeHead(201, { 'content-type': 'application/json' }).end('{"ok":true}')
   * ```
   */
  deferWrite(sql: string, params?: readonly unknown[]): void
  /**
   * 1 for the first execution of this key; 2 and more when this execution took the key over
   * after an earlier holder's lease expired (it crashed or hung).
   */
  readonly attempt: number
  /** The last phase committed by this or an earlier execution, or undefined. */
  readonly recoveryPoint: string | undefined
  /**
   * Runs one atomic phase: `fn` runs with its own transaction (begun on its first statement, so
   * a call to another system made before any statement holds no transaction), and its JSON
   * result is recorded as the recovery point `name` in that transaction, which then commits. If an earlier execution of this key already
   * committed the phase, `fn` does not run and its recorded result is returned: after a crash,
   * a retry resumes after the last committed phase. Either way the value is the JSON round trip
   * of `fn`'s result, typed {@link Jsonified} (a `Date` becomes its ISO string).
   *
   * Phases must run before the first statement on `tx` (a SQLite connection holds one
   * transaction at a time), and `fn` writes through the transaction it is given: `tx` and
   * `deferWrite` are refused (`TRANSACTION_MISUSE`) while a phase runs, as is another phase
   * (phases run one at a time: await each). A phase that calls another system should pass it a key derived
   * from this one (`${ctx.key}:${name}`) so that a re-run of the phase is idempotent there too.
   * `name` is a non-empty string without NUL characters or lone surrogates (it is stored as
   * text), else `INVALID_OPTION` before `fn` runs.
   *
   * @example
   * ```ts
   * const charge = await ctx.phase('charge', async () => payments.charge({ key: `${ctx.key}:charge` }))
   * await ctx.tx.execute('UPDATE orders SET charge_id = $1 WHERE id = $2', [charge.id, orderId])
   * ```
   */
  phase<T>(name: string, fn: (tx: SqlTransaction) => Promise<T> | T): Promise<Jsonified<T>>
}
