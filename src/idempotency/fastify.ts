import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import { InvalidOptionError } from '../core/errors.js'
import { checkFunction, checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import { attachContext } from './context-registry.js'
import { computedString, type Idempotency, type IdempotentExecution } from './core.js'
import {
  IdempotencyBodyUnavailableError,
  IdempotencyInProgressError,
  IdempotencyResponseUnsupportedError,
} from './errors.js'
import { parsedBodyBytes } from './fingerprint.js'
import { answerOrDestroy, leaseLostAnswer, readBodyWithinLease } from './lease-lost.js'
import { disconnectSignal, framedWithoutBody, nodeHeaderRepeated } from './node-response.js'
import type { IdempotencyResponse } from './types.js'

/** The parts of a Fastify request the plugin reads (any Fastify 5 `FastifyRequest`). */
export interface FastifyLikeRequest {
  readonly method: string
  readonly url: string
  readonly body: unknown
  readonly headers: IncomingHttpHeaders
  readonly raw: IncomingMessage
}

/** The parts of a Fastify reply the plugin uses (any Fastify 5 `FastifyReply`). */
export interface FastifyLikeReply {
  readonly statusCode: number
  readonly raw: ServerResponse
  /** Whether the response was sent or the reply hijacked. */
  readonly sent: boolean
  code(statusCode: number): unknown
  header(name: string, value: unknown): unknown
  getHeaders(): Record<string, unknown>
  removeHeader(name: string): unknown
  send(payload?: unknown): unknown
  /** Fastify's; refused while a keyed handler runs (see guardRawReply). */
  hijack?(): unknown
}

/** The parts of a Fastify instance the plugin uses. */
export interface FastifyLikeInstance {
  // Typed loosely on purpose: Fastify's own overloads of addHook are assignable to it.
  addHook: (...args: never[]) => unknown
}

/** A Fastify plugin: `await app.register(fastifyIdempotency(idempotency))`. */
export type FastifyIdempotencyPlugin = (instance: FastifyLikeInstance) => Promise<void>

/** Options of {@link fastifyIdempotency}. */
export interface FastifyIdempotencyOptions {
  /**
   * Computes the scope from the Fastify request (e.g. `request.user.tenantId`), overriding the
   * core's `scope` option.
   * @default the core's `scope` option
   */
  readonly scope?: ((request: FastifyLikeRequest) => string | Promise<string>) | undefined
}

/** The keys FastifyIdempotencyOptions takes (internal: not exported from the package root). */
export const fastifyOptions = optionKeys<FastifyIdempotencyOptions>({ scope: true })

// 'executing': the handler runs (its lease running out answers the client from the listener);
// `sending` once it called reply.send, whose payload has not reached this plugin's onSend yet
// (preSerialization hooks, or onSend hooks registered before the plugin, still run).
// 'recording': onSend has the handler's response (its lease running out stops reading it).
// 'lost': the lease ran out while the handler's send was under way: that send carries `answer`.
// 'answered': the lease ran out while the handler ran, and the plugin sent `answer` itself.
// 'sent': onSend let the response of the handler's send through (recorded, or a 409 in its
// place): it is on its way through the hooks after this plugin's, then to the socket.
// `earlier`: the headers earlier hooks had set when the handler was about to run (see setReply).
type RequestState =
  | {
      readonly kind: 'executing'
      readonly execution: IdempotentExecution
      readonly earlier: EarlierHeaders | undefined
      sending: boolean
    }
  | {
      readonly kind: 'recording'
      readonly execution: IdempotentExecution
      readonly earlier: EarlierHeaders | undefined
    }
  | LeaseLostState
  | { readonly kind: 'sent' }
  | { readonly kind: 'done' }

interface LeaseLostState {
  readonly kind: 'lost' | 'answered'
  readonly answer: Promise<IdempotencyResponse>
  readonly earlier: EarlierHeaders | undefined
}

type EarlierHeaders = Record<string, unknown>

type Hook = (request: FastifyLikeRequest, reply: FastifyLikeReply, payload?: unknown) => unknown
type AddHook = (name: string, hook: Hook) => unknown

// A keyed request's reply, whose send() and code() the plugin tracks (see trackedSend,
// trackedCode): Fastify's reply has `request`, and `status` as another name of code(). The
// methods it replaced are kept under the plugin instance's own symbols (made by
// fastifyIdempotency): with two plugins on one route, each tracks the methods the other left,
// and hands calls on to that one, not back to the outermost (which called itself for ever).
type TrackedReply = FastifyLikeReply & {
  readonly request: FastifyLikeRequest
  status?: FastifyLikeReply['code']
  [untracked: symbol]: FastifyLikeReply['send'] | FastifyLikeReply['code'] | undefined
}

// A keyed handler's writes to reply.raw and its reply.hijack() are refused while it runs (until
// it calls reply.send): its response would go out past the plugin's onSend, unrecorded, while
// onResponse rolls ctx.tx back, and the retry would run it again. Refused by a throw at the call,
// before any byte leaves, which fails the handler: Fastify's error handling answers (500), the
// key is released and ctx.tx rolled back. Once the handler sent, Fastify writes reply.raw itself.
const rawGuard = Symbol('breakwater.idempotency.raw')
const guardedRawMethods = ['writeHead', 'write', 'end', 'flushHeaders'] as const
type GuardedRawMethod = (typeof guardedRawMethods)[number]

interface RawGuard {
  readonly request: FastifyLikeRequest
  readonly states: WeakMap<FastifyLikeRequest, RequestState>
  readonly original: Pick<ServerResponse, GuardedRawMethod>
  readonly hijack: (() => unknown) | undefined
}

type GuardedRaw = ServerResponse & { [rawGuard]?: RawGuard }

function refusesRaw(guard: RawGuard | undefined): boolean {
  const state = guard?.states.get(guard.request)
  return state?.kind === 'executing' && !state.sending
}

// One function per method for all replies (no closure per request): each finds its guard on
// the raw response.
const guardedRaw = Object.fromEntries(
  guardedRawMethods.map((name) => [
    name,
    function (this: GuardedRaw, ...args: unknown[]) {
      const guard = this[rawGuard]
      if (refusesRaw(guard)) throw new IdempotencyResponseUnsupportedError('raw-reply')
      return (guard!.original[name] as (...a: unknown[]) => unknown).apply(this, args)
    },
  ]),
) as unknown as Pick<ServerResponse, GuardedRawMethod>

function guardedHijack(this: FastifyLikeReply): unknown {
  const guard = (this.raw as GuardedRaw)[rawGuard]
  if (refusesRaw(guard)) throw new IdempotencyResponseUnsupportedError('raw-reply')
  return guard!.hijack!.call(this)
}

const unparsedBodyMessage =
  "The request has a body but the route's content-type parser left it unparsed (request.body is undefined, or the payload stream itself, as a streaming parser such as a multipart one leaves it), so it cannot be fingerprinted; parse the body into request.body (e.g. @fastify/multipart's attachFieldsToBody, or parseAs: 'buffer'), or give createIdempotency a fingerprint that does not read it"

// What stands for an unparsed body, which is never read (see preHandler).
const unparsedBody = { body: new Uint8Array(0), earlierBody: new Uint8Array(0) }

/** Whether a parsed body is a stream (a node Readable, or a web ReadableStream), not data. */
function isBodyStream(body: unknown): boolean {
  if (typeof body !== 'object' || body === null) return false
  const stream = body as { pipe?: unknown; getReader?: unknown }
  return typeof stream.pipe === 'function' || typeof stream.getReader === 'function'
}

/** Refuses the handler's writes to `reply.raw` and `reply.hijack()` while it runs. */
function guardRawReply(
  request: FastifyLikeRequest,
  reply: FastifyLikeReply,
  states: WeakMap<FastifyLikeRequest, RequestState>,
): void {
  const raw = reply.raw as GuardedRaw
  // A second plugin on the route: the first one's guard covers the same time.
  if (raw[rawGuard] !== undefined) return
  raw[rawGuard] = {
    request,
    states,
    original: {
      writeHead: raw.writeHead,
      write: raw.write,
      end: raw.end,
      flushHeaders: raw.flushHeaders,
    },
    hijack: reply.hijack,
  }
  Object.assign(raw, guardedRaw)
  if (reply.hijack !== undefined) reply.hijack = guardedHijack
}

/** Sends on a reply with the send() it had before the plugin (`untracked`) tracked it. */
function sendUntracked(reply: FastifyLikeReply, untracked: symbol, payload: unknown): void {
  const send = (reply as TrackedReply)[untracked] as FastifyLikeReply['send'] | undefined
  ;(send ?? reply.send).call(reply, payload)
}

/** Stops a payload that will not be sent from producing more (a stream, a Response's body). */
function discardPayload(payload: unknown): void {
  if (isFetchResponse(payload)) {
    payload.body?.cancel().catch(() => {})
    return
  }
  const stream = payload as { destroy?: unknown } | null | undefined
  if (typeof stream?.destroy === 'function') (stream.destroy as () => void)()
}

function headerOf(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name.toLowerCase()]
  return Array.isArray(value) ? value.join(', ') : value
}

