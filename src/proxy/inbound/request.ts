// The inbound request reader: validates what Node's parser lets through but the proxy must
// refuse (see the hardening list in docs/proxy.md), normalizes the path once for routing and
// forwarding, buffers the body under the size limit, and reads the deadline and request id.
//
// Decisions (each refused request is answered here with an `application/problem+json` body and
// `Connection: close`, and never reaches a route or an upstream):
// - HTTP/0.9 request lines (no version, `httpVersionMajor < 1`): 400. A text request line of
//   another major version (`HTTP/2.0`, which node's parser takes): 505.
// - `Host`: exactly one for HTTP/1.1 (Node itself refuses none); HTTP/1.0 may omit it (the
//   listener's own address is used). Two `Host` headers, userinfo (`@`), characters outside
//   `A-Z a-z 0-9 . - _` (or a bracketed IPv6 literal), an empty, non-numeric, zero or
//   out-of-range port: 400.
// - Request target: origin-form (`/path?query`), or absolute-form (`http://host[:port]/path`)
//   only when its authority equals the `Host` header (default ports made explicit, host names
//   compared case-insensitively) and the scheme is http or https; anything else, including
//   `*` (server-wide OPTIONS) and authority-form: 400. The path goes through normalizePath.
// - `TRACE`: 405. A server answering TRACE echoes the request it received, and that request
//   carries the credentials the proxy injected for the service. `TRACK` never gets here: node's
//   parser does not know the method and answers 400 `REQUEST_INVALID` itself.
// - Any `Upgrade` header (`h2c`, `websocket`, ...): 400. Passing the header through would let
//   a client talk h2c to an upstream behind the proxy's back. WebSocket handshakes on routes
//   that accept them are the exception: node:http hands them to the listener's 'upgrade' event,
//   checkUpgradeRequest validates them, and the service tunnels them (upstream/tunnel.ts).
//   CONNECT never gets here: the listener answers it 405.
// - More headers than `limits.maxHeaders`: 431 (the listener sets `server.maxHeadersCount`
//   one above the limit so the excess is visible instead of silently dropped).
// - `Transfer-Encoding` other than `chunked` alone (`gzip, chunked`): 400, since the coded bytes
//   would be forwarded as the body.
// - `Content-Length` above `limits.maxBodyBytes`: 413 before a byte of the body is read (and,
//   for `Expect: 100-continue`, before `100 Continue` invites it); a chunked body is counted
//   while it is read and cut with 413 as soon as it passes the limit. The caller's own
//   decision on the head (`admit`: the gateway's route match) is taken before `100 Continue`
//   too, so a request it refuses is answered before the client sends its body.
// - The deadline: the listener context's deadline header (remaining ms) and gRPC's
//   `grpc-timeout`; the sooner wins. Malformed values are ignored, as the deadline policy does.

import { randomUUID } from 'node:crypto'
import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http'
import type { ErrorCode } from '../../core/error-codes.js'
import {
  GRPC_TIMEOUT_HEADER,
  parseDeadlineMs,
  parseGrpcTimeout,
  smallestHeaderValue,
} from '../../policies/deadline.js'
import type {
  ForwardOutcome,
  ForwardRequest,
  InboundContext,
  ListenerConfig,
  ListenerRefusalHandler,
  ProxyResponse,
  TunnelEnd,
} from '../contracts.js'
import { cutByDrain } from '../drain-cut.js'
import { forwardableHeaders, isPlainChunked } from '../hop-by-hop.js'
import { appendVia } from '../via.js'
import type { FastRequest } from './fast-request.js'
import { listenerAnswer } from './listener-answer.js'
import { normalizePath } from './normalize-path.js'
import { countRequest } from './request-metrics.js'

/** A validated inbound request, ready for routing and forwarding. */
export interface InboundRequest {
  /** Upper-case method as sent. */
  readonly method: string
  /** Normalized path (see normalize-path.ts): what routes match and what is forwarded. */
  readonly path: string
  /** The raw query: `''` or a string starting with `?`. */
  readonly query: string
  /**
   * Lower-case header names; hop-by-hop headers (and those named in `Connection`), `host`,
   * `expect` and the inbound deadline header removed (the deadline travels as `deadlineAt`);
   * `x-request-id` set to {@link InboundRequest.requestId}.
   */
  readonly headers: Record<string, string | string[]>
  /** The inbound `Host` (or the listener's address for an HTTP/1.0 request without one). */
  readonly host: string
  /** `x-request-id` as sent (when well formed), else a fresh UUID. */
  readonly requestId: string
  /** Absolute deadline on the context clock (ms), from the deadline headers; undefined: none. */
  readonly deadlineAt: number | undefined
  /** The whole body, undefined when the request has none. */
  readonly body: Buffer | undefined
  /** Aborted when the client goes away before the response is finished. */
  readonly signal: AbortSignal
  /** Context clock time when reading started (ms). */
  readonly startedAt: number
}

