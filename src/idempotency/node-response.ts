import {
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http'
import { AbortedError } from '../core/errors.js'
import { IdempotencyBodyUnavailableError, IdempotencyResponseUnsupportedError } from './errors.js'
import { answerOrDestroy } from './lease-lost.js'
import { genericProblem } from './problem.js'
import type { IdempotencyRequest, IdempotencyResponse } from './types.js'

// Shared by the node:http and Express adapters (an Express response is a ServerResponse).

/** Reads a header of a node request as one string (repeated headers joined with ", "). */
export function nodeHeader(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name.toLowerCase()]
  if (value === undefined) return undefined
  return Array.isArray(value) ? value.join(', ') : value
}

/**
 * Whether a request header (lower-case name) came on more than one line, from Node's
 * `headersDistinct`; undefined when the request cannot tell (a stand-in request object without
 * `rawHeaders`, or one whose `headers` were set by hand).
 */
export function nodeHeaderRepeated(req: IncomingMessage, name: string): boolean | undefined {
  const lines = (req as Partial<IncomingMessage>).headersDistinct?.[name]
  return lines === undefined ? undefined : lines.length > 1
}

/** Thrown by {@link readNodeBody} when the body is larger than allowed. */
export class BodyTooLargeError extends Error {}

const emptyBody = Buffer.alloc(0)

// What a body read keeps while it runs: on the request itself (under a symbol), so that the
// four listeners are the same functions for every request (no closures per request).
interface BodyRead {
  readonly promise: Promise<Buffer>
  readonly chunks: Buffer[]
  size: number
  readonly maxBytes: number
  readonly resolve: (body: Buffer) => void
  readonly reject: (error: unknown) => void
}

const bodyRead = Symbol('breakwater.idempotency.body')

type ReadingRequest = IncomingMessage & { [bodyRead]?: BodyRead | undefined }

function stopReading(req: ReadingRequest): BodyRead | undefined {
  const read = req[bodyRead]
  if (read === undefined) return undefined
  req[bodyRead] = undefined
  req.off('data', onBodyData)
  req.off('end', onBodyEnd)
  req.off('error', onBodyError)
  req.off('close', onBodyClose)
  return read
}

function onBodyData(this: ReadingRequest, chunk: Buffer | string): void {
  const read = this[bodyRead]
  if (read === undefined) return
  const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
  read.size += buffer.byteLength
  if (read.size > read.maxBytes) {
    stopReading(this)
    // Stop reading the rest; the caller answers 413 and closes the connection.
    this.pause()
    read.reject(new BodyTooLargeError())
    return
  }
  read.chunks.push(buffer)
}

function onBodyEnd(this: ReadingRequest): void {
  const read = stopReading(this)
  if (read === undefined) return
  const { chunks } = read
  read.resolve(
    chunks.length === 0 ? emptyBody : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks),
  )
}

// A request stream fails only when its connection does (node's 'aborted', ECONNRESET): the
// client went away, as for onBodyClose. An AbortedError (ABORTED), as when a client leaves a
// wait, so that onError can tell a client's disconnect from a failure of the server.
function onBodyError(this: ReadingRequest, error: Error): void {
  stopReading(this)?.reject(new AbortedError(error))
}

// The client went away before the body ended.
function onBodyClose(this: ReadingRequest): void {
  stopReading(this)?.reject(
    new AbortedError(new Error('client disconnected before its request body was read')),
  )
}

/**
 * True when the request's framing says it carries no body: no `Transfer-Encoding` and no
 * `Content-Length` other than 0 (RFC 9112 section 6.3).
 */
export function framedWithoutBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length']
  return req.headers['transfer-encoding'] === undefined && (length === undefined || length === '0')
}

/**
 * Reads a node request body into one Buffer, refusing more than `maxBytes`. Rejects with
 * {@link IdempotencyBodyUnavailableError} when another layer already read (some of) the body:
 * what it read is gone, and a fingerprint of what is left would be wrong.
 */
