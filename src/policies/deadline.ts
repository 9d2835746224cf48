import { AsyncLocalStorage } from 'node:async_hooks'
import { type Clock, systemClock } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkKnownOptions, checkNumber, checkObject, optionKeys } from '../core/validate.js'
import { CancelScope } from './cancel-scope.js'
import { DeadlineExceededError } from './errors.js'
import { optionalClock, optionalNumber } from './options.js'
import { type TimerEntry, timerQueueFor } from './timer-queue.js'

/**
 * The end-to-end deadline of the current piece of work, as set by {@link withDeadline} or
 * {@link adoptDeadline}. Retry and timeout policies read it to stop in time.
 */
export interface Deadline {
  /** The absolute deadline, in milliseconds of the clock it was set with. */
  readonly atMs: number
  /**
   * Aborts at the deadline (reason: a `DeadlineExceededError`) while the work that set the
   * deadline is running. Created on first read, so a deadline nobody listens to costs no timer.
   */
  readonly signal: AbortSignal
  /**
   * Milliseconds left, never below 0.
   * @param nowMs The current time; defaults to the deadline's clock.
   */
  remainingMs(nowMs?: number): number
}

/** Options of {@link withDeadline}. */
export interface DeadlineOptions {
  /**
   * The clock the deadline is measured on.
   * @default the enclosing deadline's clock, else systemClock
   */
  readonly clock?: Clock | undefined
}

/** The option keys `withDeadline` takes (internal: not exported from the package root). */
export const deadlineOptions = optionKeys<DeadlineOptions>({ clock: true })

// A deadline is a cancellation scope without parents that expires by itself at `atMs`. Its
// timer is only queued while somebody listens (a read `signal`, a retry's sleep or an attempt's
// linked signal), and never after the scope that set it has ended.
class ScopedDeadline extends CancelScope implements Deadline, TimerEntry {
  // Moved only when the clock steps while its timer is queued (see clockStepped).
  atMs: number
  readonly clock: Clock
  queueIndex = -1

  constructor(atMs: number, clock: Clock) {
    super()
    this.atMs = atMs
    this.clock = clock
  }

  remainingMs(nowMs: number = this.clock.now()): number {
    return Math.max(0, this.atMs - nowMs)
  }

  fire(): void {
    this.abort(new DeadlineExceededError(this.atMs))
  }

  clockStepped(stepMs: number): void {
    this.atMs += stepMs
  }

  protected override expiry(): unknown {
    return this.clock.now() >= this.atMs ? new DeadlineExceededError(this.atMs) : undefined
  }

  protected override onLink(): void {
    // Read now, not when the deadline was set: the queue takes each reading it is given for the
    // latest (an earlier one would look like the clock going back).
    timerQueueFor(this.clock).add(this, this.clock.now())
  }

  protected override onUnlink(): void {
    timerQueueFor(this.clock).remove(this)
  }
}

const storage = new AsyncLocalStorage<ScopedDeadline>()

/**
 * The deadline of the current async context, or undefined when none was set.
 *
 * @example
 * ```ts
 * import { currentDeadline, withDeadline } from 'breakwater'
 * await withDeadline(500, async () => {
 *   const deadline = currentDeadline()
 *   await fetch('https://example.com', { signal: deadline?.signal ?? null })
 * })
 * ```
 */
export function currentDeadline(): Deadline | undefined {
  return storage.getStore()
}

/** The current deadline as a cancellation scope, for the policies. Internal. */
export function currentDeadlineScope(): (CancelScope & Deadline) | undefined {
  return storage.getStore()
}

/**
 * Milliseconds left before the current deadline (never below 0), or undefined when there
 * is no deadline.
 * @param clock The clock to read now from; defaults to the deadline's own clock.
 */
export function remainingMs(clock?: Clock): number | undefined {
  const deadline = storage.getStore()
  if (deadline === undefined) return undefined
  return deadline.remainingMs((clock ?? deadline.clock).now())
}

/**
 * Runs `fn` with a deadline `ms` from now, visible to everything it calls (through
 * `AsyncLocalStorage`) as {@link currentDeadline}. A nested call can only shorten the
 * deadline, never extend it. The deadline is cooperative: it does not reject `fn` by itself;
 * retry and timeout policies inside honour it, and its `signal` aborts when it passes.
 *
 * @param ms The budget in milliseconds (>= 0).
 * @example
 * ```ts
 * import { retry, timeout, withDeadline } from 'breakwater'
 * const perTry = timeout(200)
 * const retrying = retry({ maxAttempts: 5 })
 * // However many retries, the whole call takes at most one second.
 * await withDeadline(1_000, () => retrying.execute(() => perTry.execute(() => fetch('https://example.com'))))
 * ```
 */
