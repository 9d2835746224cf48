import { createHash } from 'node:crypto'
import { createRequire } from 'node:module'
import { type Clock, maxTimerDelayMs, sleep } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import {
  checkClock,
  checkInteger,
  checkObject,
  checkOptionKeys,
  isPortNumber,
  optionKeys,
} from '../core/validate.js'
import {
  DriverMissingError,
  StoreBusyError,
  StoreClosedError,
  TransactionMisuseError,
} from './errors.js'
import { LruCache } from './lru.js'
import { OpenPoolConnections, PgSockets } from './pg-connections.js'
import { notParams, notSql } from './placeholders.js'
import { redactUrl } from './redact.js'
import { failedEarlier, ScopedTransaction } from './scoped-transaction.js'
import type { SqlDriver, SqlExecutor, SqlNotification, SqlTransaction, Unlisten } from './types.js'

/**
 * Options of {@link createPostgresDriver}. Every timeout is at most 2147483647 ms (PostgreSQL's
 * and node's timer limit).
 */
export interface PostgresDriverOptions {
  /**
   * A `postgres://user:password@host:port/database` URL. Its query parameters must be ones pg
   * reads (`sslmode=require`, `application_name=...`); any other is refused, as pg would ignore it.
   * Its timeouts (`statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout`,
   * `query_timeout`) are whole milliseconds, as pg reads them; a unit (`1s`) or a
   * `query_timeout` of 0 is refused rather than taken as 1 ms.
   */
  readonly connectionString: string
  /**
   * The most connections the pool opens.
   * @default 10
   */
  readonly maxConnections?: number | undefined
  /**
   * The server cancels any statement running longer than this (`statement_timeout`); 0 means
   * no limit.
   * @default 0
   */
  readonly statementTimeoutMs?: number | undefined
  /**
   * The server ends a session that sits idle inside an open transaction this long
   * (`idle_in_transaction_session_timeout`), releasing its locks; 0 means no limit. The
   * transaction's next statement (or its COMMIT) then fails with pg's "not queryable" error,
   * whose `cause` is the server's (code `25P03`, "terminating connection due to
   * idle-in-transaction timeout"), which a network failure's is not.
   * @default 0
   */
  readonly idleInTransactionTimeoutMs?: number | undefined
  /**
   * How long to wait for a new connection (and for a free one when the pool is full); 0 means
   * no limit (pg's meaning): a server that never answers is waited for forever. A wait for a
   * free connection that runs out fails with `StoreBusyError` (`STORE_BUSY`) naming
   * `maxConnections`.
   * @default 10000
   */
  readonly connectionTimeoutMs?: number | undefined
  /**
   * How long an unused pooled connection stays open; 0 keeps unused connections open for good
   * (pg-pool's meaning), not closing them at once.
   * @default 10000
   */
  readonly idleTimeoutMs?: number | undefined
  /**
   * How long the client waits for the answer to one statement before it gives up on it (pg's
   * `query_timeout`); 0 means no limit. The statement rejects with "Query read timeout" and its
   * connection is destroyed, not reused. This is the one bound on a server that stops answering
   * while the connection stays open (a frozen server, a stateful firewall that silently drops
   * the flow): without it every statement on such a connection waits forever, and a relay or
   * saga worker stalls without an error. Unlike `statementTimeoutMs` the server plays no part,
   * so set it above the longest statement you run (rebuilds and large prunes included) and
   * above any lock wait (advisory locks of the SQL queue, row locks of a saga claim).
   * @default 0
   */
  readonly queryTimeoutMs?: number | undefined
  /**
   * TCP keepalive on every connection: the first probe goes out after this long without
   * traffic; 0 turns keepalive off. It lets the kernel notice a server host that vanished (the
   * LISTEN connection is otherwise idle for good); later probes follow the kernel's
   * `tcp_keepalive_intvl` and `tcp_keepalive_probes` (75 s and 9 on Linux), which node 20 does
   * not set. It cannot notice a server that is alive but not answering: that is
   * `queryTimeoutMs`'s job.
   * @default 10000
   */
  readonly keepAliveDelayMs?: number | undefined
  /**
   * Shown in `pg_stat_activity.application_name`.
   * @default 'breakwater'
   */
  readonly applicationName?: string | undefined
  /**
   * First delay before re-establishing a lost LISTEN connection after the immediate retry
   * failed; doubles per failure (with jitter) up to `listenRetryMaxMs`.
   * @default 100
   */
  readonly listenRetryBaseMs?: number | undefined
  /**
   * Longest delay between attempts to re-establish the LISTEN connection.
   * @default 5000
   */
  readonly listenRetryMaxMs?: number | undefined
  /**
   * Time source for the LISTEN reconnect backoff.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** The keys of {@link PostgresDriverOptions}. @internal Also checked by `openDatabase`. */
export const postgresDriverOptions = optionKeys<PostgresDriverOptions>({
  connectionString: true,
  maxConnections: true,
  statementTimeoutMs: true,
  idleInTransactionTimeoutMs: true,
  connectionTimeoutMs: true,
  idleTimeoutMs: true,
  queryTimeoutMs: true,
  keepAliveDelayMs: true,
  applicationName: true,
  listenRetryBaseMs: true,
  listenRetryMaxMs: true,
  clock: true,
})

// Minimal structural views of pg, so this module's public types never require @types/pg.
interface PgQueryConfig {
  text: string
  values?: unknown[]
  name?: string
  types?: PgTypes
}
interface PgResult {
  rows: unknown[]
  rowCount: number | null
  /** The command tag's verb (`COMMIT`, or `ROLLBACK` for a COMMIT of a failed transaction). */
  command?: string
}
/** Something with pg's `query(config)`: a pg `Client`, `PoolClient` or `Pool`. */
export interface PgQueryable {
  /** Runs one statement (pg's query-config form). */
  query(config: PgQueryConfig): Promise<PgResult>
}
/**
 * What {@link fromPgClient} takes: a pg `Client` or `PoolClient`, the connection a transaction
 * runs on. A pg `Pool` does not compile (its `totalCount` and `idleCount` are numbers): each of
 * its queries may run on another connection, and commit alone.
 */
export interface PgTransactionClient extends PgQueryable {
  /** A Pool's; a Client or PoolClient has none. */
  readonly totalCount?: never
  /** A Pool's; a Client or PoolClient has none. */
  readonly idleCount?: never
}
interface PgTypes {
  getTypeParser(oid: number, format?: string): unknown
}
interface PgClient extends PgQueryable {
  query(config: PgQueryConfig | string): Promise<PgResult>
  connect(): Promise<void>
  end(): Promise<void>
  on(event: 'error', listener: (error: Error) => void): unknown
  on(event: 'end', listener: () => void): unknown
  on(
    event: 'notification',
    listener: (message: { channel: string; payload?: string | undefined }) => void,
  ): unknown
}
interface PgPoolClient extends PgClient {
  release(error?: Error | boolean): void
}
interface PgPool extends PgQueryable {
  connect(): Promise<PgPoolClient>
  end(): Promise<void>
  on(event: 'error', listener: (error: Error) => void): unknown
  on(event: 'connect', listener: (client: PgPoolClient) => void): unknown
  on(event: 'connect' | 'remove', listener: (client: object) => void): unknown
}
interface PgModule {
  Pool: new (config: Record<string, unknown>) => PgPool
  Client: new (config: Record<string, unknown>) => PgClient
  types: PgTypes
}

const INT8_OID = 20
const INT8_ARRAY_OID = 1016

/**
 * Type parsers for one pool: `BIGINT` (int8) arrives as a JS number, since breakwater stores
 * millisecond timestamps and positions there. It is passed per pool (or per query), never set on
 * pg's global registry, so the application's own pg usage is untouched.
 */
function breakwaterTypes(base: PgTypes): PgTypes {
  const int8Array = base.getTypeParser(INT8_ARRAY_OID, 'text') as (value: string) => unknown[]
  const parseInt8Array = (value: string): unknown =>
    int8Array(value).map((item) => (item === null ? null : Number(item)))
  return {
    getTypeParser(oid: number, format?: string): unknown {
      if (format !== 'binary') {
        if (oid === INT8_OID) return Number
        if (oid === INT8_ARRAY_OID) return parseInt8Array
      }
      return base.getTypeParser(oid, format)
    },
  }
}

async function loadPg(): Promise<PgModule> {
  try {
    const module = (await import('pg')) as unknown as { default?: PgModule } & PgModule
    return module.default ?? module
  } catch (error) {
    throw new DriverMissingError('pg', error)
  }
}

let syncTypes: PgTypes | undefined
// fromPgClient is synchronous (it wraps a client the caller already holds, so pg is installed);
// it only needs pg's default type parsers, loaded once here.
function typesForWrappedClients(): PgTypes {
  if (syncTypes === undefined) {
    let pg: PgModule
    try {
      pg = createRequire(import.meta.url)('pg') as PgModule
    } catch (error) {
      throw new DriverMissingError('pg', error)
    }
    syncTypes = breakwaterTypes(pg.types)
  }
  return syncTypes
}

// Statement names are a hash of the SQL text, so a statement is parsed once per connection and
// the name never needs coordinating between pools. Only the text-to-name mapping is cached.
const statementNames = new LruCache<string, string>(1000)

function statementName(sql: string): string {
  let name = statementNames.get(sql)
  if (name === undefined) {
    name = `bw_${createHash('sha1').update(sql).digest('hex').slice(0, 30)}`
    statementNames.set(sql, name)
  }
  return name
}

const emptyParams: readonly unknown[] = []

function queryConfig(
  sql: string,
  params: readonly unknown[],
  types: PgTypes | undefined,
): PgQueryConfig {
  // pg's own refusals name neither argument ("A query must have either text or a name", or a
  // TypeError from inside the driver).
  if (typeof sql !== 'string') throw notSql(sql)
  if (!Array.isArray(params)) throw notParams(params)
  // Statements without parameters go through the simple protocol: nothing to bind, and it
  // accepts several statements in one string.
  const config: PgQueryConfig =
    params.length === 0
      ? { text: sql }
      : { text: sql, values: params as unknown[], name: statementName(sql) }
  if (types !== undefined) config.types = types
  return config
}

function executorOf(target: PgQueryable, types?: PgTypes): SqlExecutor {
  return {
    dialect: 'postgres',
    query: async <R>(sql: string, params: readonly unknown[] = emptyParams) =>
      (await target.query(queryConfig(sql, params, types))).rows as R[],
    execute: async (sql: string, params: readonly unknown[] = emptyParams) => ({
      rowCount: (await target.query(queryConfig(sql, params, types))).rowCount ?? 0,
    }),
  }
}

/**
 * Wraps a pg client the application holds inside its own `BEGIN` as a {@link SqlExecutor}, so
 * breakwater's rows commit (or roll back) with the business write. Works with a `PoolClient`
 * from `pool.connect()` or a `Client`; a `Pool` does not compile ({@link PgTransactionClient}),
 * and is refused with `InvalidOptionError` (`INVALID_OPTION` naming `client`) at run time: each
 * of its queries may run on another connection, where it would commit alone. BIGINT columns
 * read through it arrive as numbers, whatever the client's own type parsers do. A statement sent while the client is outside a transaction
 * (before its BEGIN was answered, so await it; after COMMIT or ROLLBACK), or once the
 * `PoolClient` was released and checked out again, is refused with `TransactionMisuseError`: it
 * would commit apart from the business write, or inside another caller's transaction.
 *
 * @example
 * ```ts
 * const client = await pool.connect()
 * try {
 *   await client.query('BEGIN')
 *   await client.query('INSERT INTO orders (id) VALUES ($1)', ['o1'])
 *   await outbox.enqueue(fromPgClient(client), event)
 *   await client.query('COMMIT')
 * } catch (error) { await client.query('ROLLBACK'); throw error } finally { client.release() }
 * ```
 */
export function fromPgClient(client: PgTransactionClient): SqlExecutor {
  // A Pool has neither a PoolClient's release nor getTransactionStatus, so the checks below
  // would let every statement through, each committing on a connection of its own. Its type
  // is refused too; this is for JavaScript callers and casts.
  if (isPgPool(client)) {
    throw new InvalidOptionError(
      'client',
      'a pg PoolClient or Client inside a transaction; this is a pg Pool, not a PoolClient: pass the client your transaction runs on (the one of `await pool.connect()` that ran BEGIN)',
      client,
    )
  }
  const inner = executorOf(client, typesForWrappedClients())
  const wrapped = client as WrappedPgClient
  // pg-pool gives a PoolClient a new release function at each checkout: a different one means
  // the client went back to the pool and another caller holds it now.
  const checkout = wrapped.release
  const check = (): void => {
    if (checkout !== undefined && wrapped.release !== checkout) {
      throw new TransactionMisuseError(
        'fromPgClient: the client was released to the pool and is now held by another caller; wrap the client of the transaction in progress',
      )
    }
    // 'I': idle, outside any transaction. The statement would commit on its own, apart from the
    // application's write (before its BEGIN, or after its COMMIT, ROLLBACK or release).
    if (wrapped.getTransactionStatus?.() === 'I') {
      throw new TransactionMisuseError(
        "fromPgClient: the client is not inside a transaction (its COMMIT or ROLLBACK was already sent, or its BEGIN not yet answered), so the statement would commit on its own; call it after `await client.query('BEGIN')` and before COMMIT",
      )
    }
  }
  return {
    dialect: 'postgres',
    query: async (sql, params) => {
      check()
      return inner.query(sql, params)
    },
    execute: async (sql, params) => {
      check()
      return inner.execute(sql, params)
    },
  }
}

// Recognised by shape, so that pg stays an optional dependency loaded only by the driver: a
// pg-pool Pool counts its connections; a Client or PoolClient does not.
function isPgPool(value: unknown): boolean {
  const pool = value as { connect?: unknown; totalCount?: unknown; idleCount?: unknown } | null
  return (
    typeof pool?.connect === 'function' &&
    typeof pool.totalCount === 'number' &&
    typeof pool.idleCount === 'number'
  )
}

/** What {@link fromPgClient} reads of a pg `Client` or `PoolClient`, when it has it. */
interface WrappedPgClient extends PgQueryable {
  /** A `PoolClient`'s release, replaced at each checkout (pg-pool). */
  readonly release?: unknown
  /** pg 8.x: `'I'` idle, `'T'` in a transaction, `'E'` in a failed one, null before connecting. */
  getTransactionStatus?(): string | null
}

/**
 * Sends a notification on `channel` through any PostgreSQL executor (`pg_notify`). Inside a
 * transaction it is delivered when the transaction commits, and not at all if it rolls back,
 * which is what wakes a relay exactly when there is something to read. On SQLite it does
 * nothing: SQLite consumers poll.
 */
export async function notify(executor: SqlExecutor, channel: string, payload = ''): Promise<void> {
  if (executor.dialect !== 'postgres') return
  await executor.query('SELECT pg_notify($1, $2)', [channel, payload])
}

/**
 * The query parameters of a `postgres://` URL that pg reads (pg-connection-string and pg's
 * ConnectionParameters). pg hands it every other one too and ignores it without a word, so a
 * misspelt or libpq-only parameter would change nothing: `ssl_mode=require` would connect
 * without TLS, `dbname=orders` to the default database. `binary` is left out: breakwater reads
 * results as text.
 */
const pgUrlParameters = new Set([
  'host',
  'port',
  'user',
  'password',
  'ssl',
  'sslmode',
  'sslcert',
  'sslkey',
  'sslrootcert',
  'sslnegotiation',
  'uselibpqcompat',
  'options',
  'application_name',
  'fallback_application_name',
  'client_encoding',
  'replication',
  'statement_timeout',
  'lock_timeout',
  'idle_in_transaction_session_timeout',
  'query_timeout',
])

/** Where the setting that a refused libpq parameter stands for goes instead. */
const pgUrlParameterHints: Readonly<Record<string, string>> = {
  dbname: 'the database goes in the path: postgres://host/<db>',
  database: 'the database goes in the path: postgres://host/<db>',
  connect_timeout: 'use the driver option connectionTimeoutMs',
}

// pg turns TLS on for any sslmode value but `disable`, and for any ssl value but `0` (`false`
// too, a truthy string): a misspelt value would not fail, it would ask for something else.
const pgUrlValues: Readonly<Record<string, readonly string[]>> = {
  sslmode: ['disable', 'prefer', 'require', 'verify-ca', 'verify-full', 'no-verify'],
  ssl: ['true', '1', '0', 'no-verify'],
}

/**
 * The timeouts a URL may set, with the least each takes. pg reads the server's settings with
 * parseInt (`statement_timeout=1s` was 1 ms, `abc` a server error about "NaN") and hands
 * `query_timeout`'s text to setTimeout, which fires after 1 ms for anything that is not a
 * positive 32-bit count: `0`, `abc`, `-5` or `100ms` failed every statement with "Query read
 * timeout". So each is a whole number of milliseconds up to 2147483647 (PostgreSQL's and
 * node's limit); the server's take 0 (no limit), `query_timeout` is left out for none.
 */
const pgUrlTimeouts: Readonly<Record<string, number>> = {
  statement_timeout: 0,
  lock_timeout: 0,
  idle_in_transaction_session_timeout: 0,
  query_timeout: 1,
}

/** What is wrong with a timeout `name` of a URL set to `value`; undefined when pg reads it right. */
function pgUrlTimeoutDefect(name: string, value: string): string | undefined {
  const least = pgUrlTimeouts[name]
  if (least === undefined) return undefined
  if (/^\d+$/.test(value) && Number(value) >= least && Number(value) <= maxTimerDelayMs) {
    return undefined
  }
  const none = least === 0 ? ', 0 for no limit' : '; leave it out for no limit'
  return `a postgres:// URL whose ${name} is a whole number of milliseconds from ${least} to ${maxTimerDelayMs}${none} (pg reads no unit), not ${JSON.stringify(value)}`
}

/** What {@link postgresUrlDefect} says of a URL that does not parse. @internal */
export const unparsablePostgresUrl = 'a valid postgres:// URL'

/**
 * What is wrong with a `postgres://` URL, as what was expected instead; undefined when pg can
 * parse it (as pg-connection-string does: a WHATWG URL, or one with credentials and no host,
 * `postgres://user:pw@/db?host=/var/run/postgresql`, a Unix socket, which WHATWG refuses and pg
 * parses with a stand-in host) and reads every query parameter it has, each sslmode or ssl
 * value being one pg knows.
 * @internal
 */
export function postgresUrlDefect(url: string): string | undefined {
  const socketForm = url.replace('@/', '@socket/')
  const parsable = URL.canParse(url) ? url : URL.canParse(socketForm) ? socketForm : undefined
  if (parsable === undefined) return unparsablePostgresUrl
  const parsed = new URL(parsable)
  // Port 0 parses, but nothing listens there: pg would fail every connection (and it reads a
  // `port` parameter with parseInt, so `5x` would be 5).
  const port = parsed.searchParams.get('port')
  if (parsed.port === '0' || (port !== null && !isPortNumber(port))) {
    return 'a postgres:// URL whose port is from 1 to 65535'
  }
  for (const [name, value] of parsed.searchParams) {
    if (!pgUrlParameters.has(name)) {
      const hint = pgUrlParameterHints[name]
      return `a postgres:// URL whose query parameters pg reads; it would ignore "${name}"${hint === undefined ? '' : ` (${hint})`}, and takes only ${[...pgUrlParameters].join(', ')}`
    }
    const values = pgUrlValues[name]
    if (values !== undefined && !values.includes(value)) {
      return `a postgres:// URL whose ${name} is one of ${values.join(', ')}, not ${JSON.stringify(value)}`
    }
    const timeoutDefect = pgUrlTimeoutDefect(name, value)
    if (timeoutDefect !== undefined) return timeoutDefect
  }
  return undefined
}

function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

type NotificationHandler = (notification: SqlNotification) => void

/**
 * One dedicated connection per driver for LISTEN (a pooled connection would be handed to other
 * work and lose its subscriptions). When it drops, it is re-established (first at once, then
 * with growing jittered delays) and every channel is listened to again; handlers then get one
 * `reconnected` notification because anything sent in between was lost.
 */
class PgListener {
  readonly #createClient: () => PgClient
  readonly #clock: Clock
  readonly #baseMs: number
  readonly #maxMs: number
  readonly #handlers = new Map<string, Set<NotificationHandler>>()
  /** The LISTEN of each channel whose first listen() is still waiting for it. */
  readonly #listening = new Map<string, Promise<void>>()
  #client: PgClient | undefined
  #connecting: Promise<PgClient> | undefined
  #closed = false
  readonly #stop = new AbortController()

