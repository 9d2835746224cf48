// The HTTP webhook publisher and the signature check for its receivers. undici is a regular
// dependency of breakwater, so nothing here is loaded lazily.
import { createHmac, timingSafeEqual } from 'node:crypto'
import { Pool } from 'undici'
import { type Clock, maxTimerDelayMs, type TimerHandle } from '../core/clock.js'
import { AbortedError, BreakwaterError, InvalidOptionError } from '../core/errors.js'
import { hasLoneSurrogate } from '../core/text.js'
import { checkClock, checkInteger, checkObject, optionKeys } from '../core/validate.js'
import { httpTokenPattern } from '../http/token.js'
import { currentDeadline } from '../policies/deadline.js'
import { pipeline } from '../policies/pipeline.js'
import { type RetryOptions, retry } from '../policies/retry.js'
import { timeout } from '../policies/timeout.js'
import type { Policy } from '../policies/types.js'
import { throwIfAborted } from './common.js'
import type { BrokerErrorCode } from './errors.js'
import { checkKnownBrokerOptions, hideText } from './option-keys.js'
import type { OutgoingMessage, Publisher } from './types.js'

/**
 * The request header carrying the signature, in the style of Stripe's:
 *
 * `Breakwater-Signature: t=1717171717,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd`
 *
 * - `t`: when the request was signed, in Unix seconds (each attempt is signed afresh);
 * - `v1`: lower-case hex HMAC-SHA256, keyed with the shared secret, of the UTF-8 bytes of
 *   `` `${t}.` `` followed by the raw request body, exactly as sent.
 *
 * A receiver recomputes `v1` over the raw body (before any JSON parsing), compares in constant
 * time, and refuses timestamps outside its tolerance (replays). Several `v1` entries may
 * appear; one match is enough. {@link verifyWebhookSignature} does all of this.
 */
export const WEBHOOK_SIGNATURE_HEADER = 'breakwater-signature'

/** The request header carrying the message id (one-message requests), also sent as `Idempotency-Key`. */
export const WEBHOOK_MESSAGE_ID_HEADER = 'breakwater-message-id'

/** Retry settings of a webhook publisher (the clock is the publisher's). */
export type WebhookRetryOptions = Pick<
  RetryOptions,
  'maxAttempts' | 'baseDelayMs' | 'maxDelayMs' | 'factor' | 'jitter' | 'random' | 'maxRetryAfterMs'
>

/** Options of {@link createWebhookPublisher}. */
export interface WebhookPublisherOptions {
  /**
   * The receiver: an absolute `http:` or `https:` URL without credentials or fragment (put
   * credentials in `headers` if the receiver wants more than the signature). Required.
   */
  readonly url: string
  /**
   * The shared signing secret, at least 16 bytes. Load it from the environment or a file,
   * never from command-line arguments or config files; it is never logged. Required.
   */
  readonly secret: string | Uint8Array
  /**
   * `false`: one POST per message, body `{ id, topic, key, headers, payload }`, with the id in
   * `Breakwater-Message-Id` and `Idempotency-Key`. `true`: one POST per `publish()` call, body
   * `{ messages: [...] }` in order; the receiver accepts or refuses the batch as a whole. The
   * W3C trace context headers go out as request headers too (see
   * {@link createWebhookPublisher}); in batch mode only those every message shares.
   * @default false
   */
  readonly batch?: boolean | undefined
  /**
   * Requests in flight at once (one-message mode) and the connection pool's size. Messages
   * with the same key are always sent one after another, in order.
   * @default 8
   */
  readonly concurrency?: number | undefined
  /**
   * How long one attempt (connect, send, response headers and body) may take. The body of an
   * error answer is read for at most 200 ms of it (for the error's message), then dropped.
   * @default 10_000
   */
  readonly attemptTimeoutMs?: number | undefined
  /**
   * Retries of attempts that failed with a 5xx, 408 or 429 answer (honouring `Retry-After`),
   * a timeout or a network error; or `false` for none. Other answers are never retried here.
   * @default { maxAttempts: 3, baseDelayMs: 100, maxDelayMs: 2_000, maxRetryAfterMs: 5_000 }
   */
  readonly retry?: WebhookRetryOptions | false | undefined
  /**
   * Extra request headers (e.g. an API key the receiver wants; a `user-agent` here replaces
   * the default `breakwater-webhook`), each name once whatever its case. May not set `content-type`,
   * `content-length`, `host`, `connection`, `transfer-encoding`, the signature or message-id
   * headers, or `idempotency-key`. A message's own `traceparent`, `tracestate` or `baggage`
   * replaces one given here.
   * @default {}
   */
  readonly headers?: Readonly<Record<string, string>> | undefined
  /**
   * Source of signature timestamps, attempt timeouts and retry delays.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/**
 * A webhook delivery failed (codes shared with the other brokers, so a relay treats it the
 * same way):
 * - `BROKER_UNAVAILABLE` (retryable): a network error, a timeout, a 5xx, 408 or 429 answer.
 * - `BROKER_MISCONFIGURED` (not retryable): an answer saying the endpoint itself is wrong
 *   (3xx, as redirects are not followed, 401, 403, 404, 405, 407): every message fails alike
 *   until the URL or its access is fixed. Not retried within a call; not the message's fault,
 *   so a relay backs off with its breaker open instead of dead-lettering every event.
 * - `BROKER_REJECTED` (not retryable): any other 4xx, such as 400 or 422: the receiver refuses
 *   this message; a relay charges the event and dead-letters it after its `maxAttempts`.
 *
 * @example
 * ```ts
 * import { WebhookError } from 'breakwater/brokers'
 * try { await webhook.publish(batch) }
 * catch (error) { if (error instanceof WebhookError && error.status === 400) console.warn('refused') }
 * ```
 */
export class WebhookError extends BreakwaterError {
  /** Always `'webhook'`, like `BrokerError.broker` for the other adapters. */
  readonly broker = 'webhook' as const
  /** The HTTP status, when the receiver answered. */
  readonly status: number | undefined
  /** The wait asked for with `Retry-After`, in ms, when given. */
  readonly retryAfterMs: number | undefined

