// Idempotency-Key enforcement by the sidecar, for routes with `idempotency` set: the app behind
// the proxy gets the protocol without a line of code. The idempotency capability decides every
// answer (missing key 400, concurrent duplicate 409, reused key with another request 422,
// replay of a recorded response); this module only connects it to the forward path.
//
// As in the in-process adapters, the first response is held back until its record commits, so
// a client that has seen the answer gets a replay (never a 409) for any duplicate it sends
// afterwards. A response that cannot be recorded (5xx, a proxy error, a body over
// `maxResponseBytes`) releases the key before it is sent, so the client's retry reaches the
// app again; one over the cap stops being held and streams on once it passes the cap.
//
// Except when the proxy cannot know whether the app ran: the app knows nothing of keys, so a
// request sent to it once must not be sent again under the same key. The runtime is asked not
// to retry such requests once they may have been written (`unsafeRetry: 'unsent-only'`), and
// after a failure once the request may have reached the app (a read timeout, a reset after
// sending, a deadline spent during the call) the key is not released but left held until its
// lease expires: the client's retry meanwhile gets 409 with Retry-After instead of a second
// run. Failures that prove the app never got the request (no attempt got past its connect:
// refused or timed out, breaker open, bulkhead full, no endpoints) release it at once.

import { ServerResponse } from 'node:http'
import type { Clock } from '../../core/clock.js'
import { AbortedError, InvalidOptionError } from '../../core/errors.js'
import { checkClock, checkInteger, checkObject, checkSignal } from '../../core/validate.js'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  createSweeper,
  type Idempotency,
  type IdempotencyResponse,
  migrateIdempotency,
  type Sweeper,
} from '../../idempotency/index.js'
import { credentialScope } from '../../idempotency/scope.js'
import type { IdempotencyRequest } from '../../idempotency/types.js'
import type { Logger } from '../../observability/logger.js'
import { openDatabase, parseDatabaseUrl, type SqlDriver } from '../../stores/index.js'
import type { ForwardOptions, ForwardOutcome, RouteIdempotencyConfig } from '../contracts.js'
import { headerValueOf } from './header-value.js'
import type { InboundRequest } from './request.js'

/** Options of {@link createSidecarIdempotency}. */
export interface SidecarIdempotencyOptions {
  /**
   * The protocol whose store holds the records (see {@link openProxyIdempotency}). Each route
   * gets its own protocol over this store, with the route's `methods` and `ttlMs` (as
   * `retentionMs`), keys scoped by listener, route and credential (see {@link sidecarScope}),
   * and a concurrent duplicate answered 409 at once.
   */
  readonly idempotency: Idempotency
  /**
   * How long a first request holds its key before a duplicate may take it over; must cover
   * the app's slowest answer, with retries.
   * @default 60000
   */
  readonly leaseMs?: number | undefined
  /**
   * The `Retry-After` of a 409 for a concurrent duplicate (rounded up to whole seconds).
   * @default 1000
   */
  readonly retryAfterMs?: number | undefined
  /**
   * Largest response body recorded for replay; a longer one is passed to the client but not
   * recorded (the key is released).
   * @default 1048576 (1 MiB)
   */
  readonly maxResponseBytes?: number | undefined
  /**
   * Clock of leases and retention.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * Where record failures are logged.
   * @default no logging
   */
  readonly logger?: Logger | undefined
}

/** The listener and route a guarded request came through, as the config names them. */
export interface GuardedRoute {
  readonly listener: string
  readonly route: string
}

/**
 * The scope a guarded request's key lives in: the listener and route names, then the default
 * credential scope (the SHA-256 of `Authorization`, else of `X-API-Key`, else `anonymous`).
 * With the credential alone, every listener and route sharing `idempotency.url` shared the
 * keys: a POST to another app with a key already used answered the first app's recorded
 * response, and the second app never ran it.
 *
 * Names, not what the route does: a reload that moves the route's targets (a strangler step),
 * its prefix or its methods keeps its keys, so a retry of a request the old target ran is
 * replayed rather than run again on the new one; a route or listener renamed is another route,
 * whose keys start afresh. Names are letters, digits, `.`, `_` and `-` (the config schema), so
 * `/` and `|` cannot make two pairs read alike; a name built by hand with them could.
 *
 * @example
 * ```ts
 * sidecarScope({ listener: 'inbound', route: 'pay' }, 'anonymous')
 * // 'route:inbound/pay|anonymous'
 * ```
 */