export function readNodeBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const reading = req as ReadingRequest
  // A second reader while a read is under way gets the same body.
  const under = reading[bodyRead]
  if (under !== undefined) return under.promise
  if (req.readableEnded || req.readableDidRead) {
    return framedWithoutBody(req)
      ? Promise.resolve(emptyBody)
      : Promise.reject(new IdempotencyBodyUnavailableError())
  }
  // Plain 'data'/'end' listeners: an async iterator over the stream costs several promises
  // per chunk, which shows in the per-request overhead of small JSON requests.
  let resolve!: (body: Buffer) => void
  let reject!: (error: unknown) => void
  const promise = new Promise<Buffer>((res, rej) => {
    resolve = res
    reject = rej
  })
  reading[bodyRead] = { promise, chunks: [], size: 0, maxBytes, resolve, reject }
  req.on('data', onBodyData)
  req.on('end', onBodyEnd)
  req.on('error', onBodyError)
  req.on('close', onBodyClose)
  return promise
}

// The core's view of a node request: a class, so that building one per request allocates one
// object (no closures).
class NodeRequestView implements IdempotencyRequest {
  readonly method: string
  readonly route: string
  readonly body: Uint8Array
  readonly earlierBody?: Uint8Array
  readonly native: IncomingMessage
  readonly scope?: string
  readonly #signal: () => AbortSignal

  constructor(
    req: IncomingMessage,
    route: string,
    body: Uint8Array | ParsedBody,
    scope: string | undefined,
    signal: () => AbortSignal,
  ) {
    this.method = req.method ?? 'GET'
    this.route = route
    if (body instanceof Uint8Array) {
      this.body = body
    } else {
      this.body = body.body
      this.earlierBody = body.earlierBody
    }
    this.native = req
    if (scope !== undefined) this.scope = scope
    this.#signal = signal
  }

  header(name: string): string | undefined {
    return nodeHeader(this.native, name)
  }

  headerRepeated(name: string): boolean | undefined {
    return nodeHeaderRepeated(this.native, name)
  }

  get signal(): AbortSignal {
    return this.#signal()
  }
}

/** A framework's parsed body as the fingerprint sees it (`parsedBodyBytes`). */
type ParsedBody = { readonly body: Uint8Array; readonly earlierBody: Uint8Array }

/**
 * Builds the core's request view of a node request: `body` is the raw bytes (node:http) or a
 * parsed body's `parsedBodyBytes` (Express).
 */
export function nodeRequest(
  req: IncomingMessage,
  route: string,
  body: Uint8Array | ParsedBody,
  scope: string | undefined,
  signal: () => AbortSignal,
): IdempotencyRequest {
  return new NodeRequestView(req, route, body, scope, signal)
}

/**
 * The client's disconnect (the connection closing before the response finished) as an
 * AbortSignal, created only when first read: only a request that waits for a concurrent
 * duplicate needs one, and an AbortController (or even a 'close' listener) per request shows
 * in the cost of every request. A disconnect before the first read is not missed: the
 * response is then already closed (`res.closed`), and the signal starts aborted.
 */
export function disconnectSignal(res: ServerResponse): () => AbortSignal {
  let controller: AbortController | undefined
  return () => {
    if (controller === undefined) {
      const made = new AbortController()
      controller = made
      if (res.closed) {
        if (!res.writableFinished) made.abort(new Error('client disconnected'))
      } else {
        res.once('close', () => {
          if (!res.writableFinished) made.abort(new Error('client disconnected'))
        })
      }
    }
    return controller.signal
  }
}

/**
 * The headers layers before the adapter (CORS, a request id, security headers) had set on `res`
 * when a keyed request's handler was about to run, or undefined when there were none: what an
 * answer replacing the handler's response sends again (see {@link writeNodeResponse}). A copy,
 * since the handler may still change them.
 */
export function earlierHeaders(res: ServerResponse): OutgoingHttpHeaders | undefined {
  // Without any header, node returns an empty list without building the header map: no other
  // work on the path of every new key when no earlier layer set one.
  if (res.getHeaderNames().length === 0) return undefined
  const headers = res.getHeaders()
  for (const name in headers) {
    const value = headers[name]
    // node keeps a list by reference, and appendHeader grows it in place.
    if (Array.isArray(value)) headers[name] = [...value]
  }
  return headers
}