  constructor(
    code: BrokerErrorCode,
    message: string,
    options: {
      readonly status?: number
      readonly retryAfterMs?: number
      readonly cause?: unknown
    } = {},
  ) {
    super(code, `webhook: ${message}`, {
      cause: options.cause,
      // As for BrokerError: only an outage or a missing route clears by itself.
      retryable: code === 'BROKER_UNAVAILABLE' || code === 'BROKER_UNROUTABLE',
    })
    this.status = options.status
    this.retryAfterMs = options.retryAfterMs
  }
}

// Failures the publisher's own retry repeats (an outage: network, timeout, 5xx, 408, 429); a
// misconfigured endpoint (3xx, 401, 404...) or a refused message is never repeated in a call.
const retriedHere = new WeakSet<object>()

const forbiddenHeaders = new Set([
  'content-type',
  'content-length',
  'host',
  'connection',
  'transfer-encoding',
  'keep-alive',
  'upgrade',
  'te',
  'trailer',
  'expect',
  WEBHOOK_SIGNATURE_HEADER,
  WEBHOOK_MESSAGE_ID_HEADER,
  'idempotency-key',
])
// What undici accepts as a header value (its headerCharRegex): no control character but tab,
// nothing above U+00FF. It refuses anything else with an error at each request, which would
// look like the endpoint's failure (retryable) rather than the value's.
const headerValuePattern = /^[\t\x20-\x7e\x80-\xff]*$/
const minSecretBytes = 16
const maxErrorBody = 300

function secretBytes(option: string, secret: unknown): Buffer {
  if (typeof secret === 'string') {
    if (Buffer.byteLength(secret) >= minSecretBytes) return Buffer.from(secret, 'utf8')
  } else if (secret instanceof Uint8Array) {
    if (secret.byteLength >= minSecretBytes) return Buffer.from(secret)
  }
  // Never echo a secret back, not even a short one.
  throw new InvalidOptionError(
    option,
    `a secret of at least ${minSecretBytes} bytes (string or Uint8Array)`,
    hideText(secret),
  )
}

function hmacHex(secret: Buffer, timestamp: string, body: string | Uint8Array): string {
  const mac = createHmac('sha256', secret)
  mac.update(`${timestamp}.`, 'utf8')
  mac.update(body)
  return mac.digest('hex')
}

/**
 * Computes the `Breakwater-Signature` header value for `body` signed at `timestampMs` (see
 * {@link WEBHOOK_SIGNATURE_HEADER}): what the publisher sends, for other senders and tests.
 *
 * @example
 * ```ts
 * const header = signWebhookPayload(secret, '{"id":"e1"}', Date.now())
 * // 't=1717171717,v1=5257a8...'
 * ```
 */
export function signWebhookPayload(
  secret: string | Uint8Array,
  body: string | Uint8Array,
  timestampMs: number,
): string {
  const key = secretBytes('secret', secret)
  if (typeof timestampMs !== 'number' || !Number.isFinite(timestampMs) || timestampMs < 0)
    throw new InvalidOptionError('timestampMs', 'epoch milliseconds', timestampMs)
  const t = String(Math.floor(timestampMs / 1000))
  return `t=${t},v1=${hmacHex(key, t, body)}`
}

/** Options of {@link verifyWebhookSignature}. */
export interface VerifyWebhookSignatureOptions {
  /**
   * How far the signature's timestamp may be from now, either way, before the request is
   * refused as a replay (or a badly skewed clock).
   * @default 300_000 (5 minutes)
   */
  readonly toleranceMs?: number | undefined
  /**
   * Source of "now".
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** The outcome of {@link verifyWebhookSignature}. */
export type WebhookVerification =
  | {
      readonly ok: true
      /** When the request was signed (epoch ms, whole seconds). */
      readonly timestampMs: number
    }
  | {
      readonly ok: false
      /**
       * `missing`: no header; `malformed`: not `t=<seconds>,v1=<hex>`; `mismatch`: no `v1`
       * matches the body under any given secret; `stale`: the signature matches but its
       * timestamp is outside the tolerance.
       */
      readonly reason: 'missing' | 'malformed' | 'mismatch' | 'stale'
    }

/** The keys VerifyWebhookSignatureOptions takes (internal: not exported from the package root). */
export const verifyOptions = optionKeys<VerifyWebhookSignatureOptions>({
  toleranceMs: true,
  clock: true,
})

/**
 * Checks a `Breakwater-Signature` header (see {@link WEBHOOK_SIGNATURE_HEADER}) against the raw
 * request body, for receivers: recomputes the HMAC under each secret (pass the old and the new
 * one while rotating), compares in constant time, then checks the timestamp is within
 * `toleranceMs` of now. Verify the bytes as received, before parsing the JSON. An unknown
 * (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * import { verifyWebhookSignature, WEBHOOK_SIGNATURE_HEADER } from 'breakwater/brokers'
 * const result = verifyWebhookSignature(secret, req.headers[WEBHOOK_SIGNATURE_HEADER], rawBody)
 * if (!result.ok) return res.writeHead(401).end(result.reason)
 * ```
 */
export function verifyWebhookSignature(
  secret: string | Uint8Array | readonly (string | Uint8Array)[],
  header: string | readonly string[] | null | undefined,
  body: string | Uint8Array,
  options: VerifyWebhookSignatureOptions = {},
): WebhookVerification {
  checkObject('options', options)
  checkKnownBrokerOptions('options', options, verifyOptions)
  const toleranceMs = checkInteger('toleranceMs', options.toleranceMs ?? 300_000, 0)
  const clock = checkClock('clock', options.clock)
  const secrets = (Array.isArray(secret) ? secret : [secret]).map((s, i) =>
    secretBytes(Array.isArray(secret) ? `secret[${i}]` : 'secret', s),
  )
  if (secrets.length === 0) throw new InvalidOptionError('secret', 'at least one secret', secret)
  if (typeof body !== 'string' && !(body instanceof Uint8Array))
    throw new InvalidOptionError('body', 'the raw body as a string or bytes', body)
  const value = Array.isArray(header) ? header.join(',') : header
  if (typeof value !== 'string' || value.trim() === '') return { ok: false, reason: 'missing' }

  let t: string | undefined
  const candidates: Buffer[] = []
  for (const part of value.split(',')) {
    const eq = part.indexOf('=')
    if (eq <= 0) return { ok: false, reason: 'malformed' }
    const key = part.slice(0, eq).trim()
    const v = part.slice(eq + 1).trim()
    if (key === 't') {
      if (t !== undefined || !/^\d{1,12}$/.test(v)) return { ok: false, reason: 'malformed' }
      t = v
    } else if (key === 'v1') {
      if (!/^[0-9a-f]{64}$/i.test(v)) return { ok: false, reason: 'malformed' }
      candidates.push(Buffer.from(v.toLowerCase(), 'hex'))
    }
    // Other schemes (a future v2) are ignored, so senders can add them first.
  }
  if (t === undefined || candidates.length === 0) return { ok: false, reason: 'malformed' }

  let matched = false
  for (const key of secrets) {
    const expected = Buffer.from(hmacHex(key, t, body), 'hex')
    // Every candidate is compared, match or not, so timing says nothing about which matched.
    for (const candidate of candidates) {
      if (timingSafeEqual(expected, candidate)) matched = true
    }
  }
  if (!matched) return { ok: false, reason: 'mismatch' }
  const timestampMs = Number(t) * 1000
  if (Math.abs(clock.now() - timestampMs) > toleranceMs) return { ok: false, reason: 'stale' }
  return { ok: true, timestampMs }
}

const decoder = new TextDecoder('utf-8', { fatal: true })

// The payload as JSON when it is JSON text (the outbox stores JSON), else as base64 bytes, so
// a receiver can always tell which it got.
function payloadField(payload: Uint8Array | string): string {
  let text: string | undefined
  if (typeof payload === 'string') text = payload
  else {
    try {
      text = decoder.decode(payload)
    } catch {
      text = undefined
    }
  }
  if (text !== undefined && text.trim() !== '') {
    try {
      JSON.parse(text)
      return `"payload":${text.trim()}`
    } catch {
      // Not JSON: base64 below.
    }
  }
  const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload)
  return `"payloadBase64":${JSON.stringify(bytes.toString('base64'))}`
}

/** The JSON body of one message in a webhook request. */
export function webhookMessageJson(message: OutgoingMessage): string {
  return `{"id":${JSON.stringify(message.id)},"topic":${JSON.stringify(message.topic)},"key":${JSON.stringify(message.key)},"headers":${JSON.stringify(message.headers)},${payloadField(message.payload)}}`
}

// The W3C trace context headers (Trace Context and Baggage) the outbox copies into a message's
// headers. They also go out as request headers: an HTTP receiver's OpenTelemetry instrumentation
// reads them there, not in the body, and would otherwise start a new trace.
const traceHeaderNames = ['traceparent', 'tracestate', 'baggage'] as const
// A W3C traceparent: version, trace id, parent id, flags; a later version may append fields.
const traceparentPattern = /^([0-9a-f]{2})-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[\x20-\x7e]*)?$/

