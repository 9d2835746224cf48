import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { freeLoopbackPort, listenOnLoopback } from '../support/loopback.js'
import { until as untilHolds } from '../support/until.js'

// Real node:http servers on 127.0.0.1:0 for the client's integration tests. Each records what
// it received, so tests can count hits and read the headers an attempt carried.

/** What a test server saw of one request. */
export interface Hit {
  readonly method: string
  readonly url: string
  readonly headers: IncomingMessage['headers']
  readonly body: string
  /** 1 for the first request the server received. */
  readonly n: number
}

/** Handles a request; `hit` is already recorded. */
export type Handler = (req: IncomingMessage, res: ServerResponse, hit: Hit) => void | Promise<void>

/** A running test server. */
export interface TestServer {
  readonly url: string
  readonly port: number
  readonly hits: Hit[]
  /** TCP connections accepted so far. */
  readonly connections: () => number
  readonly server: Server
  close(): Promise<void>
}

/** Starts a server on a free loopback port. */
export async function startServer(handler: Handler): Promise<TestServer> {
  const hits: Hit[] = []
  let connections = 0
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const hit: Hit = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        n: hits.length + 1,
      }
      hits.push(hit)
      Promise.resolve(handler(req, res, hit)).catch((error: unknown) => {
        if (!res.headersSent) res.writeHead(500)
        res.end(String(error))
      })
    })
  })
  server.on('connection', () => connections++)
  const port = await listenOnLoopback(server)
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    hits,
    connections: () => connections,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

/** A loopback port nothing listens on (a server bound it, then closed). */
export function closedPort(): Promise<number> {
  return freeLoopbackPort()
}

/** Resolves when `condition` holds, polling on real time (for network I/O only). */
export function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  return untilHolds(condition, 'condition', timeoutMs, 2)
}

/** A gate a handler can wait on; `open()` lets every waiter through. */
export class Gate {
  #open = false
  #waiters: Array<() => void> = []

  wait(): Promise<void> {
    if (this.#open) return Promise.resolve()
    return new Promise((resolve) => this.#waiters.push(resolve))
  }

  open(): void {
    this.#open = true
    for (const w of this.#waiters.splice(0)) w()
  }
}
