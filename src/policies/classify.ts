import { BreakwaterError } from '../core/errors.js'

/**
 * How a failure should be treated:
 * - `transient`: worth retrying and counts against the downstream's health (timeouts, refused or
 *   reset connections, HTTP 408/429/502/503/504, a database's deadlock, serialization failure or
 *   lock held elsewhere: PostgreSQL 40001, 40P01, 55P03, 53300, 57P01, 57P03; a cancelled
 *   statement or ended session: 57014, 25P03, 57P02, class 08 and pg's "Connection terminated
 *   unexpectedly"; SQLite `SQLITE_BUSY*`/`SQLITE_LOCKED*`);
 * - `permanent`: the request itself is wrong (other 4xx, validation, caller abort); never retried,
 *   never held against the downstream;
 * - `unknown`: anything else (a plain `Error` from user code). Not retried, because retrying
 *   something we cannot classify may repeat a side effect, but counted by circuit breakers,
 *   because a downstream that keeps throwing is unhealthy whatever the reason. A database that
 *   cannot take the write (SQLite `SQLITE_FULL`, `SQLITE_READONLY*`, `SQLITE_IOERR*`) is here
 *   too: it stays so for longer than a backoff, and retrying would bury its cause under later
 *   errors; a caller who would rather wait for space to be freed retries it with its own
 *   `shouldRetry`.
 */
export type FailureKind = 'transient' | 'permanent' | 'unknown'

/** A classifier maps any thrown value to a {@link FailureKind}. Users may supply their own. */
export type Classifier = (error: unknown) => FailureKind

const transientCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ECONNABORTED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  // undici's own codes for the same conditions
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  // Databases: the statement's transaction was rolled back because of other transactions, not
  // because of anything in it, so running it again can succeed. PostgreSQL SQLSTATEs (pg puts
  // them in `code`): serialization failure, deadlock, a NOWAIT lock not available, too many
  // connections, the server starting up or shutting down.
  '40001',
  '40P01',
  '55P03',
  '53300',
  '57P01',
  '57P03',
  // The statement was cancelled (statement_timeout, a cancel request), the server ended the
  // session (idle_in_transaction_session_timeout, a crash of another backend) or the
  // connection failed (class 08): running it again can succeed. As on a reset connection, a
  // COMMIT cut off this way may have been applied: retry only what is safe to repeat.
  '57014',
  '25P03',
  '57P02',
  '08000',
  '08001',
  '08003',
  '08004',
  '08006',
  // SQLite (better-sqlite3's `code`): another connection holds the lock the statement needs.
  'SQLITE_BUSY',
  'SQLITE_BUSY_SNAPSHOT',
  'SQLITE_BUSY_RECOVERY',
  'SQLITE_BUSY_TIMEOUT',
  'SQLITE_LOCKED',
  'SQLITE_LOCKED_SHAREDCACHE',
])

// pg's messages, fixed in its source, for a connection lost without an error from the server:
// the socket closed under a statement, a statement sent after the client already saw its
// connection fail (which of the two a statement gets right after the server ended the session
// depends on whether pg has read the socket's end yet), a connect that ran out of time, a
// statement past query_timeout (its connection is destroyed). 'Connection terminated' alone
// is the client's own end(), not a failure of the server.
const pgConnectionLost = new Set<unknown>([
  'Connection terminated unexpectedly',
  'Client has encountered a connection error and is not queryable',
  'Connection terminated due to connection timeout',
  'Query read timeout',
])

/** True for the HTTP statuses the seed calls transient: 408, 429, 502, 503, 504. */
export function isTransientStatus(status: number): boolean {
  return status === 408 || status === 429 || status === 502 || status === 503 || status === 504
}

/**
 * The shared classifier used by retry, circuit breaker, HTTP client and proxy.
 *
 * Reads, in order: breakwater errors (their `retryable` flag; caller aborts and invalid
 * options are permanent), an HTTP `status`/`statusCode` property, a Node or undici error
 * `code`, and fetch's `TypeError('fetch failed')` whose `cause` is classified in turn.
 *
 * @example
 * ```ts
 * import { classifyFailure } from 'breakwater'
 * classifyFailure(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })) // 'transient'
 * ```
 */