/**
 * The trace context request headers of a request carrying `messages`: each of `traceparent`,
 * `tracestate` and `baggage` (named in any case) that every message carries with the same
 * value, and that can be a header value. A traceparent that is not W3C's is left out, and its
 * tracestate with it (the receiver would discard both); every value stays in the body.
 */
function webhookTraceHeaders(messages: readonly OutgoingMessage[]): Record<string, string> {
  const common: Record<string, string> = {}
  for (const name of traceHeaderNames) {
    let value: string | undefined
    for (const [i, message] of messages.entries()) {
      const own = headerNamed(message.headers, name)
      if (own === undefined || (i > 0 && own !== value)) {
        value = undefined
        break
      }
      value = own
    }
    if (value !== undefined && headerValuePattern.test(value)) common[name] = value
  }
  const parent =
    common.traceparent === undefined ? null : traceparentPattern.exec(common.traceparent)
  if (parent === null || parent[1] === 'ff' || (parent[1] === '00' && parent[2] !== undefined)) {
    delete common.traceparent
    delete common.tracestate
  }
  return common
}

// The value of the header `name` (lower case) in any case; undefined when absent, or when two
// spellings disagree (which one the producer meant cannot be told).
function headerNamed(headers: Readonly<Record<string, string>>, name: string): string | undefined {
  let found: string | undefined
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() !== name) continue
    if (found !== undefined && found !== value) return undefined
    found = value
  }
  return found
}