/**
 * Writes a whole response, replacing any header the handler had set: for what is sent after
 * the handler ran (its recorded response, or the problem or 500 that replaces it). `earlier`
 * ({@link earlierHeaders}) goes out with an answer that replaces the handler's response, as
 * those layers had set it: a browser reads a 409 or 500 only with its CORS headers, and a value
 * the handler set, even over an earlier layer's, belongs to the response that was not sent.
 */
export function writeNodeResponse(
  res: ServerResponse,
  response: IdempotencyResponse,
  earlier?: OutgoingHttpHeaders,
): void {
  writeWhole(res, response, true, earlier)
}

/**
 * Writes a whole response that is sent instead of running the handler (a replay, a problem, a
 * 413) over the headers earlier layers set on `res` (CORS, a request id): they go out with it,
 * as with any response, unless the response names the same header.
 */
export function answerNodeRequest(res: ServerResponse, response: IdempotencyResponse): void {
  writeWhole(res, response, false)
}

function writeWhole(
  res: ServerResponse,
  response: IdempotencyResponse,
  replace: boolean,
  earlier?: OutgoingHttpHeaders,
): void {
  // A capture whose handler has ended stays in place until now (see capturedEnd).
  const capture = (res as CapturedResponse)[captureState]
  if (capture?.ended) restoreCaptured(res as CapturedResponse, capture)
  if (res.headersSent || res.writableEnded) return
  if (replace) {
    for (const name of res.getHeaderNames()) res.removeHeader(name)
    if (earlier !== undefined) {
      for (const name in earlier) {
        const value = earlier[name]
        // The body's own framing replaces any an earlier layer declared.
        if (value === undefined || name === 'content-length' || name === 'transfer-encoding')
          continue
        res.setHeader(name, value)
      }
    }
  } else {
    // The body's own framing replaces any an earlier layer declared.
    res.removeHeader('content-length')
    res.removeHeader('transfer-encoding')
  }
  const headers: OutgoingHttpHeaders = {}
  for (const [name, value] of Object.entries(response.headers)) {
    if (name === 'content-length' || name === 'transfer-encoding') continue
    headers[name] = typeof value === 'string' ? value : [...value]
  }
  // A 1xx, 204 or 304 has no body, and RFC 9110 forbids Content-Length on 1xx and 204 (on a
  // 304 it would have to be the 200's length): node sends whatever header it is given.
  if (hasBody(response.status)) headers['content-length'] = String(response.body.byteLength)
  // A reason phrase the handler set belongs to its own status; with another (the 500 or 409
  // that replaces its response) it would go out as "500 Created", and one node refuses would
  // make this writeHead throw, leaving the client without any answer.
  if (response.status !== res.statusCode || !validStatusMessage(res.statusMessage)) {
    res.statusMessage = STATUS_CODES[response.status] ?? 'unknown'
  }
  res.writeHead(response.status, headers)
  res.end(response.body)
}

function hasBody(status: number): boolean {
  return status >= 200 && status !== 204 && status !== 304
}

function internalErrorProblem(): IdempotencyResponse {
  return genericProblem(500, 'Internal Server Error', 'The request failed on the server')
}

/**
 * Writes a 500 problem unless something was already sent, with `earlier` as for
 * {@link writeNodeResponse}: for a failure once the handler ran.
 */
export function writeInternalError(res: ServerResponse, earlier?: OutgoingHttpHeaders): void {
  writeNodeResponse(res, internalErrorProblem(), earlier)
}

/**
 * Answers a 500 problem unless something was already sent, as {@link answerNodeRequest} does:
 * for a failure before the handler ran (the store failing on the claim, a scope that throws).
 * No handler set a header yet, so those on `res` are the earlier layers' (CORS, a request id)
 * and go out with it, as with a replay or a 409.
 */
export function answerInternalError(res: ServerResponse): void {
  answerNodeRequest(res, internalErrorProblem())
}

type WriteCallback = (error?: Error | null) => void

// A chunk as node writes it: a string (in `encoding`) or a Uint8Array. Anything else throws
// the TypeError node's write throws (ERR_INVALID_ARG_TYPE, ERR_STREAM_NULL_VALUES for null), at
// the handler's call: dropped without a word, it recorded a response without that body.
function chunkToBuffer(chunk: unknown, encoding: unknown): Buffer {
  if (typeof chunk === 'string') {
    return Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8')
  }
  if (chunk instanceof Uint8Array)
    return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
  throw invalidChunk(chunk)
}