export function classifyFailure(error: unknown): FailureKind {
  return classifyDepth(error, 0)
}

function classifyDepth(error: unknown, depth: number): FailureKind {
  if (typeof error !== 'object' || error === null) return 'unknown'
  if (BreakwaterError.is(error)) {
    if (error.retryable) return 'transient'
    if (error.code === 'HTTP_STATUS') return statusKind(error)
    if (error.code === 'ABORTED' || error.code === 'INVALID_OPTION') return 'permanent'
    return 'unknown'
  }
  const withStatus = statusKind(error)
  if (withStatus !== 'unknown') return withStatus
  const code = (error as { code?: unknown }).code
  if (typeof code === 'string' && transientCodes.has(code)) return 'transient'
  const name = (error as { name?: unknown }).name
  if (name === 'TimeoutError') return 'transient'
  // pg reports a connection the server closed (a terminated backend, a restart) and its own
  // query_timeout with no code: the same failures as ECONNRESET and ETIMEDOUT.
  if (typeof code !== 'string' && pgConnectionLost.has((error as { message?: unknown }).message))
    return 'transient'
  if (name === 'AbortError') return 'permanent'
  const cause = (error as { cause?: unknown }).cause
  // fetch() reports every network failure as TypeError('fetch failed') with the real error as cause.
  if (cause !== undefined && depth < 4) return classifyDepth(cause, depth + 1)
  return 'unknown'
}

function statusKind(error: object): FailureKind {
  const raw =
    (error as { status?: unknown }).status ?? (error as { statusCode?: unknown }).statusCode
  if (typeof raw !== 'number') return 'unknown'
  if (isTransientStatus(raw)) return 'transient'
  if (raw >= 400 && raw < 500) return 'permanent'
  // Other 5xx (500, 501, ...) are server faults that are not known to be temporary.
  return 'unknown'
}

/** True when {@link classifyFailure} says `transient`: the default `shouldRetry` of retry. */
export function isTransientFailure(error: unknown): boolean {
  return classifyFailure(error) === 'transient'
}

/**
 * Reads a server-requested wait from an error: a numeric `retryAfterMs` property, or a
 * `Retry-After` header (delta-seconds or HTTP-date) in a `headers` property (plain object,
 * its names matched in any case, or anything with `get()` like `Headers`). Returns
 * milliseconds from `nowMs`, or undefined.
 */
export function retryAfterMsOf(error: unknown, nowMs: number): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined
  const direct = (error as { retryAfterMs?: unknown }).retryAfterMs
  if (typeof direct === 'number' && direct >= 0) return direct
  const headers = (error as { headers?: unknown }).headers
  if (typeof headers !== 'object' || headers === null) return undefined
  const value =
    typeof (headers as { get?: unknown }).get === 'function'
      ? (headers as { get(name: string): string | null }).get('retry-after')
      : plainHeader(headers as Record<string, unknown>, 'retry-after')
  return parseRetryAfter(Array.isArray(value) ? value[0] : value, nowMs)
}

// Node lower-cases the names of IncomingHttpHeaders, but an object built by hand (or by a
// client that keeps the server's case) may say `Retry-After`: names are case-insensitive.
function plainHeader(headers: Record<string, unknown>, lowerName: string): unknown {
  const exact = headers[lowerName]
  if (exact !== undefined) return exact
  for (const key of Object.keys(headers)) {
    if (key.toLowerCase() === lowerName) return headers[key]
  }
  return undefined
}

