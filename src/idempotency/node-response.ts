import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import { genericProblem } from './problem.js'
import type { IdempotencyRequest, IdempotencyResponse } from './types.js'

// Shared by the node:http and Express adapters (an Express response is a ServerResponse).

/** Reads a header of a node request as one string (repeated headers joined with ", "). */
export function nodeHeader(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name.toLowerCase()]
  if (value === undefined) return undefined
  return Array.isArray(value) ? value.join(', ') : value
}

/** Thrown by {@link readNodeBody} when the body is larger than allowed. */
export class BodyTooLargeError extends Error {}

const emptyBody = Buffer.alloc(0)

/** Reads a node request body into one Buffer, refusing more than `maxBytes`. */
export function readNodeBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  // Plain 'data'/'end' listeners: an async iterator over the stream costs several promises
  // per chunk, which shows in the per-request overhead of small JSON requests.
  return new Promise((resolve, reject) => {
    // Read already (by another middleware): nothing more will come.
    if (req.readableEnded) {
      resolve(emptyBody)
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    const cleanup = (): void => {
      req.off('data', onData)
      req.off('end', onEnd)
      req.off('error', onError)
      req.off('close', onClose)
    }
    const onData = (chunk: Buffer | string): void => {
      const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
      size += buffer.byteLength
      if (size > maxBytes) {
        cleanup()
        // Stop reading the rest; the caller answers 413 and closes the connection.
        req.pause()
        reject(new BodyTooLargeError())
        return
      }
      chunks.push(buffer)
    }
    const onEnd = (): void => {
      cleanup()
      resolve(
        chunks.length === 0 ? emptyBody : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks),
      )
    }
    const onError = (error: Error): void => {
      cleanup()
      reject(error)
    }
    // The client went away before the body ended.
    const onClose = (): void => {
      cleanup()
      reject(new Error('The request was aborted before its body was read'))
    }
    req.on('data', onData)
    req.on('end', onEnd)
    req.on('error', onError)
    req.on('close', onClose)
  })
}

/** Builds the core's request view of a node request. */
export function nodeRequest(
  req: IncomingMessage,
  route: string,
  body: Uint8Array,
  scope: string | undefined,
  signal: () => AbortSignal,
): IdempotencyRequest {
  return {
    method: req.method ?? 'GET',
    route,
    header: (name) => nodeHeader(req, name),
    body,
    get signal() {
      return signal()
    },
    native: req,
    ...(scope === undefined ? {} : { scope }),
  }
}

/**
 * The client's disconnect (the connection closing before the response finished) as an
 * AbortSignal, created only when first read: only a request that waits for a concurrent
 * duplicate needs one, and an AbortController per request shows in the cost of every request.
 * Call it before anything can await, so that no early close is missed.
 */
export function disconnectSignal(res: ServerResponse): () => AbortSignal {
  let controller: AbortController | undefined
  let gone = false
  res.once('close', () => {
    if (res.writableFinished) return
    gone = true
    controller?.abort(new Error('client disconnected'))
  })
  return () => {
    if (controller === undefined) {
      controller = new AbortController()
      if (gone) controller.abort(new Error('client disconnected'))
    }
    return controller.signal
  }
}

/** Writes a whole response, replacing any header the handler had set. */
export function writeNodeResponse(res: ServerResponse, response: IdempotencyResponse): void {
  if (res.headersSent || res.writableEnded) return
  for (const name of res.getHeaderNames()) res.removeHeader(name)
  const headers: OutgoingHttpHeaders = {}
  for (const [name, value] of Object.entries(response.headers)) {
    if (name === 'content-length' || name === 'transfer-encoding') continue
    headers[name] = typeof value === 'string' ? value : [...value]
  }
  headers['content-length'] = String(response.body.byteLength)
  res.writeHead(response.status, headers)
  res.end(response.body)
}

/** Writes a 500 problem unless something was already sent. */
export function writeInternalError(res: ServerResponse): void {
  writeNodeResponse(
    res,
    genericProblem(500, 'Internal Server Error', 'The request failed on the server'),
  )
}

type WriteCallback = (error?: Error | null) => void

function chunkToBuffer(chunk: unknown, encoding: unknown): Buffer | undefined {
  if (chunk === undefined || chunk === null || typeof chunk === 'function') return undefined
  if (typeof chunk === 'string') {
    return Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8')
  }
  if (chunk instanceof Uint8Array)
    return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
  return undefined
}

/**
 * Buffers everything a handler writes to `res` (status, headers, body) instead of sending it,
 * and calls `onEnd` once with the whole response when the handler calls `end()`. Nothing
 * reaches the client until the result is recorded: a client must never see a success whose
 * record then fails to commit. `restore()` puts the real methods back.
 */
export function captureNodeResponse(
  res: ServerResponse,
  onEnd: (response: IdempotencyResponse) => void,
): { restore(): void } {
  const original = { writeHead: res.writeHead, write: res.write, end: res.end }
  const chunks: Buffer[] = []
  let ended = false
  const restore = (): void => {
    res.writeHead = original.writeHead
    res.write = original.write
    res.end = original.end
  }
  // The replacements are assigned to the instance; their types are the overloaded originals'.
  res.writeHead = ((status: number, ...rest: unknown[]) => {
    res.statusCode = status
    let headers = rest[0]
    if (typeof headers === 'string') {
      res.statusMessage = headers
      headers = rest[1]
    }
    if (Array.isArray(headers)) {
      // Either [[name, value], ...] or a flat [name, value, name, value] list.
      if (Array.isArray(headers[0])) {
        for (const [name, value] of headers as [string, string][]) res.appendHeader(name, value)
      } else {
        for (let i = 0; i + 1 < headers.length; i += 2) {
          res.appendHeader(String(headers[i]), String(headers[i + 1]))
        }
      }
    } else if (typeof headers === 'object' && headers !== null) {
      for (const [name, value] of Object.entries(headers)) {
        if (value !== undefined) res.setHeader(name, value as string | number | string[])
      }
    }
    return res
  }) as typeof res.writeHead
  res.write = ((chunk: unknown, encoding?: unknown, callback?: unknown) => {
    const buffer = chunkToBuffer(chunk, encoding)
    if (buffer !== undefined && !ended) chunks.push(buffer)
    const done = (typeof encoding === 'function' ? encoding : callback) as WriteCallback | undefined
    if (done !== undefined) queueMicrotask(() => done(null))
    return true
  }) as typeof res.write
  res.end = ((chunk?: unknown, encoding?: unknown, callback?: unknown) => {
    const buffer = chunkToBuffer(chunk, encoding)
    if (ended) return res
    if (buffer !== undefined) chunks.push(buffer)
    ended = true
    const done = [chunk, encoding, callback].find((a) => typeof a === 'function') as
      | (() => void)
      | undefined
    if (done !== undefined) res.once('finish', done)
    const headers: Record<string, string | string[]> = {}
    for (const [name, value] of Object.entries(res.getHeaders())) {
      if (value === undefined) continue
      headers[name] = Array.isArray(value) ? value : String(value)
    }
    restore()
    onEnd({ status: res.statusCode, headers, body: Buffer.concat(chunks) })
    return res
  }) as typeof res.end
  return { restore }
}