// node's check of a reason phrase (ERR_INVALID_CHAR), which its writeHead throws.
function validStatusMessage(message: string | undefined): boolean {
  return message === undefined || !/[^\t\x20-\x7e\x80-\xff]/.test(message)
}

function checkStatusMessage(message: string | undefined): void {
  if (!validStatusMessage(message)) {
    throw Object.assign(new TypeError('Invalid character in statusMessage'), {
      code: 'ERR_INVALID_CHAR',
    })
  }
}

function invalidChunk(chunk: unknown): TypeError {
  if (chunk === null) {
    return Object.assign(new TypeError('May not write null values to stream'), {
      code: 'ERR_STREAM_NULL_VALUES',
    })
  }
  const received =
    typeof chunk === 'object' || typeof chunk === 'function'
      ? `an instance of ${(chunk as object).constructor?.name ?? 'Object'}`
      : chunk === undefined
        ? 'undefined'
        : `type ${typeof chunk} (${String(chunk)})`
  return Object.assign(
    new TypeError(
      `The "chunk" argument must be of type string or an instance of Buffer or Uint8Array. Received ${received}`,
    ),
    { code: 'ERR_INVALID_ARG_TYPE' },
  )
}

// What a capture keeps while the handler writes: on the response itself (under a symbol), so
// that the replacement methods are the same three functions for every response.
interface Capture {
  readonly original: Pick<ServerResponse, 'writeHead' | 'write' | 'end' | 'addTrailers'>
  /** A capture of the same response by an outer layer, in effect again after this one. */
  readonly previous: Capture | undefined
  readonly onEnd: CapturedEnd
  readonly chunks: Buffer[]
  ended: boolean
  /** Whether the handler called addTrailers (which the capture keeps from node: see onEnd). */
  trailers: boolean
  /**
   * Whether status and headers are fixed once the body starts, as node fixes them when it sends
   * them with the first chunk (see {@link CaptureOptions}); `written` is what they were then.
   */
  readonly fixedAtFirstWrite: boolean
  written:
    | { readonly status: number; readonly headers: Record<string, string | string[]> }
    | undefined
}

/** How {@link captureNodeResponse} treats what the handler writes. */
export interface CaptureOptions {
  /**
   * Refuse, at `end()`, a response whose status or headers differ from what they were at its
   * first `write()`: node sends them with the first body chunk, and a later change throws
   * `ERR_HTTP_HEADERS_SENT` on a plain server, so such a response is not one the handler could
   * have sent. Express needs it: a handler that writes part of its body and then throws is
   * routed to Express's error handling, whose `res.status(4xx).json(...)` lands on the same
   * captured response, which would otherwise record the partial body and the error's JSON as
   * one response. Not on node:http, where the handler's throw itself fails the execution.
   * @default false
   */
  readonly fixedAtFirstWrite?: boolean
}

/**
 * What a capture calls when the handler ends its response: with the response, or, instead,
 * with the error its response cannot be recorded for: trailers (a recorded response is sent
 * whole, with a Content-Length, and node's writeHead throws ERR_HTTP_TRAILER_INVALID for a
 * `Trailer` header beside one, which, only after the commit, answered 500 a result committed),
 * or, with `fixedAtFirstWrite`, status or headers changed after the body started (node's
 * `ERR_HTTP_HEADERS_SENT`).
 */
export type CapturedEnd = (response: IdempotencyResponse, unsupported: Error | undefined) => void

const captureState = Symbol('breakwater.idempotency.capture')

type CapturedResponse = ServerResponse & { [captureState]?: Capture | undefined }

function capturedWriteHead(this: CapturedResponse, status: number, ...rest: unknown[]) {
  if (this[captureState]?.ended) return this
  this.statusCode = status
  let headers = rest[0]
  if (typeof headers === 'string') {
    checkStatusMessage(headers)
    this.statusMessage = headers
    headers = rest[1]
  }
  if (Array.isArray(headers)) {
    // Either [[name, value], ...] or a flat [name, value, name, value] list. As node does, its
    // names replace what setHeader set before, and repeated ones in the list are all kept.
    const pairs = Array.isArray(headers[0]) ? (headers as [unknown, unknown][]) : pairsOf(headers)
    for (const [name] of pairs) this.removeHeader(String(name))
    for (const [name, value] of pairs) this.appendHeader(String(name), String(value))
  } else if (typeof headers === 'object' && headers !== null) {
    for (const name of Object.keys(headers)) {
      const value = (headers as Record<string, unknown>)[name]
      if (value !== undefined) this.setHeader(name, value as string | number | string[])
    }
  }
  return this
}