/** What makes `message` not an {@link OutgoingMessage} (a field of the wrong type), if anything. */
function shapeProblem(message: unknown): string | undefined {
  if (typeof message !== 'object' || message === null) return ' is not a message object'
  const fields = message as Record<string, unknown>
  for (const field of ['id', 'topic', 'key'] as const) {
    if (typeof fields[field] !== 'string') return `.${field} is not a string`
  }
  const headers = fields.headers
  if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) {
    return '.headers is not a record of strings'
  }
  for (const [name, value] of Object.entries(headers)) {
    if (typeof value !== 'string') return `.headers.${name} is not a string`
  }
  const payload = fields.payload
  if (typeof payload !== 'string' && !(payload instanceof Uint8Array)) {
    return '.payload is neither a string nor bytes'
  }
  return undefined
}

function retryAfterMsFrom(value: string | string[] | undefined, nowMs: number): number | undefined {
  const text = Array.isArray(value) ? value[0] : value
  if (text === undefined || text.trim() === '') return undefined
  if (/^\d+$/.test(text.trim())) return Number(text.trim()) * 1000
  const at = Date.parse(text)
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs)
}

function isAbortLike(error: unknown): boolean {
  if (BreakwaterError.is(error)) return error.code === 'ABORTED'
  return error instanceof Error && error.name === 'AbortError'
}

