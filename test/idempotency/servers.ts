// Real HTTP servers on 127.0.0.1:0 and a client for the idempotency tests.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Agent, request } from 'undici'

/** A listening server. */
export interface Listening {
  readonly url: string
  close(): Promise<void>
}

/** Starts a node:http server with `listener` on a free loopback port. */
export async function listen(
  listener: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<Listening> {
  return listenServer(createServer(listener))
}

/** Listens with an existing server on a free loopback port. */
export async function listenServer(server: Server): Promise<Listening> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    // A deep accept queue: the tests open a thousand connections at once.
    server.listen({ port: 0, host: '127.0.0.1', backlog: 2048 }, () => resolve())
  })
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

/** A response as the tests compare them. */
export interface Reply {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: Buffer
  readonly text: string
}

// One connection per request, as many as asked for: a thousand requests are really in flight
// at once.
export const agent = new Agent({ connections: null, pipelining: 1, keepAliveTimeout: 1_000 })

/** Sends one request and reads the whole response. */
export async function send(
  url: string,
  options: {
    readonly method?: string
    readonly key?: string
    readonly body?: string
    /** An array value is sent as one header line per element. */
    readonly headers?: Record<string, string | string[]>
  } = {},
): Promise<Reply> {
  const headers: Record<string, string | string[]> = {
    'content-type': 'application/json',
    ...options.headers,
  }
  if (options.key !== undefined) headers['idempotency-key'] = options.key
  const response = await request(url, {
    method: (options.method ?? 'POST') as 'POST',
    headers,
    body: options.body ?? null,
    dispatcher: agent,
  })
  const body = Buffer.from(await response.body.arrayBuffer())
  const flat: Record<string, string> = {}
  for (const [name, value] of Object.entries(response.headers)) {
    if (value !== undefined) flat[name] = Array.isArray(value) ? value.join(', ') : value
  }
  return { status: response.statusCode, headers: flat, body, text: body.toString('utf8') }
}

/** A promise with its resolver, for holding handlers at a chosen point. */
export { gate } from '../support/gate.js'