/** True for a fetch `Response` (tested as Fastify tests it: by its tag, across realms). */
function isFetchResponse(payload: unknown): payload is Response {
  return (
    typeof payload === 'object' &&
    payload !== null &&
    Object.prototype.toString.call(payload) === '[object Response]'
  )
}

/**
 * Puts a fetch `Response` payload's status and headers on the reply, as Fastify does when it
 * sends one (after the onSend hooks, which see the Response itself), and returns its body (or
 * the lease-lost error, if the lease ran out first).
 */
async function unwrapResponse(
  reply: FastifyLikeReply,
  payload: Response,
  execution: IdempotentExecution,
): Promise<Buffer | IdempotencyInProgressError> {
  reply.code(payload.status)
  for (const [name, value] of payload.headers) reply.header(name, value)
  const body = await readBodyWithinLease(execution, payload.body)
  return body instanceof Uint8Array
    ? Buffer.from(body.buffer, body.byteOffset, body.byteLength)
    : body
}

/**
 * The payload's bytes, or the lease-lost error if the lease runs out first: a stream that has
 * not ended by then is destroyed (its producer stops) rather than keep its client waiting.
 */
async function payloadWithinLease(
  payload: unknown,
  execution: IdempotentExecution,
): Promise<Buffer | IdempotencyInProgressError> {
  let lost: IdempotencyInProgressError | undefined
  execution.onLeaseLost((error) => {
    lost = error
    // Never a fetch Response here (onSend unwraps those): a stream is destroyed.
    discardPayload(payload)
  })
  try {
    const bytes = await payloadBytes(payload)
    return lost ?? bytes
  } catch (error) {
    if (lost !== undefined) return lost
    throw error
  }
}

