// Answers written straight to a socket, for requests node:http hands over without a
// ServerResponse: CONNECT and `Upgrade` requests (the listener's 'connect' and 'upgrade'
// events). Each is an RFC 9457 problem with `Connection: close`, and the socket is ended after
// it: what the client still sends is read and dropped, never parsed as another request.

import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Clock } from '../../core/clock.js'

/** Extras of a raw problem answer. */
export interface RawProblemExtras {
  /** Headers to add (lower-case names and safe values: they are written as given). */
  readonly headers?: Readonly<Record<string, string>>
  /** Members to add to the problem body after `detail` (e.g. `service`). */
  readonly fields?: Readonly<Record<string, string>>
}

/**
 * The whole HTTP/1.1 response text of a problem: status line, `application/problem+json`
 * body `{ type, title, status, code, detail, ...extras.fields }`, `Connection: close`, and
 * `extras.headers`.
 *
 * @example
 * ```ts
 * socket.end(rawProblem(405, 'REQUEST_METHOD_NOT_ALLOWED', 'CONNECT is not supported'))
 * ```
 */
export function rawProblem(
  status: number,
  code: string,
  detail: string,
  extras: RawProblemExtras = {},
): string {
  const title = STATUS_CODES[status] ?? 'Error'
  const body = JSON.stringify({
    type: 'about:blank',
    title,
    status,
    code,
    detail,
    ...extras.fields,
  })
  let head = `HTTP/1.1 ${status} ${title}\r\ncontent-type: application/problem+json\r\ncontent-length: ${Buffer.byteLength(body)}\r\ncache-control: no-store\r\n`
  const headers = extras.headers ?? {}
  for (const name in headers) head += `${name}: ${headers[name]}\r\n`
  return `${head}connection: close\r\n\r\n${body}`
}

/**
 * How long a connection the proxy has answered and ended may stay open for its client to close
 * its side (node:http hands upgraded sockets over half-open, with no timeout of its own).
 */
export const lingerMs = 2_000

/**
 * Ends `socket` after writing `data`, and makes sure it closes: what the client still sends is
 * read and dropped (so its close is seen), and the socket is destroyed once both sides are
 * done, or after {@link lingerMs} on `clock`.
 *
 * @example
 * ```ts
 * endGracefully(socket, systemClock, 'HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n')
 * ```
 */
export function endGracefully(socket: Duplex, clock: Clock, data?: string | Buffer): void {
  if (socket.destroyed) return
  const linger = clock.setTimeout(() => socket.destroy(), lingerMs)
  socket.once('close', () => clock.clearTimeout(linger))
  socket.once('end', () => {
    if (socket.writableFinished) socket.destroy()
    else socket.once('finish', () => socket.destroy())
  })
  socket.resume()
  if (!socket.writableEnded) {
    if (data === undefined) socket.end()
    else socket.end(data)
  }
}

/**
 * Writes {@link rawProblem} to `socket` and ends it with {@link endGracefully} (a socket already
 * closed or ended is left alone).
 *
 * @example
 * ```ts
 * server.on('upgrade', (req, socket) =>
 *   endWithProblem(socket, systemClock, 400, 'REQUEST_UPGRADE_REFUSED', 'no upgrades here'))
 * ```
 */
export function endWithProblem(
  socket: Duplex,
  clock: Clock,
  status: number,
  code: string,
  detail: string,
  extras?: RawProblemExtras,
): void {
  if (socket.destroyed || socket.writableEnded) return
  endGracefully(socket, clock, rawProblem(status, code, detail, extras))
}