export function sidecarScope(at: GuardedRoute, credential: string): string {
  return `route:${at.listener}/${at.route}|${credential}`
}

/** Runs forwards of routes with Idempotency-Key enforcement. */
export interface SidecarIdempotency {
  /** Whether `config` guards requests with this method. */
  guards(config: RouteIdempotencyConfig, method: string): boolean
  /**
   * Runs one request of a guarded route under the protocol: answers problems and replays
   * itself (writing `res`), or calls `forward` with a capture and records what the app
   * answered. `forward` writes into `response`, a response detached from the client's
   * connection: a client that goes away does not cut the app's call short, so its answer is
   * still recorded and the client's retry with the same key gets it replayed (the lost-reply
   * case the protocol is for). Resolves with the outcome for the access log and counters;
   * `attempts` is 0 when the app was not called. Keys live per `at` (see {@link sidecarScope}).
   */
  run(
    config: RouteIdempotencyConfig,
    at: GuardedRoute,
    inbound: InboundRequest,
    res: ServerResponse,
    forward: (options: ForwardOptions, response: ServerResponse) => Promise<ForwardOutcome>,
  ): Promise<ForwardOutcome>
}

const emptyBody = Buffer.alloc(0)

function writeResponse(res: ServerResponse, response: IdempotencyResponse): void {
  if (res.headersSent || res.writableEnded) return
  const headers: Record<string, string | string[]> = {}
  for (const [name, value] of Object.entries(response.headers)) {
    if (name === 'content-length' || name === 'transfer-encoding' || name === 'connection') {
      continue
    }
    headers[name] = typeof value === 'string' ? value : [...value]
  }
  headers['content-length'] = String(response.body.byteLength)
  res.writeHead(response.status, headers)
  res.end(response.body)
}

type WriteHeadArgs = Parameters<ServerResponse['writeHead']>

/** A response held back from the client; see {@link holdBack}. */
interface HeldResponse {
  /** True once the response passed the cap and went on to the client as it came. */
  readonly streaming: boolean
  /** True when the runtime broke the response off (the app's answer ended mid-body). */
  readonly broken: boolean
  /** Sends what was held (unless streaming) and puts the response's methods back. */
  release(): void
}

/**
 * Holds back what the service runtime writes to `source` (head, body, end) instead of sending
 * it to `client`, until {@link HeldResponse.release}. `source` is a response of its own, not
 * tied to the client's connection, so the service call outlives a client that goes away. A
 * response longer than `maxBytes` is not held: the head and the bytes so far go to the client
 * when it passes the cap, and the rest streams through with the client's backpressure; from
 * then on a client that goes away ends the call, as on any other route. A second `writeHead`
 * (the runtime's own error response after a failed attempt) replaces what was held.
 */