// RFC 9110 §5.6.7's three HTTP-date forms, each always in GMT: IMF-fixdate
// (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
// (`Sun Nov  6 08:49:37 1994`, no zone named). Parsed here rather than by Date.parse, which reads
// a date naming no zone in the process's local time zone (asctime was off by the host's UTC
// offset) and takes many other strings after a day name ('Mon 5', a PST or +0200 date) for
// dates. Names in any case, runs of spaces taken as one: the RFC asks recipients to be robust.
const month = '(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)'
const time = '(\\d{2}):(\\d{2}):(\\d{2})'
const imfFixdate = new RegExp(
  `^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), +(\\d{2}) +${month} +(\\d{4}) +${time} +GMT$`,
  'i',
)
const rfc850Date = new RegExp(
  `^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), +(\\d{2})-${month}-(\\d{2}) +${time} +GMT$`,
  'i',
)
const asctimeDate = new RegExp(
  `^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +${month} +(\\d{1,2}) +${time} +(\\d{4})$`,
  'i',
)
const monthIndex: Readonly<Record<string, number>> = {
  jan: 0,
  feb: 1,
  mar: 2,
  apr: 3,
  may: 4,
  jun: 5,
  jul: 6,
  aug: 7,
  sep: 8,
  oct: 9,
  nov: 10,
  dec: 11,
}

/**
 * Parses a `Retry-After` value into milliseconds from `nowMs`: delta-seconds, or an HTTP-date in
 * one of its three forms (IMF-fixdate, RFC 850, asctime), read as GMT whatever the host's time
 * zone. Anything else is undefined (no hint), never "retry at once".
 *
 * @example
 * ```ts
 * import { parseRetryAfter } from 'breakwater'
 * parseRetryAfter('120', Date.now()) // 120000
 * parseRetryAfter('Sun Nov  6 08:49:37 1994', Date.parse('Sun, 06 Nov 1994 08:49:00 GMT')) // 37000
 * ```
 */
export function parseRetryAfter(value: unknown, nowMs: number): number | undefined {
  if (typeof value !== 'string' || value.trim() === '') return undefined
  const trimmed = value.trim()
  // Seconds; an absurd count (a hostile or broken server) still gives a finite wait.
  if (/^\d+$/.test(trimmed)) return Math.min(Number(trimmed) * 1000, Number.MAX_SAFE_INTEGER)
  // Otherwise only an HTTP-date: anything else reads as no hint, not as "retry at once".
  const at = parseHttpDate(trimmed, nowMs)
  return at === undefined ? undefined : Math.max(0, at - nowMs)
}

// Epoch milliseconds of an HTTP-date in one of its three forms, else undefined.
function parseHttpDate(value: string, nowMs: number): number | undefined {
  let m = imfFixdate.exec(value)
  if (m !== null) return utc(Number(m[3]), m[2]!, m[1]!, m[4]!, m[5]!, m[6]!)
  m = asctimeDate.exec(value)
  if (m !== null) return utc(Number(m[6]), m[1]!, m[2]!, m[3]!, m[4]!, m[5]!)
  m = rfc850Date.exec(value)
  if (m === null) return undefined
  // A two-digit year more than 50 years ahead is the latest past year with those digits.
  const nowYear = new Date(nowMs).getUTCFullYear()
  let year = nowYear - (nowYear % 100) + Number(m[3])
  if (year > nowYear + 50) year -= 100
  return utc(year, m[2]!, m[1]!, m[4]!, m[5]!, m[6]!)
}

// The instant named, or undefined for a date that does not exist (31 Feb, 25:00:00); second 60
// (a leap second) is taken as the next minute's first.
function utc(
  year: number,
  monthName: string,
  day: string,
  hours: string,
  minutes: string,
  seconds: string,
): number | undefined {
  const monthNumber = monthIndex[monthName.toLowerCase()]!
  const d = Number(day)
  const h = Number(hours)
  const min = Number(minutes)
  const s = Number(seconds)
  // Day 0 of the next month is the last of this one: 31 Feb is no date (Date.UTC would roll it
  // over into March).
  const daysInMonth = new Date(Date.UTC(year, monthNumber + 1, 0)).getUTCDate()
  if (d < 1 || d > daysInMonth || h > 23 || min > 59 || s > 60) return undefined
  return Date.UTC(year, monthNumber, d, h, min, s)
}