  constructor(createClient: () => PgClient, clock: Clock, baseMs: number, maxMs: number) {
    this.#createClient = createClient
    this.#clock = clock
    this.#baseMs = baseMs
    this.#maxMs = maxMs
  }

  async listen(channel: string, handler: NotificationHandler): Promise<Unlisten> {
    if (this.#closed) throw new StoreClosedError('postgres')
    let handlers = this.#handlers.get(channel)
    const first = handlers === undefined
    if (handlers === undefined) {
      handlers = new Set()
      this.#handlers.set(channel, handlers)
    }
    handlers.add(handler)
    // A call for a channel whose first LISTEN is still in flight waits for it too: resolving
    // earlier, it could miss a notification sent right after.
    let listening = this.#listening.get(channel)
    if (first) {
      listening = this.#connected().then(async (client) => {
        await client.query(`LISTEN ${quoteIdentifier(channel)}`)
      })
      this.#listening.set(channel, listening)
    }
    try {
      await (listening ?? this.#connected())
    } catch (error) {
      this.#remove(channel, handler)
      throw error
    } finally {
      if (first && this.#listening.get(channel) === listening) this.#listening.delete(channel)
    }
    return async () => {
      if (this.#remove(channel, handler) && this.#client !== undefined) {
        await this.#client.query(`UNLISTEN ${quoteIdentifier(channel)}`).catch(() => {})
      }
    }
  }

  // Returns true when the channel has no handler left.
  #remove(channel: string, handler: NotificationHandler): boolean {
    const handlers = this.#handlers.get(channel)
    if (handlers === undefined) return false
    handlers.delete(handler)
    if (handlers.size > 0) return false
    this.#handlers.delete(channel)
    return true
  }