export async function withDeadline<T>(
  ms: number,
  fn: () => PromiseLike<T> | T,
  options: DeadlineOptions = {},
): Promise<T> {
  checkNumber('withDeadline.ms', ms, 0)
  if (typeof fn !== 'function') throw new InvalidOptionError('withDeadline.fn', 'a function', fn)
  const parent = storage.getStore()
  checkObject('withDeadline.options', options)
  // A misspelt option (`clok`) would run on the default clock without a word.
  checkKnownOptions('withDeadline', options, deadlineOptions)
  const clock = optionalClock('withDeadline.clock', options.clock, parent?.clock ?? systemClock)
  const atMs = clock.now() + ms
  if (parent !== undefined && parent.atMs <= atMs) return await fn()
  const deadline = new ScopedDeadline(atMs, clock)
  try {
    return await storage.run(deadline, fn)
  } finally {
    // The work is done: the timer behind the signal is not needed any more.
    deadline.close()
  }
}

/** The header that carries the remaining deadline budget, in whole milliseconds. */
export const DEADLINE_HEADER = 'x-breakwater-deadline-ms'

/** gRPC's deadline header, accepted on input: 1 to 8 digits and a unit (H M S m u n). */
export const GRPC_TIMEOUT_HEADER = 'grpc-timeout'

/**
 * The largest budget the deadline header carries, in milliseconds: 999999999999999 (15 digits,
 * about 31,700 years). A sender clamps a larger finite budget to it, because `String(n)` turns
 * to exponent notation (`1e+21`) that no hop parses, and earlier breakwater versions read at
 * most 15 digits; a reader takes any longer run of digits as this much (it is simply huge) and
 * then caps it like any other budget. Internal: not exported from the package root.
 */
export const MAX_DEADLINE_HEADER_MS = 999_999_999_999_999

/**
 * The value to send as {@link DEADLINE_HEADER} so the downstream adopts the remaining budget:
 * whole milliseconds, rounded down, at most {@link MAX_DEADLINE_HEADER_MS}. Undefined when there
 * is no deadline (or an infinite one).
 *
 * @example
 * ```ts
 * import { DEADLINE_HEADER, deadlineHeaderValue } from 'breakwater'
 * const value = deadlineHeaderValue()
 * const headers: Record<string, string> = value === undefined ? {} : { [DEADLINE_HEADER]: value }
 * ```
 */
export function deadlineHeaderValue(clock?: Clock): string | undefined {
  const left = remainingMs(clock)
  // withDeadline(Infinity) is no budget at all: 'Infinity' is not a header anyone can parse.
  return left === undefined || left === Number.POSITIVE_INFINITY
    ? undefined
    : String(Math.floor(Math.min(left, MAX_DEADLINE_HEADER_MS)))
}

/**
 * Request headers in any common shape: a fetch `Headers`, anything with `get(name)`, or
 * Node's `IncomingHttpHeaders` (a plain object, usually with lower-case names).
 */
export type HeadersLike =
  | { get(name: string): string | null | undefined }
  | Readonly<Record<string, string | readonly string[] | undefined>>

/**
 * The cap {@link deadlineFromHeaders} and {@link adoptDeadline} put on a caller's budget when no
 * `maxMs` is given: five minutes. Without a cap a client could send a budget of days and have
 * the server, and every outbound call that passes the budget on, hold work and connections that
 * long. Five minutes is Node's own `http.Server#requestTimeout` default, and above the request
 * timeouts of the usual load balancers and gateways, so no request those let through is cut.
 */
export const DEFAULT_MAX_DEADLINE_MS = 300_000

/** Options of {@link deadlineFromHeaders}. */
export interface DeadlineFromHeadersOptions {
  /**
   * The largest budget to accept from a caller, in milliseconds: a client cannot make this
   * server hold work (and pass the budget on to its own downstream calls) longer than this.
   * `Number.POSITIVE_INFINITY` turns the cap off and honours whatever the caller sent.
   * @default {@link DEFAULT_MAX_DEADLINE_MS} (five minutes)
   */
  readonly maxMs?: number | undefined
  /**
   * The budget to use when the request carries no (valid) deadline header. It is this server's
   * own choice, so the default cap does not shorten it; an explicit `maxMs` below it is refused.
   * @default undefined (no deadline)
   */
  readonly defaultMs?: number | undefined
}