/**
 * The `code` values of the problems this module answers (each documented in docs/errors.md):
 * 400 `REQUEST_INVALID` (HTTP/0.9, target form, query characters), `REQUEST_HOST_INVALID`,
 * `REQUEST_PATH_INVALID`, `REQUEST_UPGRADE_REFUSED`, `REQUEST_BODY_INCOMPLETE`; 417
 * `REQUEST_INVALID` (an `Expect` other than `100-continue`); 431
 * `REQUEST_HEADERS_TOO_MANY`; 413 `REQUEST_BODY_TOO_LARGE`; 405 `REQUEST_METHOD_NOT_ALLOWED`
 * (TRACE).
 */
export type InboundProblemCode =
  | 'REQUEST_INVALID'
  | 'REQUEST_HOST_INVALID'
  | 'REQUEST_PATH_INVALID'
  | 'REQUEST_UPGRADE_REFUSED'
  | 'REQUEST_HEADERS_TOO_MANY'
  | 'REQUEST_BODY_TOO_LARGE'
  | 'REQUEST_BODY_INCOMPLETE'
  | 'REQUEST_METHOD_NOT_ALLOWED'

// The InboundRequest readInboundRequest makes. Its signal is made only when something reads
// it: an AbortController plus a 'close' listener per request cost about 20 us of CPU under load
// (EventTarget bookkeeping and the GC it causes), and the forward path does not read it (it
// watches the response's 'close' itself). It also keeps what the access log needs and the
// public shape does not carry, without a WeakMap entry per request.
class LiveInboundRequest implements InboundRequest {
  readonly method: string
  readonly path: string
  readonly query: string
  readonly headers: Record<string, string | string[]>
  readonly host: string
  readonly requestId: string
  readonly deadlineAt: number | undefined
  readonly body: Buffer | undefined
  readonly startedAt: number
  readonly #res: ProxyResponse
  // Kept from the start: node:http detaches `res.socket` when the response finishes, before
  // the access log line is written, so reading it then found none (and no bytesOut).
  readonly #socket: { readonly bytesWritten: number } | null
  readonly #bytesWrittenAtStart: number
  // Body bytes read: the body's length, or what came before the client left (bodyLeft).
  readonly #bytesIn: number
  #controller: AbortController | undefined

  constructor(
    head: Head,
    body: Buffer | undefined,
    res: ProxyResponse,
    bytesWritten: number,
    bytesIn = body?.length ?? 0,
  ) {
    this.method = head.method
    this.path = head.path
    this.query = head.query
    this.headers = head.headers
    this.host = head.host
    this.requestId = head.requestId
    this.deadlineAt = head.deadlineAt
    this.body = body
    this.startedAt = head.startedAt
    this.#res = res
    this.#socket = res.socket
    this.#bytesWrittenAtStart = bytesWritten
    this.#bytesIn = bytesIn
    this.#controller = undefined
  }

  get signal(): AbortSignal {
    let controller = this.#controller
    if (controller === undefined) {
      controller = new AbortController()
      this.#controller = controller
      const res = this.#res
      // `destroyed` turns true when the response closes: a signal read after the client left
      // is born aborted, one read after a finished response never aborts.
      if (res.destroyed) {
        if (!res.writableFinished) controller.abort(new Error('client disconnected'))
      } else {
        const made = controller
        res.once('close', () => {
          if (!res.writableFinished) made.abort(new Error('client disconnected'))
        })
      }
    }
    return controller.signal
  }

