// Answers written straight to a socket, for requests node:http hands over without a
// ServerResponse: CONNECT and `Upgrade` requests (the listener's 'connect' and 'upgrade'
// events). Each is an RFC 9457 problem with `Connection: close`, and the socket is ended after
// it, so nothing more is read from a connection whose protocol the proxy did not agree to.

import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'

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
 * Writes {@link rawProblem} to `socket` and ends it (a socket already closed is left alone).
 *
 * @example
 * ```ts
 * server.on('upgrade', (req, socket) =>
 *   endWithProblem(socket, 400, 'REQUEST_UPGRADE_REFUSED', 'no upgrades here'))
 * ```
 */
export function endWithProblem(
  socket: Duplex,
  status: number,
  code: string,
  detail: string,
  extras?: RawProblemExtras,
): void {
  if (socket.destroyed || socket.writableEnded) return
  socket.end(rawProblem(status, code, detail, extras))
}