function holdBack(client: ServerResponse, source: ServerResponse, maxBytes: number): HeldResponse {
  let head: WriteHeadArgs | undefined
  let chunks: Buffer[] = []
  let size = 0
  let ended = false
  let streaming = false
  let released = false
  let broken = false
  // The runtime destroys its response when the app's answer breaks off mid-body: the client
  // must then see a broken connection too, never a body that ends early.
  const destroySource = source.destroy.bind(source)
  source.destroy = ((error?: Error) => {
    broken = true
    if (!client.destroyed) client.destroy()
    return destroySource(error)
  }) as ServerResponse['destroy']
  const toBuffer = (chunk: unknown): Buffer | undefined =>
    typeof chunk === 'string'
      ? Buffer.from(chunk)
      : chunk instanceof Uint8Array
        ? Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
        : undefined
  const startStreaming = (): boolean => {
    streaming = true
    // The response can no longer be recorded: the client's backpressure and departure now
    // govern the call.
    client.on('drain', () => source.emit('drain'))
    // `source` has no socket, so nothing else would tell the runtime (which listens for its
    // response's 'close') that the client left.
    const clientLeft = (): void => {
      source.destroy()
      source.emit('close')
    }
    if (client.destroyed) {
      clientLeft()
      return false
    }
    client.once('close', () => {
      if (!client.writableFinished) clientLeft()
    })
    if (head !== undefined) client.writeHead(...head)
    const body = Buffer.concat(chunks, size)
    chunks = []
    return body.length === 0 ? true : client.write(body)
  }
  source.writeHead = ((...args: WriteHeadArgs) => {
    if (streaming) {
      if (!client.headersSent) client.writeHead(...args)
      return source
    }
    head = args
    chunks = []
    size = 0
    return source
  }) as ServerResponse['writeHead']
  source.write = ((chunk: unknown, ...rest: unknown[]) => {
    const buffer = toBuffer(chunk)
    const callback = rest.find((a) => typeof a === 'function') as (() => void) | undefined
    if (streaming) {
      if (callback !== undefined) queueMicrotask(callback)
      return buffer === undefined || client.destroyed ? true : client.write(buffer)
    }
    if (buffer !== undefined) {
      chunks.push(buffer)
      size += buffer.length
    }
    if (callback !== undefined) queueMicrotask(callback)
    return size > maxBytes ? startStreaming() : true
  }) as ServerResponse['write']
  source.end = ((chunk?: unknown, ...rest: unknown[]) => {
    const buffer = typeof chunk === 'function' ? undefined : toBuffer(chunk)
    const callback = [chunk, ...rest].find((a) => typeof a === 'function') as
      | (() => void)
      | undefined
    if (streaming) {
      if (callback !== undefined) client.once('finish', callback)
      if (!client.destroyed) client.end(buffer)
      return source
    }
    if (buffer !== undefined) {
      chunks.push(buffer)
      size += buffer.length
    }
    ended = true
    if (callback !== undefined) client.once('finish', callback)
    return source
  }) as ServerResponse['end']
  return {
    get streaming() {
      return streaming
    },
    get broken() {
      return broken
    },
    release() {
      if (released) return
      released = true
      if (streaming || broken || client.destroyed) return
      if (head !== undefined) client.writeHead(...head)
      if (ended) client.end(Buffer.concat(chunks, size))
      else if (size > 0) client.write(Buffer.concat(chunks, size))
    },
  }
}

const keepKey = { release: false } as const

const unsentOnly: ForwardOptions = { unsafeRetry: 'unsent-only' }

class Sidecar implements SidecarIdempotency {
  readonly #base: Idempotency
  readonly #leaseMs: number
  readonly #retryAfterMs: number
  readonly #maxBytes: number
  readonly #clock: Clock
  readonly #logger: Logger | undefined
  readonly #byConfig = new WeakMap<RouteIdempotencyConfig, Idempotency>()

  constructor(options: SidecarIdempotencyOptions) {
    checkObject('options', options)
    const base = options.idempotency
    if (typeof base?.begin !== 'function' || typeof base.store !== 'object') {
      throw new InvalidOptionError('idempotency', 'an Idempotency (createIdempotency)', base)
    }
    this.#base = base
    this.#leaseMs = checkInteger('leaseMs', options.leaseMs ?? 60_000, 1)
    this.#retryAfterMs = checkInteger('retryAfterMs', options.retryAfterMs ?? 1_000, 0)
    this.#maxBytes = checkInteger('maxResponseBytes', options.maxResponseBytes ?? 1_048_576, 0)
    this.#clock = checkClock('clock', options.clock)
    this.#logger = options.logger
  }

  guards(config: RouteIdempotencyConfig, method: string): boolean {
    return this.#protocol(config).appliesTo(method)
  }