/** Options of {@link adoptDeadline}. */
export interface AdoptDeadlineOptions extends DeadlineFromHeadersOptions {
  /**
   * The clock the adopted deadline is measured on.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** The option keys `deadlineFromHeaders` takes (internal: not exported from the package root). */
export const fromHeadersOptions = optionKeys<DeadlineFromHeadersOptions>({
  maxMs: true,
  defaultMs: true,
})
/** The option keys `adoptDeadline` takes (internal: not exported from the package root). */
export const adoptOptions = optionKeys<AdoptDeadlineOptions>({
  maxMs: true,
  defaultMs: true,
  clock: true,
})

/**
 * Reads the caller's remaining budget from request headers: {@link DEADLINE_HEADER} and gRPC's
 * `grpc-timeout` (e.g. `100m`, `2S`), the smaller when both are valid. Returns milliseconds (0 or less means already
 * expired), capped by `maxMs` (by default {@link DEFAULT_MAX_DEADLINE_MS}), or `defaultMs`
 * (possibly undefined) when neither header is valid.
 *
 * @example
 * ```ts
 * import { deadlineFromHeaders } from 'breakwater'
 * deadlineFromHeaders({ 'grpc-timeout': '2S' }) // 2000
 * deadlineFromHeaders({ 'x-breakwater-deadline-ms': '90000' }, { maxMs: 30_000 }) // 30000
 * deadlineFromHeaders({ 'x-breakwater-deadline-ms': '86400000' }) // 300000, the default cap
 * ```
 */
export function deadlineFromHeaders(
  headers: HeadersLike,
  options: DeadlineFromHeadersOptions = {},
): number | undefined {
  checkObject('deadlineFromHeaders.options', options)
  // A misspelt cap (`maxMS`) would let a caller's budget of days through without a word.
  checkKnownOptions('deadlineFromHeaders', options, fromHeadersOptions)
  return budgetFromHeaders(headers, options)
}

// deadlineFromHeaders once its options are known to be its own (adoptDeadline's carry a clock).
function budgetFromHeaders(
  headers: HeadersLike,
  options: DeadlineFromHeadersOptions,
): number | undefined {
  const maxMs = optionalNumber(
    'deadlineFromHeaders.maxMs',
    options.maxMs,
    DEFAULT_MAX_DEADLINE_MS,
    0,
  )
  // A defaultMs above an explicit maxMs is a contradiction in the server's own settings: say so
  // rather than silently use the smaller one.
  const defaultMs = optionalNumber('deadlineFromHeaders.defaultMs', options.defaultMs, undefined, 0)
  if (defaultMs !== undefined && options.maxMs !== undefined && defaultMs > maxMs) {
    throw new InvalidOptionError(
      'deadlineFromHeaders.defaultMs',
      `a number <= maxMs (${maxMs})`,
      defaultMs,
    )
  }
  // Both sent (a hop that speaks gRPC and breakwater): two bounds on one budget, so the tighter
  // holds, as the proxy reads them; otherwise one could give a hop more time than the other.
  const own = smallestHeaderValue(headerOf(headers, DEADLINE_HEADER), parseDeadlineMs)
  const grpc = smallestHeaderValue(headerOf(headers, GRPC_TIMEOUT_HEADER), parseGrpcTimeout)
  const sent = own === undefined ? grpc : grpc === undefined ? own : Math.min(own, grpc)
  return sent === undefined ? defaultMs : Math.min(sent, maxMs)
}

/**
 * Server side: runs `fn` within the budget the caller sent (see {@link deadlineFromHeaders}),
 * so every policy and outbound call inside sees it. Rejects at once with
 * `DeadlineExceededError`, without running `fn`, when the budget is already spent. Without a
 * deadline header (and no `defaultMs`) `fn` runs without a deadline.
 *
 * @example
 * ```ts
 * import { createServer } from 'node:http'
 * import { adoptDeadline } from 'breakwater'
 * createServer((req, res) => {
 *   adoptDeadline(req.headers, async () => 'done', { maxMs: 30_000 }).then(
 *     (body) => res.end(body),
 *     () => res.writeHead(504).end(),
 *   )
 * })
 * ```
 */
export function adoptDeadline<T>(
  headers: HeadersLike,
  fn: () => PromiseLike<T> | T,
  options: AdoptDeadlineOptions = {},
): Promise<T> {
  let ms: number | undefined
  let clock: Clock
  // Every bad option is a rejection (the function returns a promise), the clock's included.
  try {
    checkObject('adoptDeadline.options', options)
    checkKnownOptions('adoptDeadline', options, adoptOptions)
    ms = budgetFromHeaders(headers, options)
    clock = optionalClock('adoptDeadline.clock', options.clock)
  } catch (error) {
    return Promise.reject(error)
  }
  if (ms === undefined) return run(fn)
  if (ms <= 0)
    return Promise.reject(new DeadlineExceededError(clock.now() + ms, { started: false }))
  return withDeadline(ms, fn, { clock })
}

// The header's value as given: one string (repeats joined by node:http or Headers) or Node's
// array; what is not a string is no value.
function headerOf(headers: HeadersLike, name: string): string | readonly string[] | undefined {
  if (typeof headers !== 'object' || headers === null) return undefined
  if (typeof headers.get === 'function') {
    return (headers as { get(name: string): string | null | undefined }).get(name) ?? undefined
  }
  const record = headers as Readonly<Record<string, unknown>>
  let value = record[name]
  if (value === undefined) {
    // Plain objects built by hand may not use lower-case names.
    for (const key of Object.keys(record)) {
      if (key.toLowerCase() === name) {
        value = record[key]
        break
      }
    }
  }
  if (Array.isArray(value)) return value.filter((one): one is string => typeof one === 'string')
  return typeof value === 'string' ? value : undefined
}

/**
 * The smallest budget among the values of a header that may have been sent more than once:
 * node:http and fetch's `Headers` join repeats into `"100, 50"`, Node's header objects may hold
 * an array. Two budgets for one request are two bounds on it, so the tighter holds (as between
 * the deadline header and `grpc-timeout`); reading the joined value as one malformed value
 * would give the request `defaultMs`, longer than either. Malformed values among them are
 * skipped; undefined when none is valid, as for a single malformed value. Internal: the proxy
 * reads its inbound headers with it too.
 */
export function smallestHeaderValue(
  value: string | readonly string[] | undefined,
  parse: (one: string) => number | undefined,
): number | undefined {
  if (value === undefined) return undefined
  const joined = typeof value === 'string' ? value : value.join(',')
  // The usual case, one value, splits nothing.
  if (!joined.includes(',')) return parse(joined)
  let smallest: number | undefined
  for (const one of joined.split(',')) {
    const ms = parse(one)
    if (ms !== undefined && (smallest === undefined || ms < smallest)) smallest = ms
  }
  return smallest
}

/**
 * Parses one deadline header value (an integer of any length, negative allowed, whitespace
 * around it ignored) into milliseconds within ±{@link MAX_DEADLINE_HEADER_MS}, or undefined
 * when it is malformed. Internal: the proxy reads its inbound header with it too.
 */
export function parseDeadlineMs(value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const trimmed = value.trim()
  if (!/^-?\d+$/.test(trimmed)) return undefined
  // More digits than a double holds exactly is still all digits: a huge budget, not garbage
  // (read as garbage, it would give the caller defaultMs, shorter than what it asked for).
  return Math.max(-MAX_DEADLINE_HEADER_MS, Math.min(MAX_DEADLINE_HEADER_MS, Number(trimmed)))
}

const grpcUnitMs: Readonly<Record<string, number>> = {
  H: 3_600_000,
  M: 60_000,
  S: 1_000,
  m: 1,
  u: 0.001,
  n: 0.000_001,
}

/**
 * Parses a gRPC `grpc-timeout` value (1 to 8 digits and a unit: H hours, M minutes,
 * S seconds, m milliseconds, u microseconds, n nanoseconds) into milliseconds.
 * Returns undefined when the value is malformed.
 *
 * @example
 * ```ts
 * import { parseGrpcTimeout } from 'breakwater'
 * parseGrpcTimeout('100m') // 100
 * parseGrpcTimeout('2S') // 2000
 * ```
 */
export function parseGrpcTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const match = /^(\d{1,8})([HMSmun])$/.exec(value.trim())
  if (match === null) return undefined
  return Number(match[1]) * grpcUnitMs[match[2]!]!
}

async function run<T>(fn: () => PromiseLike<T> | T): Promise<T> {
  return await fn()
}