async function payloadBytes(payload: unknown): Promise<Buffer> {
  if (payload === undefined || payload === null) return Buffer.alloc(0)
  if (typeof payload === 'string') return Buffer.from(payload)
  if (payload instanceof Uint8Array) {
    return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)
  }
  if (typeof (payload as AsyncIterable<unknown>)[Symbol.asyncIterator] === 'function') {
    const chunks: Buffer[] = []
    for await (const chunk of payload as AsyncIterable<unknown>) {
      chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk as Uint8Array))
    }
    return Buffer.concat(chunks)
  }
  return Buffer.from(String(payload))
}

function replyHeaders(reply: FastifyLikeReply): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {}
  for (const [name, value] of Object.entries(reply.getHeaders())) {
    if (value === undefined) continue
    headers[name.toLowerCase()] = Array.isArray(value) ? value.map(String) : String(value)
  }
  return headers
}

/**
 * The headers on the reply (and its raw response) when a keyed request's handler is about to
 * run: those of earlier hooks (CORS, a request id), or undefined when there are none. A copy,
 * since the handler may still change them.
 */
function earlierHeaders(reply: FastifyLikeReply): EarlierHeaders | undefined {
  const headers = reply.getHeaders() // a fresh object
  let any = false
  for (const name in headers) {
    any = true
    const value = headers[name]
    if (Array.isArray(value)) headers[name] = [...value]
  }
  return any ? headers : undefined
}

// Replies carrying an answer of the plugin that replaced the handler's response (the
// lease-lost 409): what the stale handler still does to their status, headers and trailers is
// dropped (holdReply), until Fastify's error handling takes over (onError).
const held = new WeakSet<FastifyLikeReply>()
const holdInstalled = Symbol('breakwater.idempotency.hold')
// Every method of Fastify's reply that changes the status, headers or trailers it writes
// (headers() and redirect() call header() and code()).
const heldMethods = ['header', 'removeHeader', 'type', 'trailer', 'code', 'status'] as const
type HoldableReply = FastifyLikeReply & {
  [holdInstalled]?: true
  [name: string]: unknown
}