  async run(
    config: RouteIdempotencyConfig,
    at: GuardedRoute,
    inbound: InboundRequest,
    res: ServerResponse,
    forward: (options: ForwardOptions, response: ServerResponse) => Promise<ForwardOutcome>,
  ): Promise<ForwardOutcome> {
    const protocol = this.#protocol(config)
    const request: IdempotencyRequest = {
      method: inbound.method,
      // The normalized path, as routed and forwarded, so two spellings of one path are one
      // request.
      route: `${inbound.path}${inbound.query}`,
      header: (name) => headerValueOf(inbound.headers, name.toLowerCase()),
      // forwardableHeaders keeps a repeated header's lines as a list: exact, where the joined
      // value alone would read one line holding ", " as two.
      headerRepeated: (name) => Array.isArray(inbound.headers[name]),
      body: inbound.body ?? emptyBody,
      signal: inbound.signal,
      native: inbound,
    }
    const begun = await protocol.begin({
      ...request,
      scope: sidecarScope(at, credentialScope(request)),
    })
    if (begun.kind === 'bypass') return forward(unsentOnly, res)
    if (begun.kind === 'respond') {
      writeResponse(res, begun.response)
      return {
        status: begun.response.status,
        attempts: 0,
        written: false,
        endpoint: undefined,
        error: begun.error?.code,
        captured: undefined,
      }
    }
    const { execution } = begun
    // Not attached to the client's socket: writes to it are intercepted by holdBack, and it
    // never closes when the client does.
    const detached = new ServerResponse(res.req)
    const held = holdBack(res, detached, this.#maxBytes)
    let outcome: ForwardOutcome
    try {
      outcome = await forward(
        { captureBytes: this.#maxBytes, unsafeRetry: 'unsent-only' },
        detached,
      )
    } catch (error) {
      // forward() answers every failure itself: a throw comes before the call was made.
      // The response is let go even if the release fails (the caller answers 503 on it).
      await execution.abort().finally(() => held.release())
      throw error
    }
    const captured = outcome.captured
    if (
      held.streaming ||
      captured === undefined ||
      captured.truncated ||
      outcome.error !== undefined
    ) {
      // An answer that outgrew the cap came whole from the app and is released as for a 5xx
      // (see docs/proxy.md on what that leaves open). One that broke off mid-body shows the app
      // ran but not what it did, so its key is held until the lease expires, as for a timeout.
      const unknown =
        held.broken ||
        // `written`: some attempt got past its connect, so the app may have the request. A
        // refused or timed-out connect, an open breaker, a full bulkhead or a deadline spent
        // while connecting prove it never did, and release the key at once.
        (outcome.error !== undefined && !held.streaming && outcome.written)
      if (unknown) {
        this.#logger?.warn('idempotency key held until its lease expires: the app may have run', {
          path: inbound.path,
          requestId: inbound.requestId,
          error: outcome.error,
        })
      }
      try {
        await execution.abort(unknown ? keepKey : undefined)
      } catch (error) {
        // IDEMPOTENCY_RELEASE_FAILED: the key stays held until its lease ends (a retry gets
        // 409 meanwhile). The client still gets the app's answer, as when recording fails.
        this.#logger?.error('idempotency release failed', {
          path: inbound.path,
          requestId: inbound.requestId,
          error: error instanceof Error ? error.message : String(error),
        })
      }
      held.release()
      return outcome
    }
    try {
      const recorded = await execution.complete({
        status: captured.status,
        headers: captured.headers,
        body: captured.body,
      })
      if (recorded.status !== captured.status) {
        // The app's effect happened whatever the record did: the client gets the app's answer.
        this.#logger?.warn('idempotency lease ran out before the response was recorded', {
          path: inbound.path,
          requestId: inbound.requestId,
        })
      }
    } catch (error) {
      // The store failed and complete() released the key: a retry reaches the app again.
      this.#logger?.error('idempotency record failed', {
        path: inbound.path,
        requestId: inbound.requestId,
        error: error instanceof Error ? error.message : String(error),
      })
    }
    held.release()
    return outcome
  }

  #protocol(config: RouteIdempotencyConfig): Idempotency {
    let protocol = this.#byConfig.get(config)
    if (protocol === undefined) {
      protocol = createIdempotency({
        store: this.#base.store,
        methods: config.methods,
        retentionMs: config.ttlMs,
        leaseMs: this.#leaseMs,
        retryAfterMs: this.#retryAfterMs,
        onConcurrent: 'reject',
        clock: this.#clock,
      })
      this.#byConfig.set(config, protocol)
    }
    return protocol
  }
}