/** The keys WebhookPublisherOptions takes (internal: not exported from the package root). */
export const webhookOptions = optionKeys<WebhookPublisherOptions>({
  url: true,
  secret: true,
  batch: true,
  concurrency: true,
  attemptTimeoutMs: true,
  retry: true,
  headers: true,
  clock: true,
})

// The publisher sets clock and shouldRetry itself: given here, they are refused as unknown
// rather than silently replaced.
/** The keys WebhookRetryOptions takes (internal: not exported from the package root). */
export const webhookRetryOptions = optionKeys<WebhookRetryOptions>({
  maxAttempts: true,
  baseDelayMs: true,
  maxDelayMs: true,
  factor: true,
  jitter: true,
  random: true,
  maxRetryAfterMs: true,
})

/**
 * The retry policy of `options`, a bad setting refused under the path the caller wrote
 * (`webhook.retry.maxAttempts`) rather than the policy's own name for it (`retry.maxAttempts`),
 * as a misspelt or null one is.
 */
function webhookRetry(options: RetryOptions): Policy {
  try {
    return retry(options)
  } catch (error) {
    if (error instanceof InvalidOptionError && error.option.startsWith('retry.'))
      throw new InvalidOptionError(`webhook.${error.option}`, error.expected, error.value)
    throw error
  }
}

class WebhookPublisher implements Publisher {
  readonly #url: URL
  readonly #origin: string
  readonly #path: string
  readonly #secret: Buffer
  readonly #batch: boolean
  readonly #concurrency: number
  readonly #headers: Readonly<Record<string, string>>
  readonly #clock: Clock
  readonly #policy: Policy
  readonly #pool: Pool
  #closed = false

  constructor(options: WebhookPublisherOptions) {
    checkObject('webhook', options)
    // A misspelt option was dropped without a word and its default used; a misspelt secret
    // must not be quoted in the refusal.
    checkKnownBrokerOptions('webhook', options, webhookOptions)
    let url: URL
    try {
      url = new URL(options.url)
    } catch {
      throw new InvalidOptionError(
        'webhook.url',
        'an absolute http: or https: URL',
        '[invalid URL]',
      )
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      throw new InvalidOptionError('webhook.url', 'an http: or https: URL', url.protocol)
    // Port 0 parses, but nothing listens there: every delivery would fail to connect.
    if (url.port === '0')
      throw new InvalidOptionError(
        'webhook.url',
        'an http: or https: URL whose port is from 1 to 65535',
        url.origin,
      )
    if (url.username !== '' || url.password !== '')
      throw new InvalidOptionError(
        'webhook.url',
        'a URL without credentials (use headers or the signature)',
        `${url.protocol}//***@${url.host}`,
      )
    if (url.hash !== '')
      throw new InvalidOptionError('webhook.url', 'a URL without a fragment', url.origin)
    this.#url = url
    this.#origin = url.origin
    this.#path = `${url.pathname}${url.search}`
    this.#secret = secretBytes('webhook.secret', options.secret)
    if (options.batch !== undefined && typeof options.batch !== 'boolean')
      throw new InvalidOptionError('webhook.batch', 'a boolean', options.batch)
    this.#batch = options.batch ?? false
    this.#concurrency = checkInteger('webhook.concurrency', options.concurrency ?? 8, 1, 1_000)
    const attemptTimeoutMs = checkInteger(
      'webhook.attemptTimeoutMs',
      options.attemptTimeoutMs ?? 10_000,
      1,
      maxTimerDelayMs,
    )
    const headers = checkObject('webhook.headers', options.headers ?? {})
    const extra: Record<string, string> = {}
    for (const [name, value] of Object.entries(headers)) {
      const lower = name.toLowerCase()
      if (!httpTokenPattern.test(name) || forbiddenHeaders.has(lower))
        throw new InvalidOptionError(
          `webhook.headers.${name}`,
          'a header the publisher does not set itself',
          name,
        )
      if (typeof value !== 'string' || !headerValuePattern.test(value))
        throw new InvalidOptionError(
          `webhook.headers.${name}`,
          'a single-line string of Latin-1 characters without control characters',
          '[hidden]',
        )
      // Two spellings of one name (X-Api-Key, x-api-key) are one HTTP header: only one of the
      // values could be sent, and which one would depend on the object's key order.
      if (Object.hasOwn(extra, lower))
        throw new InvalidOptionError(
          `webhook.headers.${name}`,
          'a header named once (names are case-insensitive)',
          name,
        )
      extra[lower] = value
    }
    this.#headers = extra
    this.#clock = checkClock('webhook.clock', options.clock)
    const attempt = timeout(attemptTimeoutMs, { clock: this.#clock })
    if (options.retry === false) {
      this.#policy = attempt
    } else {
      const retryOptions = checkObject('webhook.retry', options.retry ?? {}) as WebhookRetryOptions
      checkKnownBrokerOptions('webhook.retry', retryOptions, webhookRetryOptions)
      this.#policy = pipeline(
        webhookRetry({
          maxAttempts: 3,
          baseDelayMs: 100,
          maxDelayMs: 2_000,
          maxRetryAfterMs: 5_000,
          ...retryOptions,
          clock: this.#clock,
          shouldRetry: (error) =>
            (typeof error === 'object' && error !== null && retriedHere.has(error)) ||
            (BreakwaterError.is(error) && error.code === 'TIMEOUT'),
        }),
        attempt,
      )
    }
    // undici's own timers are a backstop; the attempt timeout above (on the clock) is the rule.
    this.#pool = new Pool(this.#origin, {
      connections: this.#concurrency,
      headersTimeout: attemptTimeoutMs + 1_000,
      bodyTimeout: attemptTimeoutMs + 1_000,
    })
  }

