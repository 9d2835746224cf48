// A real node:http upstream that records every request it sees, so a test can prove that a
// refused request never reached it. It answers 200 with a JSON echo of what it received.

import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import { listenOnLoopback } from '../../support/loopback.js'

/** One request as the upstream saw it. */
export interface SeenRequest {
  readonly method: string
  readonly url: string
  readonly headers: IncomingHttpHeaders
  readonly rawHeaders: readonly string[]
  readonly body: string
}

/** A running counting upstream. */
export interface CountingUpstream {
  readonly port: number
  /** `http://127.0.0.1:<port>`. */
  readonly url: string
  readonly requests: SeenRequest[]
  readonly server: Server
  close(): Promise<void>
}

/**
 * Starts the upstream on 127.0.0.1 and a free port. `respond` may answer instead of the echo
 * (e.g. to hold a response open for drain tests).
 */
export async function startCountingUpstream(
  respond?: (seen: SeenRequest, res: import('node:http').ServerResponse) => void,
): Promise<CountingUpstream> {
  const requests: SeenRequest[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const seen: SeenRequest = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(chunks).toString('utf8'),
      }
      requests.push(seen)
      if (respond !== undefined) {
        respond(seen, res)
        return
      }
      const body = JSON.stringify({ method: seen.method, url: seen.url, headers: seen.headers })
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
      })
      res.end(body)
    })
  })
  const port = await listenOnLoopback(server)
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