  /** Bytes written on the connection since the request was read (head and body). */
  static bytesOut(inbound: InboundRequest): number | undefined {
    if (!(#res in inbound)) return undefined
    // The connection's count when the line is written: the response is complete by then, and
    // a next response on a keep-alive connection is not yet under way (a pipelined one whose
    // handler already wrote would be counted in, a rare overcount rather than no count).
    const socket = inbound.#socket
    return socket === null || socket === undefined
      ? undefined
      : socket.bytesWritten - inbound.#bytesWrittenAtStart
  }

  /** Body bytes read from the client (those before it left, for one that left mid-body). */
  static bytesIn(inbound: InboundRequest): number {
    return #res in inbound ? inbound.#bytesIn : (inbound.body?.length ?? 0)
  }

  static isLive(inbound: InboundRequest): inbound is LiveInboundRequest {
    return #res in inbound
  }
}

const absoluteForm = /^(https?):\/\/([^/?#]*)([/?].*)?$/is
const badQuery = /[^\x21-\x7e]|#/
const hostPattern = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?$/
const requestIdPattern = /^[\x21-\x7e]{1,200}$/

/**
 * Validates, normalizes and reads the body of an inbound request. On input the proxy refuses
 * (see the decisions at the top of this module) it answers the client itself with a problem
 * response and resolves undefined; the caller then does nothing more with `req`/`res`.
 *
 * @example
 * ```ts
 * const handler: RequestHandler = (req, res) => {
 *   void readInboundRequest(req, res, listener, ctx).then((inbound) => {
 *     if (inbound === undefined) return
 *     // route on inbound.path, then service.forward(toForwardRequest(inbound, route, target), res)
 *   })
 * }
 * ```
 */
export function readInboundRequest(
  req: IncomingMessage,
  res: ServerResponse,
  listener: ListenerConfig,
  ctx: InboundContext,
  admit?: AdmitHead,
  cut?: BodyCut,
): Promise<InboundRequest | undefined> {
  const read = readInbound(req, res, listener, ctx, admit, cut)
  return read instanceof Promise ? read : Promise.resolve(read)
}

/** The validated head of an inbound request, before its body is read. */
export type InboundHead = Pick<InboundRequest, 'method' | 'path' | 'query' | 'headers' | 'host'>

/**
 * The caller's own decision on the validated head of a request whose client waits for
 * `100 Continue` (the gateway checks it has a route), asked before the body is invited: false
 * means the caller will refuse the request, so `100 Continue` is not sent, the request
 * resolves without its body, and the caller's answer closes the connection (the body is
 * unread). Not asked for other requests: their body is on its way anyway, and reading it lets
 * the answer keep the connection.
 */
export type AdmitHead = (head: InboundHead) => boolean

/**
 * Told of a request whose connection went before its body was read to the end (the read then
 * resolves undefined, and nothing more is answered). `outcome` is what the client was sent, for
 * the caller's access log line and request metrics: {@link clientLeftOutcome} (499 `ABORTED`,
 * like a client that leaves while the upstream answers) when the client went away,
 * {@link drainCutOutcome} (503 `DRAIN_TIMEOUT`) when the listener's drain cut the connection at
 * its hard stop, or the answer the listener wrote before it closed the connection itself
 * (node's request timer: 408 `TIMEOUT`; its parser failing on the body: 400
 * `REQUEST_INVALID`). `inbound` has no body;
 * the access log line written for it counts the body bytes that came (`bytesIn`).
 */
export type BodyCut = (inbound: InboundRequest, outcome: ForwardOutcome) => void

/**
 * The outcome of a request whose client went away before its body was read: status 499,
 * `ABORTED`, nothing sent anywhere. For the access line and request metrics of a
 * {@link BodyCut} request that nobody answered.
 */
export const clientLeftOutcome: ForwardOutcome = Object.freeze({
  status: 499,
  attempts: 0,
  written: false,
  endpoint: undefined,
  error: 'ABORTED',
  captured: undefined,
})

/**
 * The outcome of a request whose connection the listener's drain cut, when its time was up,
 * before its body was read: status 503, `DRAIN_TIMEOUT`, nothing sent anywhere (as for a
 * forward the drain cuts, see src/proxy/drain-cut.ts). For the access line and request metrics
 * of a {@link BodyCut} request.
 */
export const drainCutOutcome: ForwardOutcome = Object.freeze({
  status: 503,
  attempts: 0,
  written: false,
  endpoint: undefined,
  error: 'DRAIN_TIMEOUT',
  captured: undefined,
})

/**
 * {@link readInboundRequest} without a promise when none is needed: a request without a body
 * (and a refused one) is answered synchronously, and only a request whose body is still to be
 * read gives a promise. For handlers on the hot path, which save a promise and a microtask turn
 * per request.
 *
 * @example
 * ```ts
 * const read = readInbound(req, res, listener, ctx)
 * if (read instanceof Promise) void read.then((inbound) => inbound && serve(inbound))
 * else if (read !== undefined) serve(read)
 * ```
 */
export function readInbound(
  req: IncomingMessage,
  res: ServerResponse,
  listener: ListenerConfig,
  ctx: InboundContext,
  admit?: AdmitHead,
  cut?: BodyCut,
): InboundRequest | undefined | Promise<InboundRequest | undefined> {
  const head = validateHead(req, listener, ctx)
  if (isRefusal(head)) return refuse(req, res, listener, ctx, head[0], head[1], head[2])
  if (unmetExpectation.has(req)) return refuse(req, res, listener, ctx, ...refusals.expectation)

  const contentLength = req.headers['content-length']
  const transferEncoding = req.headers['transfer-encoding']
  const chunked = transferEncoding !== undefined
  // Only plain `chunked`: another coding would reach the app still coded (isPlainChunked).
  if (chunked && !isPlainChunked(transferEncoding)) {
    return refuse(req, res, listener, ctx, ...refusals.transferCoding)
  }
  if ((contentLength === undefined || contentLength === '0') && !chunked) {
    return finish(req, res, head, undefined)
  }
  // Content in a HEAD request has no defined semantics (RFC 9110 §9.3.2), and an upstream that
  // takes a HEAD to have none reads the body as the next request on its connection (request
  // smuggling). DELETE keeps its body: some APIs give it one.
  if (head.method === 'HEAD') return refuse(req, res, listener, ctx, ...refusals.headBody)
  const limit = listener.limits.maxBodyBytes
  if (contentLength !== undefined && Number(contentLength) > limit) {
    return refuse(
      req,
      res,
      listener,
      ctx,
      413,
      'REQUEST_BODY_TOO_LARGE',
      `request body larger than ${limit} bytes`,
    )
  }
  if (continueWanted.has(req)) {
    // The caller refuses it (a route miss): the body it would invite is not wanted.
    if (admit !== undefined && !admit(head)) return finish(req, res, head, undefined)
    res.writeContinue()
  }
  // With a Content-Length the body is copied into one buffer of that size as it comes, rather
  // than kept as chunks and joined at the end (two copies of a large upload at once). The
  // buffer is taken when the first chunk arrives, not for a head that announces a body and
  // sends none. A chunked body is still joined at its end.
  const announced = chunked ? -1 : Number(contentLength)
  return new Promise<InboundRequest | undefined>((resolve) => {
    const chunks: Buffer[] = []
    let whole: Buffer | undefined
    let size = 0
    let settled = false
    // Counted from here, so that the listener's answer to a cut body is in its bytesOut.
    const bytesWritten = req.socket.bytesWritten
    const done = (value: InboundRequest | undefined): void => {
      if (settled) return
      settled = true
      req.off('data', onData)
      req.off('end', onEnd)
      req.off('error', onError)
      req.off('close', onClose)
      resolve(value)
    }
    const onData = (chunk: Buffer): void => {
      size += chunk.length
      if (size > limit) {
        req.pause()
        done(
          refuse(
            req,
            res,
            listener,
            ctx,
            413,
            'REQUEST_BODY_TOO_LARGE',
            `request body larger than ${limit} bytes`,
          ),
        )
        return
      }
      if (announced > 0) {
        // node's parser delivers no more than Content-Length.
        whole ??= Buffer.allocUnsafe(announced)
        chunk.copy(whole, size - chunk.length)
      } else chunks.push(chunk)
    }
    const onEnd = (): void => {
      const body =
        size === 0
          ? undefined
          : whole !== undefined
            ? whole.subarray(0, size)
            : Buffer.concat(chunks, size)
      done(finish(req, res, head, body))
    }
    const connectionGone = (): void => {
      // Nothing more can be answered: the caller logs and counts what the client was sent, the
      // listener's own answer (a 408 when node's request timer fired mid-body) or nothing: 503
      // DRAIN_TIMEOUT when the drain's hard stop cut the connection (the listener marked it
      // before destroying it), else 499 ABORTED, the client went away.
      const inbound = new LiveInboundRequest(head, undefined, res, bytesWritten, size)
      done(undefined)
      const outcome =
        listenerAnswer(req.socket) ?? (cutByDrain(res) ? drainCutOutcome : clientLeftOutcome)
      cut?.(inbound, outcome)
    }
    const onError = (): void => {
      // A connection that went mid-body fails the stream too ('aborted'): not a request the
      // proxy could not read, and no 400 for a client that is not there to hear it (or that
      // the listener already answered).
      if (req.socket.destroyed || res.destroyed) {
        connectionGone()
        return
      }
      done(
        refuse(
          req,
          res,
          listener,
          ctx,
          400,
          'REQUEST_BODY_INCOMPLETE',
          'the request body could not be read',
        ),
      )
    }
    const onClose = (): void => {
      // The connection went mid-body: nobody is left to answer.
      if (!req.complete) connectionGone()
    }
    req.on('data', onData)
    req.on('end', onEnd)
    req.on('error', onError)
    req.on('close', onClose)
  })
}

/**
 * The fast path's {@link readInbound}: validates a request read whole by the listener
 * (fast-request.ts) with the same rules, or returns undefined when any of them refuses it.
 * The caller then hands the connection to node:http, whose path ({@link readInbound}) reads
 * the same bytes again and gives the refusal its answer, so refusals are written in one place.
 */
export function readFastInbound(
  req: FastRequest,
  res: ProxyResponse,
  listener: ListenerConfig,
  ctx: InboundContext,
): InboundRequest | undefined {
  const head = validateHead(req, listener, ctx)
  if (isRefusal(head)) return undefined
  return new LiveInboundRequest(head, req.body, res, req.socket.bytesWritten)
}

// What validateHead found wrong, mapped to the answer.
const refusals = {
  http09: [400, 'REQUEST_INVALID', 'HTTP/0.9 is not supported'],
  version: [505, 'REQUEST_INVALID', 'only HTTP/1.0 and HTTP/1.1 are supported'],
  trace: [405, 'REQUEST_METHOD_NOT_ALLOWED', 'TRACE and TRACK are not forwarded'],
  headerCount: [431, 'REQUEST_HEADERS_TOO_MANY', 'more header fields than the listener allows'],
  upgrade: [
    400,
    'REQUEST_UPGRADE_REFUSED',
    'only WebSocket handshakes (Connection: Upgrade, Upgrade: websocket) to routes that accept them are tunnelled',
  ],
  hostRepeated: [400, 'REQUEST_HOST_INVALID', 'more than one Host'],
  hostMissing: [400, 'REQUEST_HOST_INVALID', 'Host is required'],
  hostMalformed: [400, 'REQUEST_HOST_INVALID', 'malformed Host'],
  targetForm: [400, 'REQUEST_INVALID', 'request target form not supported'],
  targetHost: [400, 'REQUEST_HOST_INVALID', 'absolute-form target does not match Host'],
  query: [400, 'REQUEST_INVALID', 'invalid character in query'],
  transferCoding: [400, 'REQUEST_INVALID', 'transfer codings other than chunked are not supported'],
  expectation: [417, 'REQUEST_INVALID', 'Expect: only 100-continue is supported'],
  headBody: [
    400,
    'REQUEST_INVALID',
    'a HEAD request has no body (RFC 9110 §9.3.2): Content-Length above 0 or Transfer-Encoding is refused',
  ],
} as const satisfies Record<string, Refusal>
type Refusal = readonly [status: number, code: InboundProblemCode, detail: string]

function isRefusal(value: Head | Refusal): value is Refusal {
  return Array.isArray(value)
}

// The validated head of a request, before its body.
interface Head {
  readonly method: string
  readonly path: string
  readonly query: string
  readonly host: string
  readonly startedAt: number
  readonly deadlineAt: number | undefined
  readonly requestId: string
  readonly headers: Record<string, string | string[]>
}

// The last well-formed Host seen and its authorityKey (a pure function of value and scheme).
let lastHost: { readonly value: string; readonly scheme: string; readonly key: string } = {
  value: '',
  scheme: '',
  key: '',
}

/**
 * What validateHead reads of a request: an IncomingMessage, or the fast path's FastRequest.
 * `headers` needs only the names read below (the deadline headers and `x-request-id`).
 */
type HeadSource = Pick<
  IncomingMessage,
  'httpVersionMajor' | 'httpVersionMinor' | 'method' | 'url' | 'rawHeaders'
> & {
  readonly headers: Readonly<Record<string, string | string[] | undefined>>
  readonly socket: {
    readonly localAddress?: string | undefined
    readonly localPort?: number | undefined
  }
}

// `websocket`: an `Upgrade: websocket` header is let through (checkUpgradeRequest checks the
// rest of the handshake); any other Upgrade value is refused as always.
function validateHead(
  req: HeadSource,
  listener: ListenerConfig,
  ctx: InboundContext,
  websocket = false,
): Head | Refusal {
  const startedAt = ctx.clock.now()
  if (req.httpVersionMajor < 1) return refusals.http09
  // node's parser reads `HTTP/2.0` in a text request line as version 2.0: no client of HTTP/2
  // sends one (h2 is binary, and its preface is refused by the parser), so it is a confused or
  // probing client, and the request would be forwarded as HTTP/1.1.
  if (req.httpVersionMajor > 1) return refusals.version
  const method = req.method
  // TRACK cannot arrive today (node's parser refuses the method with 400, and the fast path
  // takes only the methods it lists): checked still, so a parser that learnt it would not
  // forward a request whose answer echoes the injected credentials.
  if (method === 'TRACE' || method === 'TRACK') return refusals.trace
  const raw = req.rawHeaders
  if (raw.length / 2 > listener.limits.maxHeaders) return refusals.headerCount

  let hostValue: string | undefined
  let hostCount = 0
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string
    if (name.length === 4 && name.toLowerCase() === 'host') {
      hostCount++
      hostValue = raw[i + 1] as string
    } else if (name.length === 7 && name.toLowerCase() === 'upgrade') {
      if (!websocket || (raw[i + 1] as string).trim().toLowerCase() !== 'websocket')
        return refusals.upgrade
    }
  }
  if (hostCount > 1) return refusals.hostRepeated
  const scheme = listener.tls === undefined ? 'http' : 'https'
  let host: string
  let hostKey: string | undefined
  if (hostValue === undefined) {
    if (req.httpVersionMinor >= 1) return refusals.hostMissing
    const address = req.socket.localAddress ?? listener.host
    const port = req.socket.localPort ?? listener.port
    host = address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`
  } else {
    // Clients send the same Host on every request: the last one's key is kept.
    if (hostValue === lastHost.value && scheme === lastHost.scheme) {
      hostKey = lastHost.key
    } else {
      hostKey = authorityKey(hostValue, scheme)
      if (hostKey === undefined) return refusals.hostMalformed
      lastHost = { value: hostValue, scheme, key: hostKey }
    }
    host = hostValue
  }

  // Split the target into path and query, accepting absolute-form only when it names Host.
  let target = req.url ?? ''
  if (target.charCodeAt(0) !== 0x2f) {
    const absolute = absoluteForm.exec(target)
    if (absolute === null) return refusals.targetForm
    const targetKey = authorityKey(absolute[2] as string, (absolute[1] as string).toLowerCase())
    if (targetKey === undefined || hostKey === undefined || targetKey !== hostKey) {
      return refusals.targetHost
    }
    target = absolute[3] ?? '/'
    if (target.charCodeAt(0) === 0x3f) target = `/${target}`
  }
  const q = target.indexOf('?')
  const query = q === -1 ? '' : target.slice(q)
  if (query !== '' && badQuery.test(query)) return refusals.query
  const normalized = normalizePath(q === -1 ? target : target.slice(0, q))
  if (!normalized.ok) return [400, 'REQUEST_PATH_INVALID', normalized.reason]

  // Deadline: the sooner of the context's header and grpc-timeout, and of the values of each
  // when it was sent more than once (node:http and the fast path join them with ", ").
  let remaining = smallestHeaderValue(req.headers[ctx.deadlineHeader], parseDeadlineMs)
  const grpc = smallestHeaderValue(req.headers[GRPC_TIMEOUT_HEADER], parseGrpcTimeout)
  if (grpc !== undefined) remaining = remaining === undefined ? grpc : Math.min(remaining, grpc)

  const sentId = firstHeader(req.headers['x-request-id'])
  const requestId = sentId !== undefined && requestIdPattern.test(sentId) ? sentId : randomUUID()
  const headers = forwardableHeaders(raw, dropSetFor(ctx.deadlineHeader))
  headers['x-request-id'] = requestId
  // The proxy's own Via entry, after the client's (RFC 9110 §7.6.3), with the version the
  // client spoke: every forward (gateway, ambassador, WebSocket handshake) starts from here.
  if (ctx.via !== undefined)
    headers.via = appendVia(headers.via, `1.${req.httpVersionMinor}`, ctx.via)

  return {
    method: req.method ?? 'GET',
    path: normalized.path,
    query,
    host,
    startedAt,
    deadlineAt: remaining === undefined ? undefined : startedAt + remaining,
    requestId,
    headers,
  }
}

/** What {@link checkUpgradeRequest} decided. */
export type UpgradeCheck =
  | { readonly ok: true; readonly request: InboundRequest }
  | {
      readonly ok: false
      readonly status: number
      readonly code: InboundProblemCode
      readonly detail: string
    }

const neverAborted = new AbortController().signal

/**
 * Validates a WebSocket handshake (an `Upgrade` request node:http handed over) with the rules
 * of {@link readInboundRequest}, except that `Upgrade: websocket` is allowed, plus the
 * handshake's own: a GET, over HTTP/1.1, without a body (bytes after its head belong to the
 * WebSocket conversation, so a body would be smuggled into it), and `Upgrade` naming
 * `websocket` alone, with a well-formed `Sec-WebSocket-Key` and a `Sec-WebSocket-Version` (the
 * version itself is the endpoint's to accept or refuse). The caller answers a refusal itself (the socket has no ServerResponse).
 *
 * @example
 * ```ts
 * server.on('upgrade', (req, socket, head) => {
 *   const check = checkUpgradeRequest(req, listener, ctx)
 *   if (!check.ok) return endWithProblem(socket, clock, check.status, check.code, check.detail)
 *   // route check.request.path, then service.tunnel(...)
 * })
 * ```
 */
export function checkUpgradeRequest(
  req: IncomingMessage,
  listener: ListenerConfig,
  ctx: InboundContext,
): UpgradeCheck {
  const head = validateHead(req, listener, ctx, true)
  if (isRefusal(head)) return { ok: false, status: head[0], code: head[1], detail: head[2] }
  const refused = (detail: string): UpgradeCheck => ({
    ok: false,
    status: 400,
    code: 'REQUEST_UPGRADE_REFUSED',
    detail,
  })
  const upgrade = req.headers.upgrade
  if (typeof upgrade !== 'string' || upgrade.trim().toLowerCase() !== 'websocket')
    return refused('only WebSocket upgrades are tunnelled')
  if (req.method !== 'GET') return refused('a WebSocket handshake must be a GET request')
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor !== 1)
    return refused('a WebSocket handshake must use HTTP/1.1')
  const key = req.headers['sec-websocket-key']
  if (typeof key !== 'string' || !/^[A-Za-z0-9+/]{22}==$/.test(key.trim()))
    return refused('a WebSocket handshake needs one Sec-WebSocket-Key (16 bytes in base64)')
  if (req.headers['sec-websocket-version'] === undefined)
    return refused('a WebSocket handshake needs Sec-WebSocket-Version')
  const length = req.headers['content-length']
  if ((length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined)
    return refused('a WebSocket handshake must not have a body')
  return {
    ok: true,
    request: {
      method: head.method,
      path: head.path,
      query: head.query,
      headers: head.headers,
      host: head.host,
      requestId: head.requestId,
      deadlineAt: head.deadlineAt,
      body: undefined,
      signal: neverAborted,
      startedAt: head.startedAt,
    },
  }
}

function finish(
  req: IncomingMessage,
  res: ServerResponse,
  head: Head,
  body: Buffer | undefined,
): InboundRequest {
  return new LiveInboundRequest(head, body, res, req.socket.bytesWritten)
}

function refuse(
  req: IncomingMessage,
  res: ServerResponse,
  listener: ListenerConfig,
  ctx: InboundContext,
  status: number,
  code: InboundProblemCode,
  detail: string,
): undefined {
  logRefusal(ctx, listener.name, req, { status, code, detail })
  countRequest(ctx, listener.name, '', '', status)
  // A client that sent something refused here is broken or probing: nothing more is read
  // from its connection.
  res.setHeader('connection', 'close')
  closingSockets.add(req.socket)
  sendProblem(res, status, code, detail)
  return undefined
}

// A ForwardRequest whose signal is the inbound one, read only on demand. Its other fields are
// own data properties, so `{ ...request, signal }` (the shadow runner) copies them.
class LazyForwardRequest implements ForwardRequest {
  readonly method: string
  readonly target: string
  readonly headers: Record<string, string | string[]>
  readonly host: string
  readonly body: Buffer | undefined
  readonly deadlineAt: number | undefined
  readonly route: string
  readonly requestId: string
  readonly #inbound: InboundRequest

  constructor(
    inbound: InboundRequest,
    route: string,
    target: string,
    headers: Record<string, string | string[]>,
  ) {
    this.method = inbound.method
    this.target = target
    this.headers = headers
    this.host = inbound.host
    this.body = inbound.body
    this.deadlineAt = inbound.deadlineAt
    this.route = route
    this.requestId = inbound.requestId
    this.#inbound = inbound
  }

  get signal(): AbortSignal {
    return this.#inbound.signal
  }
}

/**
 * The {@link ForwardRequest} for a validated inbound request sent to `target` (origin-form,
 * path plus query) on behalf of `route` (a route name or `ambassador`), with `headers` instead
 * of the inbound ones when given (the gateway adds `X-Forwarded-*`). The inbound signal is not
 * read here: for a request from {@link readInboundRequest} the forward request's `signal` reads
 * it only when something asks for it.
 *
 * @example
 * ```ts
 * const forward = toForwardRequest(inbound, 'ambassador', `/${rest}${inbound.query}`)
 * await service.forward(forward, res)
 * ```
 */
export function toForwardRequest(
  inbound: InboundRequest,
  route: string,
  target: string,
  headers: Record<string, string | string[]> = inbound.headers,
): ForwardRequest {
  if (LiveInboundRequest.isLive(inbound))
    return new LazyForwardRequest(inbound, route, target, headers)
  return {
    method: inbound.method,
    target,
    headers,
    host: inbound.host,
    body: inbound.body,
    deadlineAt: inbound.deadlineAt,
    route,
    requestId: inbound.requestId,
    signal: inbound.signal,
  }
}

/**
 * Answers with an RFC 9457 `application/problem+json` body
 * (`{ type, title, status, code, detail }`). When the request body was not read to the end
 * the connection is closed after the response, so unread bytes are never parsed as a next
 * request. When the response head is already out, the socket is destroyed instead.
 *
 * @example
 * ```ts
 * sendProblem(res, 404, 'SERVICE_NOT_FOUND', 'no service named "billing"')
 * ```
 */
export function sendProblem(
  res: ProxyResponse,
  status: number,
  code: ErrorCode,
  detail: string,
): void {
  if (res.headersSent || res.writableEnded) {
    if (!res.writableEnded) res.destroy()
    return
  }
  const body = JSON.stringify({
    type: 'about:blank',
    title: STATUS_CODES[status] ?? 'Error',
    status,
    code,
    detail,
  })
  const headers: Record<string, string | number> = {
    'content-type': 'application/problem+json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  }
  if (res.req !== undefined && hasUnreadBody(res.req)) {
    headers.connection = 'close'
    if (res.req.socket !== null) closingSockets.add(res.req.socket)
  }
  res.writeHead(status, headers)
  res.end(body)
}

// Requests that sent `Expect: 100-continue` to a server that leaves the interim answer to the
// handler (the listener's `checkContinue`): the body is only asked for once the head passed.
const continueWanted = new WeakSet<IncomingMessage>()

/**
 * Marks `req` as waiting for `100 Continue`: {@link readInboundRequest} sends it once the head
 * is accepted and the body is wanted, so a refused request (413 for a `Content-Length` over the
 * limit, any 4xx) is answered before the client sends a byte of its body. The listener calls
 * it from the server's `checkContinue` event.
 */
export function awaitContinue(req: IncomingMessage): void {
  continueWanted.add(req)
}

// Requests with an expectation other than 100-continue (the listener's `checkExpectation`).
const unmetExpectation = new WeakSet<IncomingMessage>()

/**
 * Marks `req` as carrying an `Expect` the proxy cannot meet (anything but `100-continue`, RFC
 * 9110 §10.1.1): {@link readInboundRequest} refuses it 417 `REQUEST_INVALID` as it refuses
 * everything else (problem+json, logged, connection closed, nothing forwarded), rather than
 * node:http answering its own bare 417 with no code on a connection it keeps. The listener
 * calls it from the server's `checkExpectation` event.
 */
export function refuseExpectation(req: IncomingMessage): void {
  unmetExpectation.add(req)
}

// Sockets whose current response announced `Connection: close` (a refused request). Node goes on parsing bytes
// that arrived in the same packet and would hand a pipelined request after the refused one to
// the handler; RFC 9112 §9.6 says a server that sent close must not process it.
const closingSockets = new WeakSet<object>()

/**
 * True when a response on `socket` announced `Connection: close` because its request was
 * refused: later requests parsed from the same connection must be ignored (the listener
 * drops them).
 */
export function isConnectionClosing(socket: object | null): boolean {
  return socket !== null && closingSockets.has(socket)
}

/**
 * Logs a request the proxy refused itself (`msg: "request refused"`, warn) when access logs are
 * on: listener, method, path, route and service when known, status, code, detail and the client
 * address. `service` is the one the request metrics count the refusal under (see
 * {@link countRequest}): a route's target the config lacks, for its `502 SERVICE_NOT_FOUND`.
 */
export function logRefusal(
  ctx: InboundContext,
  listener: string,
  req: IncomingMessage,
  refusal: { readonly status: number; readonly code: string; readonly detail: string },
  where: {
    readonly path?: string | undefined
    readonly route?: string | undefined
    readonly service?: string | undefined
  } = {},
): void {
  if (!ctx.accessLog) return
  ctx.logger.warn('request refused', {
    listener,
    method: req.method,
    path: where.path,
    route: where.route,
    service: where.service,
    status: refusal.status,
    code: refusal.code,
    detail: refusal.detail,
    remote: req.socket.remoteAddress,
  })
}

/**
 * The {@link RequestHandler.refused} of a listener's handler: counts a request the listener
 * refused before the handler saw it (node's parser, header and request timers, CONNECT, a
 * handshake during the drain) in the listener's request metrics, with no route or service, and
 * logs it as `request refused`, like {@link logRefusal}, when access logs are on. Without it a
 * flood of malformed requests, or of 431s for oversized cookies, left no line and no count.
 */
export function listenerRefusalLogger(
  ctx: Pick<InboundContext, 'clock' | 'metrics' | 'logger' | 'accessLog'>,
  listener: string,
): ListenerRefusalHandler {
  return ({ status, code, detail, remote }) => {
    countRequest(ctx, listener, '', '', status)
    if (!ctx.accessLog) return
    ctx.logger.warn('request refused', { listener, status, code, detail, remote })
  }
}

/** Extra fields of an access log line that the inbound request does not carry. */
export interface AccessLogDetails {
  /** The matched route (gateway) or `ambassador`. */
  readonly route?: string
  /** The service that answered. */
  readonly service?: string
  /**
   * A WebSocket tunnel's bytes on the client connection and how it ended (for a tunnel the
   * request carries no body, and the bytes are counted when the connection closes).
   */
  readonly tunnel?: TunnelEnd
}

/**
 * Writes one JSON access log line (`msg: "access"`) through `ctx.logger` when `ctx.accessLog`
 * is on: listener, method, normalized path (never the query, which may carry tokens), route,
 * service, status, attempts, endpoint, error code, request id, duration (ms on the context
 * clock) and bytes in/out (out counts the response head too). Headers, cookies and tokens are
 * never logged.
 *
 * @example
 * ```ts
 * const outcome = await service.forward(forward, res)
 * logAccess(ctx, inbound, outcome, listener.name, { route: 'ambassador', service: service.name })
 * ```
 */
export function logAccess(
  ctx: InboundContext,
  inbound: InboundRequest,
  outcome: ForwardOutcome,
  listener: string,
  details: AccessLogDetails = {},
): void {
  if (!ctx.accessLog) return
  ctx.logger.info('access', {
    listener,
    method: inbound.method,
    path: inbound.path,
    route: details.route,
    service: details.service,
    status: outcome.status,
    attempts: outcome.attempts,
    endpoint: outcome.endpoint,
    error: outcome.error,
    requestId: inbound.requestId,
    durationMs: ctx.clock.now() - inbound.startedAt,
    bytesIn: details.tunnel?.bytesIn ?? LiveInboundRequest.bytesIn(inbound),
    bytesOut: details.tunnel?.bytesOut ?? LiveInboundRequest.bytesOut(inbound),
    ...(details.tunnel === undefined || outcome.status !== 101
      ? {}
      : { tunnelEnd: details.tunnel.reason }),
  })
}

// `complete` is still false while the handler of a body-less request runs synchronously, so
// the framing headers tell whether body bytes may still be on the wire.
function hasUnreadBody(req: IncomingMessage): boolean {
  if (req.complete) return false
  const length = req.headers['content-length']
  return (length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined
}

function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value
}

const dropSets = new Map<string, ReadonlySet<string>>()
function dropSetFor(deadlineHeader: string): ReadonlySet<string> {
  let set = dropSets.get(deadlineHeader)
  if (set === undefined) {
    set = new Set(['host', 'expect', deadlineHeader.toLowerCase()])
    dropSets.set(deadlineHeader, set)
  }
  return set
}

/**
 * `host:port` in lower case with the scheme's default port made explicit, or undefined when
 * the authority is malformed (userinfo, bad characters, bad port).
 */
function authorityKey(authority: string, scheme: string): string | undefined {
  const match = hostPattern.exec(authority)
  if (match === null) return undefined
  const portText = match[2]
  let port: number
  if (portText === undefined) {
    port = scheme === 'https' ? 443 : 80
  } else {
    port = Number(portText)
    if (port < 1 || port > 65_535) return undefined
  }
  return `${(match[1] as string).toLowerCase()}:${port}`
}