/**
 * Creates the sidecar's Idempotency-Key enforcement over an idempotency store chosen by the
 * runtime (the `idempotency.url` of the proxy config, see {@link openProxyIdempotency}).
 *
 * @example
 * ```ts
 * const { idempotency, close } = await openProxyIdempotency('sqlite:./proxy-idempotency.db')
 * const handler = createGatewayHandler(listener, ctx, table, {
 *   idempotency: createSidecarIdempotency({ idempotency }),
 * })
 * ```
 */
export function createSidecarIdempotency(options: SidecarIdempotencyOptions): SidecarIdempotency {
  return new Sidecar(options)
}

/**
 * An idempotency protocol over the store a proxy config names, swept of expired records while
 * it is open, and how to close it.
 */
export interface ProxyIdempotencyStore {
  readonly idempotency: Idempotency
  /**
   * Sets the time between sweeps (see {@link proxySweepIntervalMs}): the sweeper in place stops
   * (a sweep under way finishes) and one with the new interval starts, its first sweep
   * `intervalMs` from now. The same interval as now, or a call after close(), changes nothing.
   */
  sweepEvery(intervalMs: number): void
  /** Stops the sweeper (waiting for a sweep under way), then closes the database. */
  close(): Promise<void>
}

/** Options of {@link openProxyIdempotency}. */
export interface OpenProxyIdempotencyOptions {
  /**
   * Clock of leases, retention and sweeps.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * Time between sweeps of expired records (the proxy passes {@link proxySweepIntervalMs} of
   * its routes); change it later with {@link ProxyIdempotencyStore.sweepEvery}.
   * @default 60000
   */
  readonly sweepIntervalMs?: number | undefined
  /**
   * Where failed sweeps are logged (at warn; the sweeper keeps going).
   * @default no logging
   */
  readonly logger?: Logger | undefined
  /**
   * Cancels the open: it then rejects with `AbortedError` (code `ABORTED`) once every
   * connection it made has closed. On PostgreSQL a migration waiting on the migration lock
   * (another session migrating, a hung `breakwater migrate`) is ended at once; a connect to a
   * server that does not answer ends at the driver's connect timeout (10 s).
   */
  readonly signal?: AbortSignal | undefined
}

const shortestSweepMs = 1_000
const longestSweepMs = 60_000

/**
 * The time between sweeps of the proxy's idempotency store for routes with these `ttlMs`: the
 * shortest, within 1 s and 60 s. A record is then deleted at most one interval after its ttlMs
 * ends (so a short ttlMs does not leave records behind for many times their life), while a
 * store shared by many proxies is not swept more than once a second by each.
 *
 * @example
 * ```ts
 * proxySweepIntervalMs([86_400_000, 30_000]) // 30000
 * ```
 */
export function proxySweepIntervalMs(ttlsMs: Iterable<number>): number {
  let shortest = longestSweepMs
  for (const ttl of ttlsMs) shortest = Math.min(shortest, ttl)
  return Math.max(shortestSweepMs, Math.ceil(shortest))
}

/**
 * Opens the store named by `ProxyConfig.idempotency.url`: `memory` (one process only: worker
 * processes would not see each other's keys), `sqlite:<path>` or `postgres://...`, with the
 * idempotency migrations applied. A sweeper deletes expired records every `sweepIntervalMs`
 * on the clock until close(): nothing else removes them (the memory store would grow for good).
 *
 * @example
 * ```ts
 * const store = await openProxyIdempotency('postgres://proxy@db/proxy')
 * // ... createSidecarIdempotency({ idempotency: store.idempotency }) ...
 * await store.close()
 * ```
 */
