// A raw-socket HTTP client for hardening tests: it writes exactly the bytes given (no client
// library fixing them up) and reads the answer off the wire.

import { connect as netConnect, type Socket } from 'node:net'
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls'

/** One response as read from the socket. */
export interface RawResponse {
  /** Status code from the status line, undefined when nothing parseable came back. */
  readonly status: number | undefined
  readonly statusLine: string
  /** Header names lower-cased; repeated names joined with `, `. */
  readonly headers: Record<string, string>
  readonly body: string
  /** Everything received, as latin1 text. */
  readonly raw: string
  /** True when the server closed the connection (before the timeout). */
  readonly closed: boolean
  /** True when the timeout ended the wait. */
  readonly timedOut: boolean
}

/** Options of {@link sendRaw}. */
export interface SendRawOptions {
  /** @default '127.0.0.1' */
  readonly host?: string
  /** Connect with TLS using these options (servername, ca, cert, key...). */
  readonly tls?: ConnectionOptions
  /** Give up waiting after this long (ms); the result then has `timedOut: true`. @default 5000 */
  readonly timeoutMs?: number
  /** Pause between the chunks of `bytes` when it is an array (ms). @default 0 */
  readonly gapMs?: number
  /**
   * Resolve as soon as one complete response is read, without waiting for the server to
   * close. @default true
   */
  readonly untilFirstResponse?: boolean
}

/**
 * Opens a connection, writes `bytes` (an array is written chunk by chunk with `gapMs` between)
 * and resolves with the first complete response, or whatever arrived when the server closed
 * the connection or the timeout passed.
 */
export async function sendRaw(
  port: number,
  bytes: string | Buffer | readonly (string | Buffer)[],
  options: SendRawOptions = {},
): Promise<RawResponse> {
  const socket = await openSocket(port, options)
  const chunks = typeof bytes === 'string' || Buffer.isBuffer(bytes) ? [bytes] : bytes
  const untilFirst = options.untilFirstResponse ?? true
  return await new Promise<RawResponse>((resolve) => {
    let received = Buffer.alloc(0)
    let settled = false
    const finish = (closed: boolean, timedOut: boolean): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      resolve(parseResponse(received, closed, timedOut))
    }
    const timer = setTimeout(() => finish(false, true), options.timeoutMs ?? 5_000)
    socket.on('data', (data: Buffer) => {
      received = Buffer.concat([received, data])
      if (untilFirst && responseComplete(received)) finish(false, false)
    })
    socket.on('close', () => finish(true, false))
    socket.on('error', () => finish(true, false))
    void (async () => {
      for (const [index, chunk] of chunks.entries()) {
        if (socket.destroyed) return
        if (index > 0 && (options.gapMs ?? 0) > 0) {
          await new Promise((r) => setTimeout(r, options.gapMs))
        }
        if (socket.destroyed) return
        socket.write(chunk)
      }
    })()
  })
}

/** Opens a plain or TLS socket and waits until it is connected (TLS: handshake done). */
export function openSocket(port: number, options: SendRawOptions = {}): Promise<Socket> {
  const host = options.host ?? '127.0.0.1'
  return new Promise<Socket>((resolve, reject) => {
    const socket =
      options.tls === undefined
        ? netConnect({ port, host })
        : tlsConnect({ port, host, ...options.tls })
    const ready = options.tls === undefined ? 'connect' : 'secureConnect'
    socket.once(ready, () => {
      socket.off('error', reject)
      resolve(socket)
    })
    socket.once('error', reject)
  })
}

// Interim 1xx responses (100 Continue) come before the final one; both helpers skip them.
function skipInterim(data: Buffer): Buffer {
  let rest = data
  while (/^HTTP\/\d\.\d 1\d\d/.test(rest.subarray(0, 12).toString('latin1'))) {
    const end = rest.indexOf('\r\n\r\n')
    if (end === -1) return rest
    rest = rest.subarray(end + 4)
  }
  return rest
}

/**
 * Whether `data` holds a whole final response (head plus a Content-Length or chunked body),
 * after any interim 1xx responses.
 */
export function responseComplete(whole: Buffer): boolean {
  const data = skipInterim(whole)
  const end = data.indexOf('\r\n\r\n')
  if (end === -1) return false
  const head = data.subarray(0, end).toString('latin1').toLowerCase()
  const rest = data.subarray(end + 4)
  const length = /\r\ncontent-length:\s*(\d+)/.exec(head)
  if (length !== null) return rest.length >= Number(length[1])
  if (/\r\ntransfer-encoding:\s*chunked/.test(head)) return rest.includes('0\r\n\r\n')
  // 204 and 304 have no body; others end with the connection.
  const status = Number(/^http\/\d\.\d (\d{3})/.exec(head)?.[1])
  return status === 204 || status === 304
}

/** Parses the first final response in `data` (interim 1xx responses skipped; `raw` has all). */
export function parseResponse(whole: Buffer, closed = true, timedOut = false): RawResponse {
  const data = skipInterim(whole)
  const raw = data.toString('latin1')
  const end = raw.indexOf('\r\n\r\n')
  const head = end === -1 ? raw : raw.slice(0, end)
  const lines = head.split('\r\n')
  const statusLine = lines[0] ?? ''
  const match = /^HTTP\/\d\.\d (\d{3})/.exec(statusLine)
  // No prototype: a header named `constructor` is a header here too.
  const headers: Record<string, string> = Object.create(null)
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':')
    if (colon === -1) continue
    const name = line.slice(0, colon).trim().toLowerCase()
    const value = line.slice(colon + 1).trim()
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`
  }
  let body = end === -1 ? '' : raw.slice(end + 4)
  if (headers['content-length'] !== undefined) {
    body = body.slice(0, Number(headers['content-length']))
  } else if (headers['transfer-encoding']?.includes('chunked')) {
    body = dechunk(body)
  }
  return {
    status: match === null ? undefined : Number(match[1]),
    statusLine,
    headers,
    body,
    raw: whole.toString('latin1'),
    closed,
    timedOut,
  }
}

function dechunk(text: string): string {
  let out = ''
  let rest = text
  for (;;) {
    const lineEnd = rest.indexOf('\r\n')
    if (lineEnd === -1) return out
    const size = Number.parseInt(rest.slice(0, lineEnd), 16)
    if (!Number.isFinite(size) || size === 0) return out
    out += rest.slice(lineEnd + 2, lineEnd + 2 + size)
    rest = rest.slice(lineEnd + 2 + size + 2)
  }
}