  #connected(): Promise<PgClient> {
    if (this.#client !== undefined) return Promise.resolve(this.#client)
    this.#connecting ??= this.#connect().finally(() => {
      this.#connecting = undefined
    })
    return this.#connecting
  }

  async #connect(): Promise<PgClient> {
    const client = this.#createClient()
    let lost = false
    const onLost = (): void => {
      if (lost) return
      lost = true
      if (this.#client === client) this.#client = undefined
      client.end().catch(() => {})
      if (!this.#closed) void this.#reconnect()
    }
    // An unhandled 'error' on a pg client would crash the process; a lost connection is
    // expected here and repaired by reconnecting.
    client.on('error', onLost)
    client.on('end', onLost)
    client.on('notification', (message) => {
      this.#dispatch(message.channel, message.payload ?? '', false)
    })
    try {
      await client.connect()
      for (const channel of this.#handlers.keys()) {
        await client.query(`LISTEN ${quoteIdentifier(channel)}`)
      }
    } catch (error) {
      lost = true
      client.end().catch(() => {})
      throw error
    }
    if (this.#closed) {
      lost = true
      await client.end().catch(() => {})
      throw new StoreClosedError('postgres')
    }
    this.#client = client
    return client
  }

  async #reconnect(): Promise<void> {
    // Nobody listening any more: the next listen() connects afresh.
    for (let attempt = 0; !this.#closed && this.#handlers.size > 0; attempt++) {
      if (attempt > 0) {
        const ceiling = Math.min(this.#maxMs, this.#baseMs * 2 ** (attempt - 1))
        try {
          await sleep(this.#clock, ceiling / 2 + (Math.random() * ceiling) / 2, this.#stop.signal)
        } catch {
          return
        }
      }
      try {
        await this.#connected()
      } catch {
        continue
      }
      for (const channel of [...this.#handlers.keys()]) this.#dispatch(channel, '', true)
      return
    }
  }

  #dispatch(channel: string, payload: string, reconnected: boolean): void {
    const handlers = this.#handlers.get(channel)
    if (handlers === undefined) return
    for (const handler of [...handlers]) {
      try {
        handler({ channel, payload, reconnected })
      } catch {
        // A handler's failure must not stop delivery to the others or kill the connection.
      }
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    this.#stop.abort()
    this.#handlers.clear()
    const client = this.#client ?? (await this.#connecting?.catch(() => undefined))
    this.#client = undefined
    await client?.end().catch(() => {})
  }
}

/** How a transaction ended by `finish()` went. */
interface FinishOutcome {
  readonly result: { rows: unknown[]; rowCount: number }
  /** Why `finish()` failed (the transaction did not commit, or it is unknown whether it did). */
  readonly error?: unknown
  /** Set when the connection must be destroyed, not returned to the pool. */
  readonly broken?: Error
}

const noRows = { rows: [], rowCount: 0 }

// The last statement and COMMIT go out together (pipeline mode) and are answered in order. If
// the statement fails, the transaction is aborted and PostgreSQL answers the COMMIT with
// ROLLBACK: the statement's error is the outcome and the connection is fine.
async function finishWith(
  client: Pick<PgClient, 'query'>,
  sql: string,
  params: readonly unknown[],
): Promise<FinishOutcome> {
  const [statement, commit] = await Promise.allSettled([
    client.query(queryConfig(sql, params, undefined)),
    client.query('COMMIT'),
  ])
  if (commit.status === 'rejected') {
    // Ambiguous when the statement succeeded: the server may have committed before the
    // connection failed.
    const broken = asError(commit.reason)
    const error = statement.status === 'rejected' ? statement.reason : commit.reason
    return { result: noRows, error, broken }
  }
  if (statement.status === 'rejected') return { result: noRows, error: statement.reason }
  if (commit.value.command === 'ROLLBACK')
    return { result: noRows, error: failedEarlier('transaction') }
  const { rows, rowCount } = statement.value
  return { result: { rows, rowCount: rowCount ?? 0 } }
}

/**
 * A PostgreSQL database through a pg `Pool`. Statements with parameters are prepared once per
 * connection (named by a hash of their text); BIGINT arrives as a JS number. Named statements
 * need a server session per connection: behind PgBouncer in transaction-pooling mode, set its
 * `max_prepared_statements` above zero (PgBouncer 1.21+), or connect directly or through a
 * session-mode pool (see docs/architecture.md).
 */
export class PostgresDriver implements SqlDriver {
  readonly dialect = 'postgres' as const
  readonly #pool: PgPool
  readonly #direct: SqlExecutor
  readonly #listener: PgListener
  readonly #connections: OpenPoolConnections
  readonly #clock: Clock
  readonly #limits: PoolLimits
  readonly #sockets: PgSockets
  /**
   * How to refuse each statement or transaction still waiting for a pooled connection: once
   * `close()` has called `pool.end()`, pg-pool serves no waiter, so they would wait for ever
   * (or until `connectionTimeoutMs`, with a bare timeout error).
   */
  readonly #waiting = new Set<(error: Error) => void>()
  /**
   * Why each lost pooled connection was lost (its first 'error'), recorded by a listener that
   * every connection has from the moment pg-pool creates it until it is gone. pg-pool listens
   * for errors only while a connection is idle and drops its listener as it hands the
   * connection out; a listener added by whoever awaited `pool.connect()` comes a microtask
   * later. A server's FATAL (pg_terminate_backend, a restart) read in the same chunk as the
   * ReadyForQuery that completes the connect is emitted in between, and an 'error' event
   * nobody listens to crashes the process. A lost connection is never handed out again: pg-pool
   * removes it when idle, and breakwater destroys one whose statement failed.
   */
  readonly #lost = new WeakMap<object, Error>()
  #closed = false
  #closing: Promise<void> | undefined

  /** @internal Use {@link createPostgresDriver}. */
  constructor(
    pool: PgPool,
    listener: PgListener,
    clock: Clock,
    limits: PoolLimits,
    sockets: PgSockets,
  ) {
    this.#pool = pool
    this.#limits = limits
    this.#sockets = sockets
    this.#direct = executorOf({ query: (config) => this.#runOnPool(config) })
    this.#listener = listener
    this.#connections = new OpenPoolConnections(pool)
    this.#clock = clock
    pool.on('connect', (client) => {
      client.on('error', (error) => {
        if (!this.#lost.has(client)) this.#lost.set(client, error)
      })
    })
  }

  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]> {
    if (this.#closed) return Promise.reject(new StoreClosedError('postgres'))
    return this.#direct.query<R>(sql, params)
  }

  execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    if (this.#closed) return Promise.reject(new StoreClosedError('postgres'))
    return this.#direct.execute(sql, params)
  }

  /**
   * A pooled connection, unless `close()` is called first: then `STORE_CLOSED`. A connection
   * lost while it was being handed out (the server ended the session as it connected) is
   * destroyed, and its error (57P01 for pg_terminate_backend) is the outcome: nothing was sent
   * on it yet.
   */
  #checkout(): Promise<PgPoolClient> {
    return new Promise((resolve, reject) => {
      const refuse = (error: Error): void => reject(error)
      this.#waiting.add(refuse)
      this.#pool.connect().then(
        (client) => {
          const lost = this.#lost.get(client)
          if (!this.#waiting.delete(refuse)) {
            // Refused by close() in the meantime: nobody will use it.
            client.release(lost)
          } else if (lost !== undefined) {
            client.release(lost)
            reject(lost)
          } else {
            resolve(client)
          }
        },
        (error: unknown) => {
          this.#waiting.delete(refuse)
          reject(poolError(error, this.#limits))
        },
      )
    })
  }

  /** One statement on a pooled connection, as pg-pool's `pool.query` runs it. */
  async #runOnPool(config: PgQueryConfig): Promise<PgResult> {
    const client = await this.#checkout()
    // A connection lost while the statement runs emits 'error' (kept in #lost, so it does not
    // crash the process); the statement rejects with it too.
    try {
      const result = await client.query(config)
      client.release()
      return result
    } catch (error) {
      // As pg-pool does: a connection whose statement failed is not reused.
      client.release(asError(error))
      throw error
    }
  }

  async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    if (this.#closed) throw new StoreClosedError('postgres')
    const pooled = await this.#checkout()
    // A connection lost while this transaction holds it but runs no statement (a server
    // restart, pg_terminate_backend, the server's idle_in_transaction_session_timeout) emits
    // 'error', kept in #lost; the next statement or COMMIT fails with pg's bare "not queryable"
    // error (no code), which becomes one naming the kept error, its cause (see
    // withLostConnection), so the caller can tell a configured timeout (25P03) from a network
    // failure.
    // A statement prepared on this connection before a schema change elsewhere (a column added
    // to a table it reads with `*`) fails with "cached plan must not change result type", and
    // does so for as long as the connection lives: such a connection is destroyed, not returned
    // to the pool, so that the next transaction prepares the statement afresh.
    let outdated: Error | undefined
    // A statement pg refused before sending it (a parameter it cannot serialize: a BigInt in an
    // object) leaves the server's transaction untouched, so a COMMIT would keep the writes
    // around it; and pg drops the named statement on the server while still counting it as
    // prepared on this connection, so the connection is destroyed, not returned to the pool.
    let refused: Error | undefined
    // Statements sent and not yet answered: a refusal shows only a tick after the statement.
    const unanswered = new Set<Promise<unknown>>()
    const client = {
      query: (config: PgQueryConfig | string): Promise<PgResult> => {
        const answer = pooled.query(config).catch((error: unknown) => {
          if (isOutdatedPlan(error)) outdated = asError(error)
          if (refused === undefined && refusedBeforeSending(error)) refused = asError(error)
          throw withLostConnection(error, this.#lost.get(pooled))
        })
        unanswered.add(answer)
        const answered = () => unanswered.delete(answer)
        answer.then(answered, answered)
        return answer
      },
      release(error?: Error): void {
        pooled.release(error ?? outdated ?? refused)
      },
    }
    // Before COMMIT: a statement still unanswered may yet turn out refused by pg. In pipeline
    // mode pg reports a refusal on the next tick after sending; without it (pg before 8.23)
    // statements go one at a time, so their answers are awaited.
    const refusalBeforeCommit = async (): Promise<Error | undefined> => {
      if (unanswered.size > 0) {
        if ((pooled as { pipeline?: unknown }).pipeline === true) {
          await new Promise<void>((resolve) => setImmediate(resolve))
        } else {
          await Promise.allSettled([...unanswered])
        }
      }
      return refused
    }
    // The pool's connections run in pg's pipeline mode, so BEGIN is not awaited: it goes out at
    // once and the transaction's first statement follows it without waiting for its answer,
    // which saves one round trip per transaction. A plain BEGIN fails only when the session
    // itself is lost (then nothing after it runs either); should it ever fail otherwise, the
    // statements behind it may have run on their own, so the connection is destroyed and
    // BEGIN's error is what the caller gets.
    let beginError: Error | undefined
    const begun = client.query('BEGIN').then(
      () => undefined,
      (error: unknown) => {
        beginError = asError(error)
      },
    )
    let finished: Promise<FinishOutcome> | undefined
    const tx = new ScopedTransaction(executorOf(client), 0, (sql, params) => {
      const outcome = refusalBeforeCommit().then((refusal) =>
        refusal === undefined
          ? finishWith(client, sql, params)
          : { result: noRows, error: refusal, broken: refusal },
      )
      finished = outcome
      return outcome.then((o) => (o.error === undefined ? o.result : Promise.reject(o.error)))
    })
    let settled:
      | { readonly ok: true; readonly value: T }
      | { readonly ok: false; readonly error: unknown }
    try {
      settled = { ok: true, value: await fn(tx) }
    } catch (error) {
      settled = { ok: false, error }
    }
    tx.end()
    await begun
    if (beginError !== undefined) {
      client.release(beginError)
      throw beginError
    }
    if (finished !== undefined) {
      // The transaction already ended with finish(): nothing to commit or roll back.
      const outcome = await finished
      client.release(outcome.broken)
      if (!settled.ok) throw settled.error
      // A callback that swallowed finish()'s failure still must not look committed.
      if (outcome.error !== undefined) throw outcome.error
      return settled.value
    }
    if (!settled.ok) {
      try {
        await client.query('ROLLBACK')
        client.release()
      } catch (rollbackError) {
        // The connection's state is unknown: destroy it rather than return it to the pool.
        client.release(asError(rollbackError))
      }
      throw settled.error
    }
    const refusal = await refusalBeforeCommit()
    if (refusal !== undefined) {
      // Nothing is committed; the connection is destroyed (see `refused`), which ends the
      // server's transaction with it.
      client.release(refusal)
      throw refusal
    }
    let committed: PgResult
    try {
      committed = await client.query('COMMIT')
    } catch (error) {
      // Ambiguous: the server may have committed before the connection failed. The error goes
      // to the caller as is, and the connection is destroyed.
      client.release(asError(error))
      throw error
    }
    client.release()
    // PostgreSQL answers COMMIT in a transaction that an earlier statement failed with
    // ROLLBACK, not with an error: a callback that swallowed that statement's error would
    // otherwise look committed.
    if (committed.command === 'ROLLBACK') throw failedEarlier('transaction')
    return settled.value
  }

  /**
   * {@inheritDoc SqlDriver.listen}
   *
   * `channel` is 1 to 63 bytes (UTF-8), else `InvalidOptionError`: PostgreSQL cuts a longer
   * name to 63 bytes without an error, so a NOTIFY of the full name would arrive under another
   * name and be lost.
   */
  listen(channel: string, onNotify: (notification: SqlNotification) => void): Promise<Unlisten> {
    if (
      typeof channel !== 'string' ||
      channel === '' ||
      Buffer.byteLength(channel) > maxIdentifierBytes
    )
      return Promise.reject(
        new InvalidOptionError('channel', 'a channel name of 1 to 63 bytes', channel),
      )
    if (this.#closed) return Promise.reject(new StoreClosedError('postgres'))
    return this.#listener.listen(channel, onNotify)
  }

  close(): Promise<void> {
    // A second call while the first is under way gets the same promise: it must not resolve
    // before the pool's connections have closed.
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    // pool.end() waits for every pooled connection to be returned, so close() called from inside
    // one of this driver's transactions never returns. It is not detected: telling that call
    // from an outside one needs AsyncLocalStorage around every transaction, which turns on
    // Node 20's promise hooks for the whole process (see docs/architecture.md).
    this.#closed = true
    // Work still waiting for a connection has not begun: it is refused, as work that comes
    // after close() is. What holds a connection runs to its end; pool.end() waits for it.
    for (const refuse of this.#waiting) refuse(new StoreClosedError('postgres'))
    this.#waiting.clear()
    // A connect still under way (pool or LISTEN connection) serves nobody now; pool.end() would
    // wait for it until connectionTimeoutMs, however long a server that never answers takes.
    this.#sockets.destroyUnanswered()
    await this.#listener.close()
    await this.#pool.end()
    // end() does not wait for the sockets to close (see OpenPoolConnections); close() does, so
    // that the server has let go of every session when it resolves.
    await this.#connections.allClosed(this.#clock, closeSocketsLimitMs)
    // What is still open now serves no connection: a connect that failed after the server
    // answered, which pg does not close (see PgSockets.destroyLeftOpen).
    this.#sockets.destroyLeftOpen()
  }
}

// PostgreSQL's longest identifier (NAMEDATALEN - 1), a channel name's too.
const maxIdentifierBytes = 63

// How long close() waits for the pool's sockets to close after their Terminate: the server
// answers at once, so only a peer that is gone (a dead network) takes this long.
const closeSocketsLimitMs = 5_000

/**
 * Whether `error` is PostgreSQL refusing a prepared statement whose result columns a schema
 * change altered (SQLSTATE 0A000, which also covers unrelated unsupported features).
 */
function isOutdatedPlan(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown }
  return (
    code === '0A000' &&
    typeof message === 'string' &&
    message.includes('cached plan must not change result type')
  )
}

// pg's error, fixed in its source (lib/client.js), for a statement sent on a client whose
// connection was lost before it: the reason is the client's earlier 'error' event, not this.
const pgNotQueryable = 'Client has encountered a connection error and is not queryable'

/**
 * `error`, a statement's failure on a transaction's connection, with `lost`, why that connection
 * was lost (its first 'error'), as its cause. pg's bare "not queryable" error becomes a new
 * error whose message ends with the reason and its code (`...: terminating connection due to
 * administrator command (SQLSTATE 57P01)`), `lost` as its cause, no code of its own as pg's had
 * none, so every classification reads it as before. Why: its message named no cause, and it
 * reached every report (a projector's `onError`, a relay's or saga worker's error events, log
 * lines) as "the connection failed", the server's reason only in `cause`, which many loggers
 * and dashboards do not show.
 */
function withLostConnection(error: unknown, lost: Error | undefined): unknown {
  if (lost === undefined || error === lost || !(error instanceof Error)) return error
  if (error.message !== pgNotQueryable || error.cause !== undefined) {
    error.cause ??= lost
    return error
  }
  const { code, severity } = lost as { code?: unknown; severity?: unknown }
  const named =
    typeof code !== 'string' || lost.message.includes(code)
      ? ''
      : typeof severity === 'string'
        ? ` (SQLSTATE ${code})`
        : ` (${code})`
  return new Error(`${pgNotQueryable}: ${lost.message}${named}`, { cause: lost })
}

/**
 * Whether pg refused a statement itself, before sending it: an error with neither a SQLSTATE
 * (the server's errors have one) nor one of pg's messages for a lost connection.
 */
function refusedBeforeSending(error: unknown): boolean {
  if (!(error instanceof Error)) return false
  const { code } = error as { code?: unknown }
  if (typeof code === 'string') return false
  return !pgConnectionMessages.some((message) => error.message.startsWith(message))
}

// pg's messages for a connection that failed (lib/client.js, lib/connection.js).
const pgConnectionMessages = [
  'Connection terminated',
  pgNotQueryable,
  'Query read timeout',
  'Client was closed and is not queryable',
]

function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value))
}

/** The pool's size and wait limit, named when the pool runs out. */
interface PoolLimits {
  readonly maxConnections: number
  readonly connectionTimeoutMs: number
}

// pg-pool's message when a checkout waited connectionTimeoutMs with every connection in use (a
// new connection that takes too long fails with another message, kept as is).
const poolWaitTimeout = 'timeout exceeded when trying to connect'

/**
 * A checkout's failure: pg-pool's bare timeout of a full pool becomes {@link StoreBusyError}
 * naming the pool size and the options to raise, with pg's error as `cause`.
 */
function poolError(error: unknown, limits: PoolLimits): unknown {
  if (!(error instanceof Error) || error.message !== poolWaitTimeout) return error
  return new StoreBusyError(
    limits.connectionTimeoutMs,
    `PostgreSQL pool exhausted: all maxConnections (${limits.maxConnections}) connections stayed in use for connectionTimeoutMs (${limits.connectionTimeoutMs} ms); raise maxConnections (within the server's max_connections, shared by every process), hold connections for less time (short transactions, no remote calls inside them), or raise connectionTimeoutMs`,
    error,
  )
}

/**
 * Connects to PostgreSQL with a pg pool. The pool connects lazily; the first statement (or
 * transaction) reports connection problems. An unknown (misspelt) option is refused with
 * `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const db = await createPostgresDriver({ connectionString: 'postgres://app@127.0.0.1/app' })
 * const rows = await db.query<{ n: number }>('SELECT count(*) AS n FROM orders WHERE id = $1', ['o1'])
 * await db.close()
 * ```
 */
export async function createPostgresDriver(
  options: PostgresDriverOptions,
): Promise<PostgresDriver> {
  checkObject('options', options)
  // A misspelt option was dropped without a word and the default used instead.
  checkOptionKeys('options', options, postgresDriverOptions, { bareNames: true })
  const { connectionString } = options
  if (typeof connectionString !== 'string' || !/^postgres(ql)?:\/\//i.test(connectionString)) {
    throw new InvalidOptionError(
      'connectionString',
      'a postgres:// URL',
      typeof connectionString === 'string' ? redactUrl(connectionString) : connectionString,
    )
  }
  // pg would refuse a URL that does not parse only at the first statement, as "Invalid URL"
  // naming no setting, and ignores a query parameter it does not know.
  const defect = postgresUrlDefect(connectionString)
  if (defect !== undefined) {
    throw new InvalidOptionError('connectionString', defect, redactUrl(connectionString))
  }
  const max = checkInteger('maxConnections', options.maxConnections ?? 10, 1)
  // Every timeout is a 32-bit millisecond count: PostgreSQL's settings refuse more (at every
  // connect), and pg's timers would fire after 1 ms instead (node's delay overflows).
  const timeout = (option: string, value: number) => checkInteger(option, value, 0, maxTimerDelayMs)
  const statementTimeoutMs = timeout('statementTimeoutMs', options.statementTimeoutMs ?? 0)
  const idleInTxMs = timeout('idleInTransactionTimeoutMs', options.idleInTransactionTimeoutMs ?? 0)
  const connectionTimeoutMs = timeout('connectionTimeoutMs', options.connectionTimeoutMs ?? 10_000)
  const idleTimeoutMs = timeout('idleTimeoutMs', options.idleTimeoutMs ?? 10_000)
  const queryTimeoutMs = timeout('queryTimeoutMs', options.queryTimeoutMs ?? 0)
  const keepAliveDelayMs = timeout('keepAliveDelayMs', options.keepAliveDelayMs ?? 10_000)
  const applicationName = options.applicationName ?? 'breakwater'
  if (typeof applicationName !== 'string') {
    throw new InvalidOptionError('applicationName', 'a string', applicationName)
  }
  const baseMs = checkInteger('listenRetryBaseMs', options.listenRetryBaseMs ?? 100, 1)
  const maxMs = checkInteger('listenRetryMaxMs', options.listenRetryMaxMs ?? 5_000, baseMs)
  const clock = checkClock('clock', options.clock)

  const pg = await loadPg()
  const types = breakwaterTypes(pg.types)
  const sockets = new PgSockets()
  const connection: Record<string, unknown> = {
    connectionString,
    stream: sockets.stream,
    types,
    application_name: applicationName,
    connectionTimeoutMillis: connectionTimeoutMs,
  }
  if (statementTimeoutMs > 0) connection.statement_timeout = statementTimeoutMs
  if (idleInTxMs > 0) connection.idle_in_transaction_session_timeout = idleInTxMs
  // A query_timeout in the URL wins over the option (pg lets the URL's parameters override the
  // config object), as statement_timeout's does.
  if (queryTimeoutMs > 0) connection.query_timeout = queryTimeoutMs
  if (keepAliveDelayMs > 0) {
    connection.keepAlive = true
    connection.keepAliveInitialDelayMillis = keepAliveDelayMs
  }
  // Pipeline mode (pg 8.23) lets a transaction send BEGIN and its first statement together.
  // breakwater never uses what it excludes (cursors, the `rows` option, query streams); the
  // LISTEN connection below is a plain client.
  const pool = new pg.Pool({
    ...connection,
    max,
    idleTimeoutMillis: idleTimeoutMs,
    pipeline: true,
  })
  // An idle pooled connection that the server drops emits 'error' on the pool; pg has already
  // removed it from the pool, and an unhandled 'error' event would crash the process.
  pool.on('error', () => {})
  const listener = new PgListener(
    () => new pg.Client({ ...connection, application_name: `${applicationName}:listen` }),
    clock,
    baseMs,
    maxMs,
  )
  return new PostgresDriver(
    pool,
    listener,
    clock,
    { maxConnections: max, connectionTimeoutMs },
    sockets,
  )
}