export async function openProxyIdempotency(
  url: string,
  options: OpenProxyIdempotencyOptions = {},
): Promise<ProxyIdempotencyStore> {
  const clock = checkClock('clock', options.clock)
  const signal = checkSignal('signal', options.signal)
  const sweepIntervalMs = checkInteger(
    'sweepIntervalMs',
    options.sweepIntervalMs ?? longestSweepMs,
    1,
  )
  if (signal?.aborted) throw new AbortedError(signal.reason)
  const sweeping = { clock, intervalMs: sweepIntervalMs, logger: options.logger }
  if (url === 'memory') {
    return withSweeper(
      createIdempotency({ store: createMemoryIdempotencyStore(), clock }),
      sweeping,
      async () => {},
    )
  }
  let db: SqlDriver
  if (parseDatabaseUrl(url).dialect === 'postgres') {
    await migratePostgres(url, signal)
    // Connects on first use: nothing here waits on the server.
    db = await openDatabase(url)
  } else {
    // better-sqlite3 waits for a lock on this thread: nothing can interrupt it.
    db = await openDatabase(url)
    try {
      await migrateIdempotency(db)
    } catch (error) {
      await db.close()
      throw error
    }
  }
  if (signal?.aborted) {
    await db.close()
    throw new AbortedError(signal.reason)
  }
  return withSweeper(createIdempotency({ store: db, clock }), sweeping, () => db.close())
}

// The store with its sweeper. Changing the interval replaces the sweeper (createSweeper's is
// fixed); the old one's close, which waits for a sweep under way, is awaited by close() before
// the database closes under it.
function withSweeper(
  idempotency: Idempotency,
  options: { clock: Clock; intervalMs: number; logger: Logger | undefined },
  closeStore: () => Promise<void>,
): ProxyIdempotencyStore {
  const { clock, logger } = options
  const start = (intervalMs: number): Sweeper =>
    createSweeper({
      store: idempotency.store,
      clock,
      intervalMs,
      onError: (error) =>
        logger?.warn('idempotency sweep failed', {
          error: error instanceof Error ? error.message : String(error),
        }),
    })
  let intervalMs = options.intervalMs
  let sweeper = start(intervalMs)
  const stopping = new Set<Promise<void>>()
  let closed = false
  return {
    idempotency,
    sweepEvery(next) {
      checkInteger('intervalMs', next, 1)
      if (closed || next === intervalMs) return
      const stop = sweeper.close()
      stopping.add(stop)
      void stop.finally(() => stopping.delete(stop))
      intervalMs = next
      sweeper = start(next)
    },
    async close() {
      if (!closed) {
        closed = true
        stopping.add(sweeper.close())
      }
      await Promise.all(stopping)
      await closeStore()
    },
  }
}

// Runs the idempotency migrations on a pool of one connection whose server process is known.
// A migration waiting on the migration lock holds its statement for as long as another session
// holds that lock, and closing a pool waits for the statements it runs: on abort, the pool is
// closed (refusing what has not begun) and that session is ended from another connection
// (pg_terminate_backend ends it whatever it is doing, where a cancel would miss a statement
// still on its way). The connection stays open between the two (no idle timeout), so the
// migration runs on the session whose process is known.
async function migratePostgres(url: string, signal: AbortSignal | undefined): Promise<void> {
  const migrator = await openDatabase(url, { postgres: { maxConnections: 1, idleTimeoutMs: 0 } })
  let pid: number | undefined
  let ending: Promise<void> | undefined
  const onAbort = (): void => {
    const closing = migrator.close()
    ending = (pid === undefined ? Promise.resolve() : endSession(url, pid))
      .catch(() => {})
      .then(() => closing)
      .catch(() => {})
  }
  signal?.addEventListener('abort', onAbort, { once: true })
  let failure: { error: unknown } | undefined
  try {
    const [row] = await migrator.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
    pid = row?.pid
    await migrateIdempotency(migrator)
  } catch (error) {
    failure = { error }
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
  if (ending !== undefined) {
    await ending
    throw new AbortedError(signal?.reason)
  }
  await migrator.close()
  if (failure !== undefined) throw failure.error
}

// Ends the PostgreSQL session `pid` from a connection of its own (the same role may end its
// own sessions).
async function endSession(url: string, pid: number): Promise<void> {
  const db = await openDatabase(url, { postgres: { maxConnections: 1 } })
  try {
    await db.query('SELECT pg_terminate_backend($1)', [pid])
  } finally {
    await db.close()
  }
}