/**
 * Holds the reply as the plugin put it: its status, headers and trailers change only through
 * the plugin ({@link setReply}, {@link resetToEarlier}) until {@link releaseReply}. The
 * methods are replaced only on a reply that needs it (a lease running out), not per request.
 * Applies to the onSend hooks registered after the plugin too, which the plugin cannot tell
 * from the stale handler: they see the 409 as the plugin built it. `reply.raw` is not held.
 */
function holdReply(reply: FastifyLikeReply): void {
  held.add(reply)
  const holdable = reply as HoldableReply
  if (holdable[holdInstalled]) return
  holdable[holdInstalled] = true
  for (const name of heldMethods) {
    const method = holdable[name]
    if (typeof method !== 'function') continue
    holdable[name] = function (this: FastifyLikeReply, ...args: unknown[]) {
      return held.has(this) ? this : (method as (...a: unknown[]) => unknown).apply(this, args)
    }
  }
}

/** Ends {@link holdReply}: Fastify's error handling renders its own response. */
function releaseReply(reply: FastifyLikeReply): void {
  held.delete(reply)
}

/** Runs the plugin's own change to a reply, which a hold does not stop. */
function unheld(reply: FastifyLikeReply, change: () => void): void {
  const wasHeld = held.delete(reply)
  try {
    change()
  } finally {
    if (wasHeld) held.add(reply)
  }
}

/**
 * Drops every header on the reply (the handler's) and puts back those earlier hooks had set
 * when the handler was about to run, as they were then: for an answer that replaces the
 * handler's response, which a browser reads only with its CORS headers.
 */
function resetToEarlier(reply: FastifyLikeReply, earlier: EarlierHeaders | undefined): void {
  unheld(reply, () => {
    for (const name of Object.keys(reply.getHeaders())) reply.removeHeader(name)
    if (earlier === undefined) return
    for (const name in earlier) {
      // The body's own framing replaces any an earlier hook declared.
      if (name !== 'content-length' && name !== 'transfer-encoding') {
        reply.header(name, earlier[name])
      }
    }
  })
}

/**
 * Puts `response` on the reply. When it replaces the handler's response (a 409), the handler's
 * headers are dropped and `earlier` ({@link earlierHeaders}) put back; a replay or problem
 * answered before the handler keeps what earlier hooks set (CORS, a request id), as any
 * response does. The response's own headers win either way. The status is set with the code()
 * the reply had before the plugin (`untrackedCode`) tracked it: the tracked one drops a stale
 * handler's status while the plugin's own 409 is on its way. A replacing answer is then held
 * ({@link holdReply}): the stale handler can no longer change it.
 */
function setReply(
  reply: FastifyLikeReply,
  untrackedCode: symbol,
  response: IdempotencyResponse,
  replace: boolean,
  earlier?: EarlierHeaders,
): void {
  if (replace) {
    resetToEarlier(reply, earlier)
  } else {
    reply.removeHeader('content-length')
    reply.removeHeader('transfer-encoding')
  }
  unheld(reply, () => {
    const code = (reply as TrackedReply)[untrackedCode] as FastifyLikeReply['code'] | undefined
    ;(code ?? reply.code).call(reply, response.status)
    for (const [name, value] of Object.entries(response.headers)) {
      if (name !== 'content-length') reply.header(name, value)
    }
  })
  if (replace) holdReply(reply)
}

/**
 * A Fastify 5 plugin for the Idempotency-Key protocol. It applies to the routes of the context
 * it is registered in (register it inside `app.register(async (scope) => ...)` to guard only
 * some routes). A `preHandler` hook claims the key (replays or answers problems without running
 * the handler); an `onSend` hook records the serialized response (errors rendered by Fastify
 * included, so a 5xx releases the key) before it is sent. The fingerprint hashes the canonical
 * JSON of the parsed body (a string from a text parser as its text; see `parsedBodyBytes`).
 * Handlers find the context with `idempotencyContextOf(request)`. A keyed handler answers through
 * the reply: until it sends, writes to `reply.raw` and `reply.hijack()` throw
 * `IdempotencyResponseUnsupportedError` (`rule: 'raw-reply'`), as such a response would go out
 * unrecorded with `ctx.tx` rolled back.
 *
 * A handler must send its reply within the lease (`leaseMs`). If the lease runs out first (or
 * while a streamed payload is still being read), `ctx.tx` is rolled back and the client is
 * answered at once with the 409 problem (`reason: 'lease-lost'`, with `Retry-After`), or its
 * connection is destroyed if the handler's head went out past the plugin;
 * the key stays in progress, expired, for the client's retry to take over. What the stale
 * handler sends later, Fastify drops (and logs); its changes to the reply's status, headers and
 * trailers are dropped, so the 409 goes out as the plugin built it.
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * await app.register(fastifyIdempotency(idempotency))
 * app.post('/charges', async (request, reply) => {
 *   const ctx = idempotencyContextOf(request)!
 *   await ctx.tx.execute('INSERT INTO charges (id) VALUES ($1)', [ctx.key])
 *   return reply.code(201).send({ ok: true })
 * })
 * ```
 */