  async publish(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void> {
    // Aborted first, before any other check, as the other adapters' publish (an empty batch too).
    throwIfAborted(signal)
    if (this.#closed) throw new WebhookError('BROKER_UNAVAILABLE', 'the publisher is closed')
    if (!Array.isArray(messages))
      throw new InvalidOptionError('messages', 'an array of messages', messages)
    if (messages.length === 0) return
    this.#checkSendable(messages)
    if (this.#batch) {
      const body = `{"messages":[${messages.map(webhookMessageJson).join(',')}]}`
      await this.#deliver(body, undefined, webhookTraceHeaders(messages), signal)
      return
    }
    await this.#publishEach(messages, signal)
  }

  // Every message is checked before the first request, so one that can never be sent refuses
  // the whole call with nothing of it delivered (in one-message mode other keys' messages
  // would otherwise go out first).
  #checkSendable(messages: readonly OutgoingMessage[]): void {
    messages.forEach((message, i) => {
      // The body is built by hand: a number id would go out as a JSON number, an undefined key
      // as invalid JSON (`"key":undefined`), each read differently by the receiver, or refused
      // by it as a 400 that names no field. Refused here, naming the field, like every broker.
      const shape = shapeProblem(message)
      if (shape !== undefined) throw new WebhookError('BROKER_REJECTED', `messages[${i}]${shape}`)
      // The id goes out as a header: one undici would refuse can never be sent, so it is the
      // message's fault (not retried, dead-lettered by a relay), not the endpoint's.
      if (!this.#batch && !headerValuePattern.test(message.id)) {
        throw new WebhookError(
          'BROKER_REJECTED',
          `messages[${i}]: message id ${JSON.stringify(message.id)} cannot be sent as the ${WEBHOOK_MESSAGE_ID_HEADER} header (control characters or characters above U+00FF)`,
        )
      }
      // A JSON payload goes into the body as it is: half of a surrogate pair there has no UTF-8
      // form and would arrive as U+FFFD (ids, keys and headers are escaped by JSON.stringify).
      if (typeof message.payload === 'string' && hasLoneSurrogate(message.payload)) {
        throw new WebhookError(
          'BROKER_REJECTED',
          `messages[${i}].payload holds half of a surrogate pair, which has no UTF-8 form`,
        )
      }
    })
  }

  // One request per message: keys run side by side (up to `concurrency`), a key's messages one
  // after another; after a failure the key's later messages are not sent (order).
  async #publishEach(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void> {
    const lanes = new Map<
      string,
      Array<{ readonly index: number; readonly message: OutgoingMessage }>
    >()
    messages.forEach((message, index) => {
      let lane = lanes.get(message.key)
      if (lane === undefined) {
        lane = []
        lanes.set(message.key, lane)
      }
      lane.push({ index, message })
    })
    const queue = [...lanes.values()]
    let firstFailure: { index: number; error: unknown } | undefined
    const worker = async (): Promise<void> => {
      for (let lane = queue.shift(); lane !== undefined; lane = queue.shift()) {
        for (const { index, message } of lane) {
          if (signal?.aborted) return
          try {
            await this.#deliver(
              webhookMessageJson(message),
              message.id,
              webhookTraceHeaders([message]),
              signal,
            )
          } catch (error) {
            if (firstFailure === undefined || index < firstFailure.index)
              firstFailure = { index, error }
            break
          }
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(this.#concurrency, queue.length) }, worker))
    if (firstFailure !== undefined) throw firstFailure.error
    if (signal?.aborted) throw new AbortedError(signal.reason)
  }

  async #deliver(
    body: string,
    messageId: string | undefined,
    trace: Readonly<Record<string, string>>,
    signal?: AbortSignal,
  ): Promise<void> {
    try {
      await this.#policy.execute(
        ({ signal: attemptSignal }) => this.#attempt(body, messageId, trace, attemptSignal),
        signal,
      )
    } catch (error) {
      if (error instanceof WebhookError || isAbortLike(error)) throw error
      // A timeout (or anything else unexpected) is the endpoint's failure to answer.
      throw new WebhookError(
        'BROKER_UNAVAILABLE',
        `POST ${this.#origin} failed: ${messageOf(error)}`,
        {
          cause: error,
        },
      )
    }
  }

  async #attempt(
    body: string,
    messageId: string | undefined,
    trace: Readonly<Record<string, string>>,
    signal: AbortSignal,
  ): Promise<void> {
    const t = String(Math.floor(this.#clock.now() / 1000))
    const headers: Record<string, string> = {
      // The default only: a User-Agent given in the headers option is the caller's to set.
      'user-agent': 'breakwater-webhook',
      ...this.#headers,
      // The message's own trace is more specific than a fixed one in the headers option.
      ...trace,
      'content-type': 'application/json',
      [WEBHOOK_SIGNATURE_HEADER]: `t=${t},v1=${hmacHex(this.#secret, t, body)}`,
    }
    if (messageId !== undefined) {
      headers[WEBHOOK_MESSAGE_ID_HEADER] = messageId
      headers['idempotency-key'] = messageId
    }
    let response: Awaited<ReturnType<Pool['request']>>
    try {
      response = await this.#pool.request({
        origin: this.#origin,
        path: this.#path,
        method: 'POST',
        headers,
        body,
        signal,
      })
    } catch (error) {
      if (signal.aborted || isAbortLike(error)) throw error
      const failure = new WebhookError(
        'BROKER_UNAVAILABLE',
        `POST ${this.#origin} failed: ${messageOf(error)}`,
        {
          cause: error,
        },
      )
      retriedHere.add(failure)
      throw failure
    }
    const status = response.statusCode
    if (status >= 200 && status < 300) {
      await response.body.dump().catch(() => {})
      return
    }
    const snippet = await readSnippet(response.body, this.#clock)
    const detail = `POST ${this.#origin} answered ${status}${snippet === '' ? '' : `: ${snippet}`}`
    if (status === 408 || status === 429 || status >= 500) {
      const retryAfterMs = retryAfterMsFrom(response.headers['retry-after'], this.#clock.now())
      const failure = new WebhookError('BROKER_UNAVAILABLE', beyondDeadline(detail, retryAfterMs), {
        status,
        ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
      })
      retriedHere.add(failure)
      throw failure
    }
    if (status >= 400 && ![401, 403, 404, 405, 407].includes(status))
      throw new WebhookError('BROKER_REJECTED', detail, { status })
    // 3xx (redirects are not followed), 401, 403, 404, 405, 407: the URL or its access is
    // wrong, for every message alike, until someone fixes the setup. Not the message's fault
    // (a relay must not dead-letter it) and not an outage that clears by itself, so it is not
    // retried here either.
    throw new WebhookError(
      'BROKER_MISCONFIGURED',
      `${detail} (check the webhook URL and its access)`,
      { status },
    )
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#pool.close()
  }

  toString(): string {
    return `WebhookPublisher(${this.#url.origin})`
  }
}

// The error body is only for the message: it is read for at most this long (on the
// publisher's clock) after the status came. A receiver that sends its head and then the body
// slowly (a byte at a time) held the attempt until the attempt timeout cut it, and the answer
// was reported as a timeout without its status.
const errorBodyWaitMs = 200

// Up to maxErrorBody bytes of an error answer's body: what arrives within errorBodyWaitMs (or
// until the body ends). The body is then dropped: the connection is not reused for a body
// still coming, which is cheaper than waiting for it.
async function readSnippet(
  body: AsyncIterable<Buffer | Uint8Array> & { destroy(): unknown },
  clock: Clock,
): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  let timer: TimerHandle | undefined
  const timeUp = new Promise<'time-up'>((resolve) => {
    timer = clock.setTimeout(() => resolve('time-up'), errorBodyWaitMs)
  })
  const iterator = body[Symbol.asyncIterator]()
  try {
    while (size < maxErrorBody) {
      // A read left pending when the time is up ends (or fails) with the destroy below; the
      // race has handled it either way.
      const next = await Promise.race([iterator.next(), timeUp])
      if (next === 'time-up' || next.done === true) break
      chunks.push(Buffer.from(next.value))
      size += next.value.byteLength
    }
  } catch {
    // The body is only for the message.
  } finally {
    clock.clearTimeout(timer)
    body.destroy()
  }
  const text = Buffer.concat(chunks).toString('utf8').slice(0, maxErrorBody)
  return text.replace(/\s+/g, ' ').trim()
}

// The detail of a retryable answer whose Retry-After reaches past the deadline of the call (a
// relay's publish timeout, a caller's withDeadline). The retry then gives up at once rather
// than sleep into the deadline (unless maxRetryAfterMs shortens the wait to fit), and without
// this the failure, milliseconds after the call began, said nothing of why.
function beyondDeadline(detail: string, retryAfterMs: number | undefined): string {
  const deadline = currentDeadline()
  if (retryAfterMs === undefined || deadline === undefined) return detail
  const leftMs = deadline.remainingMs()
  if (retryAfterMs < leftMs) return detail
  return `${detail}; its Retry-After of ${retryAfterMs} ms is beyond the deadline (${Math.round(leftMs)} ms left)`
}

function messageOf(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code
    return typeof code === 'string' && !error.message.includes(code)
      ? `${error.message} (${code})`
      : error.message
  }
  return String(error)
}