// A flat [name, value, name, value] list as pairs (a trailing name without a value is dropped).
function pairsOf(list: unknown[]): [unknown, unknown][] {
  const pairs: [unknown, unknown][] = []
  for (let i = 0; i + 1 < list.length; i += 2) pairs.push([list[i], list[i + 1]])
  return pairs
}

function capturedWrite(
  this: CapturedResponse,
  chunk: unknown,
  encoding?: unknown,
  callback?: unknown,
): boolean {
  const capture = this[captureState]
  const buffer = chunkToBuffer(chunk, encoding)
  if (capture !== undefined && !capture.ended) {
    // Where node would send status and headers (even for an empty chunk).
    if (capture.fixedAtFirstWrite && capture.written === undefined) {
      capture.written = { status: this.statusCode, headers: currentHeaders(this) }
    }
    capture.chunks.push(buffer)
  }
  const done = (typeof encoding === 'function' ? encoding : callback) as WriteCallback | undefined
  if (done !== undefined) queueMicrotask(() => done(null))
  return true
}

function capturedEnd(
  this: CapturedResponse,
  chunk?: unknown,
  encoding?: unknown,
  callback?: unknown,
): CapturedResponse {
  const capture = this[captureState]
  if (capture === undefined || capture.ended) return this
  // Checked where node's end checks it (its implicit writeHead), not when the recorded response
  // is written after the commit: that threw, and left the client without any answer.
  checkStatusMessage(this.statusMessage)
  // As node's end: a falsy chunk (or a callback in its place) is no data.
  if (chunk && typeof chunk !== 'function') capture.chunks.push(chunkToBuffer(chunk, encoding))
  capture.ended = true
  const done =
    typeof chunk === 'function'
      ? chunk
      : typeof encoding === 'function'
        ? encoding
        : typeof callback === 'function'
          ? callback
          : undefined
  if (done !== undefined) this.once('finish', done as () => void)
  const headers = currentHeaders(this)
  // The capture stays in place until the recorded response is written (writeNodeResponse):
  // what the handler (or an error handler after it, as Express's finalhandler, which sees no
  // headers sent) writes after end() must neither reach the client before nor instead of the
  // response that was recorded.
  // A copy: a chunk may be a view of the handler's own buffer, which it is free to reuse.
  const { written } = capture
  capture.onEnd(
    { status: this.statusCode, headers, body: Buffer.concat(capture.chunks) },
    capture.trailers || headers.trailer !== undefined
      ? new IdempotencyResponseUnsupportedError('trailers')
      : written !== undefined &&
          (written.status !== this.statusCode || !sameHeaders(written.headers, headers))
        ? headersSentError()
        : undefined,
  )
  return this
}

// The response's headers as a capture records them (array values copied: the handler may still
// change the array it set).
function currentHeaders(res: ServerResponse): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {}
  const current = res.getHeaders() // a fresh object without prototype
  for (const name in current) {
    const value = current[name]
    if (value === undefined) continue
    headers[name] = Array.isArray(value) ? [...value] : String(value)
  }
  return headers
}

function sameHeaders(
  a: Record<string, string | string[]>,
  b: Record<string, string | string[]>,
): boolean {
  const names = Object.keys(a)
  if (names.length !== Object.keys(b).length) return false
  for (const name of names) {
    const x = a[name]
    const y = b[name]
    if (y === undefined) return false
    if (Array.isArray(x) || Array.isArray(y)) {
      if (!Array.isArray(x) || !Array.isArray(y) || x.length !== y.length) return false
      if (x.some((value, i) => value !== y[i])) return false
    } else if (x !== y) return false
  }
  return true
}