export function fastifyIdempotency(
  idempotency: Idempotency,
  options: FastifyIdempotencyOptions = {},
): FastifyIdempotencyPlugin {
  if (typeof idempotency?.begin !== 'function') {
    throw new InvalidOptionError('idempotency', 'an Idempotency (createIdempotency)', idempotency)
  }
  checkObject('options', options)
  // A misspelt option was dropped without a word and its default used instead.
  checkOptionKeys('options', options, fastifyOptions, { bareNames: true })
  const scope =
    options.scope === undefined
      ? undefined
      : checkFunction<(request: FastifyLikeRequest) => string | Promise<string>>(
          'scope',
          options.scope,
        )
  const states = new WeakMap<FastifyLikeRequest, RequestState>()
  // Where a keyed reply keeps the send() this plugin replaced (see TrackedReply).
  const untrackedSend = Symbol('breakwater.idempotency.send')
  // Where a keyed reply keeps the code() this plugin replaced (see trackedCode).
  const untrackedCode = Symbol('breakwater.idempotency.code')

  // The lease ran out while the handler ran (before its response reached onSend): ctx.tx was
  // rolled back and the response can no longer be recorded, so the client is answered now (as
  // Fastify's own handlerTimeout does) rather than left waiting for a handler that may never
  // finish. What the stale handler sends later is dropped (trackedSend). A handler whose send
  // is already under way is answered by that send instead (lostOnTheWay).
  const handlerOverran = async (
    request: FastifyLikeRequest,
    reply: FastifyLikeReply,
    execution: IdempotentExecution,
    error: IdempotencyInProgressError,
  ): Promise<void> => {
    const state = states.get(request)
    if (state?.kind !== 'executing') return
    const answer = leaseLostAnswer(idempotency, execution, error)
    // From now on the handler is stale: what it does to the reply's status, headers and
    // trailers is not the answer's, and is dropped (holdReply).
    holdReply(reply)
    if (state.sending) {
      // The handler's send is under way through slower hooks before this plugin's onSend: a
      // second send would be a second response on the same reply (the first still reaching
      // writeHead later), and Fastify cannot call the first back. It carries the 409 (onSend).
      states.set(request, { kind: 'lost', answer, earlier: state.earlier })
      // Rethrown where onSend awaits it; a send that never gets there has no one to tell.
      answer.catch(() => {})
      return
    }
    states.set(request, { kind: 'answered', answer, earlier: state.earlier })
    const problem = await answer
    if (reply.sent) {
      // The handler hijacked the reply (reply.raw is its own): no answer can be slipped in.
      if (!reply.raw.writableEnded) reply.raw.destroy()
      return
    }
    answerOrDestroy(reply.raw, () => {
      setReply(reply, untrackedCode, problem, true, state.earlier)
      sendUntracked(reply, untrackedSend, Buffer.from(problem.body))
    })
  }

  // Replaces send() on a keyed request's reply (one function for all of them): it notes that
  // the handler's response is under way before any hook sees it, so that its lease running out
  // meanwhile is answered by that send (handlerOverran). Once the plugin answered the 409
  // itself, a stale handler's send is dropped until the 409 has been written: while the 409 is
  // still in its onSend hooks, Fastify would start that send too, and write whichever reaches
  // the socket first. Afterwards Fastify drops it (and logs it) itself. So is a second send
  // once the handler's reached this plugin's onSend: an async handler that called reply.send()
  // without returning the reply resolves with undefined, and as this plugin's onSend is async,
  // the reply is not sent yet then, so Fastify sends that undefined too; it would reach the
  // socket first (an empty body) while the real response was recorded. Fastify's error
  // handling still sends (onError leaves these states first).
  function trackedSend(this: TrackedReply, payload?: unknown): FastifyLikeReply {
    const state = states.get(this.request)
    if (state?.kind === 'executing') state.sending = true
    else if (
      !this.sent &&
      (state?.kind === 'answered' || state?.kind === 'recording' || state?.kind === 'sent')
    ) {
      discardPayload(payload)
      return this
    }
    ;(this[untrackedSend] as FastifyLikeReply['send']).call(this, payload)
    return this
  }

  // Replaces code() (and its other name, status()) on a keyed request's reply: once the plugin
  // answered the 409 itself, a stale handler's reply.code(201) before its (dropped) send would
  // set the status the 409 goes out with, when onSend hooks after this plugin's are still
  // running on it. Fastify's error handling still sets its status (onError leaves 'answered').
  function trackedCode(this: TrackedReply, statusCode: number): FastifyLikeReply {
    if (states.get(this.request)?.kind === 'answered') return this
    ;(this[untrackedCode] as FastifyLikeReply['code']).call(this, statusCode)
    return this
  }

  const preHandler: Hook = async (request, reply) => {
    if (!idempotency.appliesTo(request.method)) return
    const signal = disconnectSignal(reply.raw)
    const scopeValue =
      scope === undefined ? undefined : computedString('scope', await scope(request))
    // A parser that leaves the body to the handler gives no request.body for a request that has
    // one (a streaming multipart parser), or hands on the payload stream as request.body: hashed
    // as empty, a key reused with another body was replayed instead of answered 422; hashed as
    // JSON, the stream's circular object graph failed every keyed request with a RangeError.
    // Refused where the fingerprint reads it, so that a bad key still gets its 400 and a
    // fingerprint that ignores the body still works.
    const unparsed =
      request.body === undefined ? !framedWithoutBody(request.raw) : isBodyStream(request.body)
    const { body, earlierBody } = unparsed
      ? unparsedBody
      : parsedBodyBytes(request.body, request.headers['content-type'])
    const begun = await idempotency.begin({
      method: request.method,
      route: request.url,
      header: (name) => headerOf(request.headers, name),
      headerRepeated: (name) => nodeHeaderRepeated(request.raw, name),
      get body() {
        if (unparsed) throw new IdempotencyBodyUnavailableError(unparsedBodyMessage)
        return body
      },
      earlierBody,
      get signal() {
        return signal()
      },
      native: request,
      ...(scopeValue === undefined ? {} : { scope: scopeValue }),
    })
    if (begun.kind === 'bypass') return
    if (begun.kind === 'respond') {
      states.set(request, { kind: 'done' })
      const { response } = begun
      setReply(reply, untrackedCode, response, false)
      // Returning the reply after send() tells Fastify the hook answered the request. An empty
      // body goes as no payload: Fastify gives a Buffer `application/octet-stream` when no
      // Content-Type is set, which a recorded empty response (a redirect) did not have.
      reply.send(response.body.byteLength === 0 ? undefined : Buffer.from(response.body))
      return reply
    }
    const { execution } = begun
    states.set(request, {
      kind: 'executing',
      execution,
      earlier: earlierHeaders(reply),
      sending: false,
    })
    const tracked = reply as TrackedReply
    tracked[untrackedSend] = reply.send
    tracked.send = trackedSend
    tracked[untrackedCode] = reply.code
    tracked.code = trackedCode
    tracked.status = trackedCode
    guardRawReply(request, reply, states)
    attachContext(request, execution.context)
    let answered: Promise<void> | undefined
    execution.onLeaseLost((error) => {
      // Sending failed (nothing left to answer with): the client learns it from the connection.
      answered = handlerOverran(request, reply, execution, error).catch(() => {
        reply.raw.destroy()
      })
    })
    // The lease ran out before the handler could even start: the hook answered the request.
    if (answered !== undefined) {
      await answered
      return reply
    }
  }

  const onSend: Hook = async (request, reply, payload) => {
    const state = states.get(request)
    if (state?.kind === 'lost') return lostOnTheWay(request, reply, payload, state)
    if (state?.kind === 'answered') return answeredOnTheWay(reply, payload, state)
    if (state?.kind !== 'executing') return payload
    const { execution, earlier } = state
    states.set(request, { kind: 'recording', execution, earlier })
    let body: Buffer | IdempotencyInProgressError
    try {
      // Read here, or its status and headers would be recorded from the reply's defaults and
      // its body as the text "[object Response]".
      body = isFetchResponse(payload)
        ? await unwrapResponse(reply, payload, execution)
        : await payloadWithinLease(payload, execution)
    } catch (error) {
      // The handler's payload failed (a stream that errored): there is nothing to record, and
      // the key and ctx.tx (on SQLite, the process's only writer) must not wait for the lease.
      states.set(request, { kind: 'done' })
      await execution.abort()
      throw error
    }
    states.set(request, { kind: 'sent' })
    if (body instanceof IdempotencyInProgressError) {
      // Its body had not ended when the lease ran out: answered as a handler overrunning it.
      const problem = await leaseLostAnswer(idempotency, execution, body)
      setReply(reply, untrackedCode, problem, true, earlier)
      return Buffer.from(problem.body)
    }
    const response: IdempotencyResponse = {
      status: reply.statusCode,
      headers: replyHeaders(reply),
      body,
    }
    let final: IdempotencyResponse
    try {
      final = await execution.complete(response)
    } catch (error) {
      // Not recorded (the key was released): Fastify's error handling answers 500 with the
      // headers on the reply, which must not be the handler's (they describe a response that
      // was not sent), but must be the earlier hooks' (CORS).
      resetToEarlier(reply, earlier)
      throw error
    }
    if (final !== response) setReply(reply, untrackedCode, final, true, earlier)
    return Buffer.from(final.body.buffer, final.body.byteOffset, final.body.byteLength)
  }

  // The lease ran out while this payload was on its way here: the 409 goes out in its place,
  // over the earlier hooks' headers, as when the handler overruns its lease (one response).
  const lostOnTheWay = async (
    request: FastifyLikeRequest,
    reply: FastifyLikeReply,
    payload: unknown,
    state: LeaseLostState,
  ): Promise<Buffer> => {
    states.set(request, { kind: 'sent' })
    discardPayload(payload)
    let problem: IdempotencyResponse
    try {
      problem = await state.answer
    } catch (error) {
      // Giving the key up failed: Fastify's error handling answers, without the handler's
      // headers (a response that is not sent), with the earlier hooks'.
      resetToEarlier(reply, state.earlier)
      throw error
    }
    setReply(reply, untrackedCode, problem, true, state.earlier)
    return Buffer.from(problem.body)
  }

  // The plugin's own 409 (handlerOverran) reaching onSend. Hooks before this one may have held
  // it while the stale handler changed the reply (reply.code(201) before its send, which is
  // dropped): the 409's status and headers are put back.
  const answeredOnTheWay = async (
    reply: FastifyLikeReply,
    payload: unknown,
    state: LeaseLostState,
  ): Promise<unknown> => {
    setReply(reply, untrackedCode, await state.answer, true, state.earlier)
    return payload
  }

  // A hook failed on the plugin's own 409 (a stale handler's failure never gets here: its send
  // is dropped), or on the response onSend let through (or recording it failed): Fastify's
  // error handling answers instead, and its send (and status) must go through.
  const onError: Hook = async (request, reply) => {
    releaseReply(reply)
    const kind = states.get(request)?.kind
    if (kind === 'answered' || kind === 'sent') states.set(request, { kind: 'done' })
  }

  // A request that ended without its response passing onSend (a failure inside Fastify) gives
  // its key back instead of holding it until the lease expires. A client that disconnects does
  // not: its handler keeps running and records the result for the client's retry.
  const onResponse: Hook = async (request) => {
    const state = states.get(request)
    if (state?.kind !== 'executing' && state?.kind !== 'recording') return
    states.set(request, { kind: 'done' })
    await state.execution.abort()
  }

  const plugin: FastifyIdempotencyPlugin = async (instance) => {
    const addHook = instance.addHook.bind(instance) as unknown as AddHook
    addHook('preHandler', preHandler)
    addHook('onSend', onSend)
    addHook('onError', onError)
    addHook('onResponse', onResponse)
  }
  // What fastify-plugin sets: the hooks apply to the context the plugin is registered in,
  // not only inside a new encapsulated child context.
  Object.assign(plugin, {
    [Symbol.for('skip-override')]: true,
    [Symbol.for('fastify.display-name')]: 'breakwater-idempotency',
  })
  return plugin
}