/**
 * Creates a publisher that POSTs messages as JSON to an HTTP endpoint, signed with
 * HMAC-SHA256 (see {@link WEBHOOK_SIGNATURE_HEADER} for the header format, and
 * {@link verifyWebhookSignature} for the receiver's side). `publish()` resolves once the
 * receiver answered 2xx for every message (or the batch). Failed attempts are retried on 5xx,
 * 408, 429 (honouring `Retry-After`), timeouts and network errors, each attempt signed afresh;
 * 3xx and 4xx answers are not retried (see {@link WebhookError}). Redirects are not followed.
 *
 * The receiver may see a message more than once (a lost answer, a relay that re-publishes
 * after a crash): dedupe on the message id (`Breakwater-Message-Id`, also sent as
 * `Idempotency-Key`), e.g. with breakwater's inbox or idempotency middleware.
 *
 * A message's W3C trace context headers (`traceparent`, `tracestate`, `baggage`: the outbox
 * copies the producer's OpenTelemetry context into them) are sent as request headers as well
 * as in the body, so a receiver with standard OpenTelemetry HTTP instrumentation continues the
 * producer's trace instead of starting a new one. In batch mode a request carries them only
 * when every message of the batch has the same value (two traces in one request are neither
 * the request's). A `traceparent` that is not a W3C one is not sent as a header, nor its
 * `tracestate`; every value stays in the body as it was.
 *
 * An unknown (misspelt) option, top-level or in `retry`, is refused with `InvalidOptionError`
 * (`INVALID_OPTION`) naming it (`webhook.retry.maxAttemps`), its value hidden when it is text
 * or bytes.
 *
 * @example
 * ```ts
 * import { createWebhookPublisher } from 'breakwater/brokers'
 * const webhook = createWebhookPublisher({
 *   url: 'https://billing.example.com/hooks/orders',
 *   secret: process.env.BREAKWATER_WEBHOOK_SECRET ?? '',
 * })
 * await webhook.publish([{ id: 'e1', topic: 'orders', key: 'order-7', payload: '{"total":12}', headers: {} }])
 * await webhook.close()
 * ```
 */
export function createWebhookPublisher(options: WebhookPublisherOptions): Publisher {
  return new WebhookPublisher(options)
}