// node's error for a header set once headers went out with the first body chunk (its code, as
// the capture's other errors keep node's), here found at end() rather than at the call.
function headersSentError(): Error {
  return Object.assign(
    new Error(
      'Cannot set headers after they are sent to the client: the status or headers changed after the first res.write (as when an error handler renders an error after a partial body)',
    ),
    { code: 'ERR_HTTP_HEADERS_SENT' },
  )
}

// Noted rather than passed on: node would send the trailers with the captured response's
// writeHead only if it were chunked, and the handler's response is refused (see CapturedEnd).
function capturedAddTrailers(this: CapturedResponse): void {
  const capture = this[captureState]
  if (capture !== undefined && !capture.ended) capture.trailers = true
}

// Puts back what `capture` replaced, once, if it is still the response's current capture.
function restoreCaptured(res: CapturedResponse, capture: Capture): void {
  if (res[captureState] !== capture) return
  res[captureState] = capture.previous
  res.writeHead = capture.original.writeHead
  res.write = capture.original.write
  res.end = capture.original.end
  res.addTrailers = capture.original.addTrailers
}

/**
 * Buffers everything a handler writes to `res` (status, headers, body) instead of sending it,
 * and calls `onEnd` once with the whole response when the handler calls `end()`. Nothing
 * reaches the client until the result is recorded: a client must never see a success whose
 * record then fails to commit. `restore()` puts the real methods back.
 *
 * The replacements are shared functions that find their state on the response (under a
 * symbol), not closures made per response: a response's own properties that hold per-request
 * closures measurably slowed every keyed request (more allocation, and young objects kept
 * alive long enough to be promoted).
 */
export function captureNodeResponse(
  res: ServerResponse,
  onEnd: CapturedEnd,
  options: CaptureOptions = {},
): { restore(): void } {
  const target = res as CapturedResponse
  const capture: Capture = {
    original: {
      writeHead: res.writeHead,
      write: res.write,
      end: res.end,
      addTrailers: res.addTrailers,
    },
    previous: target[captureState],
    onEnd,
    chunks: [],
    ended: false,
    trailers: false,
    fixedAtFirstWrite: options.fixedAtFirstWrite === true,
    written: undefined,
  }
  installCapture(target, capture)
  return new CaptureHandle(target, capture)
}

function installCapture(res: CapturedResponse, capture: Capture): void {
  res[captureState] = capture
  // The replacements are assigned to the instance; their types are the overloaded originals'.
  res.writeHead = capturedWriteHead as typeof res.writeHead
  res.write = capturedWrite as typeof res.write
  res.end = capturedEnd as typeof res.end
  res.addTrailers = capturedAddTrailers
}

/**
 * Gives up on a captured response whose handler has not ended it (its lease ran out): writes
 * `response` in its place, or, when something already went out past the capture (its headers
 * were sent), destroys the connection, so that the client learns no answer will come instead of
 * waiting for one. Either way the capture then stays in place, ended, and headers are no longer
 * set: what the handler still writes goes nowhere (neither to the client nor as an error).
 * `earlier` goes out with `response` as for {@link writeNodeResponse}.
 */
export function abandonCapturedResponse(
  res: ServerResponse,
  response: IdempotencyResponse,
  earlier?: OutgoingHttpHeaders,
): void {
  const target = res as CapturedResponse
  const capture = target[captureState]
  if (capture !== undefined) capture.ended = true
  answerOrDestroy(res, () => writeWhole(res, response, true, earlier))
  // writeWhole took the ended capture off to write: it goes back on.
  if (capture !== undefined && target[captureState] !== capture) installCapture(target, capture)
  // Setting a header once the answer went out throws ERR_HTTP_HEADERS_SENT, at a handler that
  // may only be finishing late (Express's res.send always sets some): dropped like its writes.
  res.setHeader = droppedHeader as typeof res.setHeader
  res.appendHeader = droppedHeader as typeof res.appendHeader
  res.removeHeader = droppedHeader as typeof res.removeHeader
}

function droppedHeader(this: ServerResponse): ServerResponse {
  return this
}

// What captureNodeResponse returns (a class: no closure per response).
class CaptureHandle {
  readonly #res: CapturedResponse
  readonly #capture: Capture

  constructor(res: CapturedResponse, capture: Capture) {
    this.#res = res
    this.#capture = capture
  }

  restore(): void {
    restoreCaptured(this.#res, this.#capture)
  }
}
