// A real node:http (or node:https) upstream whose answers a test scripts request by request,
// including the ways upstreams fail: a reset before the response, a reset in the middle of
// the body, a hang, a response head held until the test releases it, and plain error statuses
// (503 with Retry-After, 500). `refusedUrl()` gives a loopback URL nothing listens on.

import {
  createServer as createHttpServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http'
import { createServer as createHttpsServer, type ServerOptions } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import { freeLoopbackPort } from '../../support/loopback.js'

/** What the upstream does with one request. */
export type UpstreamAnswer =
  | {
      readonly kind: 'respond'
      readonly status?: number
      readonly headers?: Readonly<Record<string, string | string[]>>
      readonly body?: string | Buffer
    }
  /** Destroys the connection before any response byte. */
  | { readonly kind: 'reset' }
  /** Sends the head and part of a longer body (Content-Length or chunked), then resets. */
  | { readonly kind: 'reset-mid-body'; readonly chunked?: boolean }
  /** Never answers. */
  | { readonly kind: 'hang' }
  /** Streams `bytes` of body (Content-Length) as fast as the connection takes it. */
  | { readonly kind: 'stream'; readonly bytes: number }
  /** Answers (as `then`, default 200) only when the test calls `release()`. */
  | { readonly kind: 'hold'; readonly then?: UpstreamAnswer }

/** One request as the upstream saw it. */
export interface SeenUpstreamRequest {
  readonly method: string
  readonly url: string
  readonly headers: IncomingHttpHeaders
  readonly body: string
  /** The peer certificate's subject CN when the client sent one (mTLS). */
  readonly clientCertCn: string | undefined
}

/** A running scripted upstream. */
export interface FaultyUpstream {
  readonly port: number
  /** `http(s)://<host>:<port>`. */
  readonly url: string
  readonly requests: SeenUpstreamRequest[]
  /** Answers for the next requests, in order; afterwards `fallback` answers. */
  readonly script: UpstreamAnswer[]
  /** What answers when the script is empty. Default: 200 with body `ok <url>`. */
  fallback: UpstreamAnswer
  /** Releases every held response (in arrival order). Returns how many. */
  release(): number
  /** Held responses waiting for `release()`. */
  readonly held: number
  /** Body bytes handed to the socket by `stream` answers so far. */
  streamed: number
  /** Resolves when the upstream has seen `n` requests in all. */
  waitForRequests(n: number): Promise<void>
  readonly server: Server
  close(): Promise<void>
}

/** Options of {@link startFaultyUpstream}. */
export interface FaultyUpstreamOptions {
  /** Serve HTTPS with these options (cert, key, ca, requestCert...). */
  readonly tls?: ServerOptions
  readonly fallback?: UpstreamAnswer
  /** Address to listen on (any 127.0.0.0/8 address works on Linux). @default '127.0.0.1' */
  readonly host?: string
  /** Port to listen on. @default 0 (a free one) */
  readonly port?: number
}

const okAnswer: UpstreamAnswer = { kind: 'respond' }

/** Starts a scripted upstream on 127.0.0.1 and a free port. */
export async function startFaultyUpstream(
  options: FaultyUpstreamOptions = {},
): Promise<FaultyUpstream> {
  const requests: SeenUpstreamRequest[] = []
  const script: UpstreamAnswer[] = []
  const heldQueue: Array<() => void> = []
  const waiters: Array<{ n: number; resolve: () => void }> = []
  const sockets = new Set<Socket>()
  const answer = (a: UpstreamAnswer, req: IncomingMessage, res: ServerResponse): void => {
    switch (a.kind) {
      case 'respond': {
        const body = a.body ?? `ok ${req.url}`
        res.writeHead(a.status ?? 200, {
          'content-type': 'text/plain',
          'content-length': Buffer.byteLength(body),
          ...a.headers,
        })
        res.end(body)
        return
      }
      case 'reset':
        req.socket.destroy()
        return
      case 'reset-mid-body': {
        if (a.chunked === true) res.writeHead(200, { 'content-type': 'text/plain' })
        else res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 1000 })
        res.write('x'.repeat(100))
        // Let the partial body reach the proxy before the connection dies.
        setImmediate(() => setImmediate(() => req.socket.destroy()))
        return
      }
      case 'hang':
        return
      case 'stream': {
        res.writeHead(200, {
          'content-type': 'application/octet-stream',
          'content-length': a.bytes,
        })
        const chunk = Buffer.alloc(64 * 1024, 'y')
        let left = a.bytes
        const pump = (): void => {
          while (left > 0) {
            const piece = left >= chunk.length ? chunk : chunk.subarray(0, left)
            left -= piece.length
            upstream.streamed += piece.length
            if (!res.write(piece)) {
              res.once('drain', pump)
              return
            }
          }
          res.end()
        }
        pump()
        return
      }
      case 'hold':
        heldQueue.push(() => answer(a.then ?? okAnswer, req, res))
        return
    }
  }
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const peer = (
        req.socket as Socket & { getPeerCertificate?: () => { subject?: { CN?: string } } }
      ).getPeerCertificate?.()
      requests.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        clientCertCn: peer?.subject?.CN,
      })
      for (const waiter of [...waiters]) {
        if (requests.length >= waiter.n) {
          waiters.splice(waiters.indexOf(waiter), 1)
          waiter.resolve()
        }
      }
      answer(script.shift() ?? upstream.fallback, req, res)
    })
  }
  const server =
    options.tls === undefined ? createHttpServer(handler) : createHttpsServer(options.tls, handler)
  server.on(options.tls === undefined ? 'connection' : 'secureConnection', (socket: Socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  // A TLS handshake the client aborts (verification failed) is expected in tests.
  server.on('tlsClientError', () => {})
  const host = options.host ?? '127.0.0.1'
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, host, resolve))
  const port = (server.address() as AddressInfo).port
  const upstream: FaultyUpstream = {
    port,
    url: `${options.tls === undefined ? 'http' : 'https'}://${host}:${port}`,
    requests,
    script,
    fallback: options.fallback ?? okAnswer,
    release() {
      const all = heldQueue.splice(0)
      for (const go of all) go()
      return all.length
    },
    get held() {
      return heldQueue.length
    },
    streamed: 0,
    waitForRequests(n) {
      if (requests.length >= n) return Promise.resolve()
      return new Promise<void>((resolve) => waiters.push({ n, resolve }))
    },
    server,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.closeAllConnections?.()
        server.close(() => resolve())
      }),
  }
  return upstream
}

/** A loopback URL on a port that was free a moment ago, so connecting is refused. */
export async function refusedUrl(): Promise<string> {
  return `http://127.0.0.1:${await freeLoopbackPort()}`
}
