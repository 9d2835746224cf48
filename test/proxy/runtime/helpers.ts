// Helpers for the runtime and end-to-end tests: upstreams that say who they are, and a plain
// node:http client (one connection per request, so no pooled socket outlives a test).
import {
  createServer,
  type IncomingHttpHeaders,
  request,
  type Server,
  type ServerResponse,
} from 'node:http'
import { listenOnLoopback } from '../../support/loopback.js'
import { until } from '../../support/until.js'

/** A real upstream that answers `{ service, method, url, pid }` unless `hold` keeps it open. */
export interface NamedUpstream {
  readonly name: string
  readonly url: string
  readonly port: number
  readonly seen: { method: string; url: string; headers: IncomingHttpHeaders }[]
  /** Responses held open by `hold`, answered by `release()`. */
  release(): void
  close(): Promise<void>
}

export async function startNamedUpstream(
  name: string,
  options: { hold?: (url: string) => boolean; status?: number } = {},
): Promise<NamedUpstream> {
  const seen: NamedUpstream['seen'] = []
  const held: (() => void)[] = []
  const server: Server = createServer((req, res: ServerResponse) => {
    req.resume()
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers })
      const answer = (): void => {
        const body = JSON.stringify({ service: name, method: req.method, url: req.url })
        res.writeHead(options.status ?? 200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
        })
        res.end(body)
      }
      if (options.hold?.(req.url ?? '') === true) held.push(answer)
      else answer()
    })
  })
  const port = await listenOnLoopback(server)
  return {
    name,
    port,
    url: `http://127.0.0.1:${port}`,
    seen,
    release: () => {
      for (const answer of held.splice(0)) answer()
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

export interface SimpleResponse {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly text: string
  json<T = Record<string, unknown>>(): T
}

/** One request on a fresh connection. */
export function http(
  port: number,
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: string; host?: string } = {},
): Promise<SimpleResponse> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: options.host ?? '127.0.0.1',
        port,
        path,
        method: options.method ?? 'GET',
        headers: { connection: 'close', ...options.headers },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text,
            json: <T>() => JSON.parse(text) as T,
          })
        })
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.end(options.body)
  })
}

/** Polls `check` every 25 ms until it returns true, or fails after `timeoutMs`. */
export function eventually(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  return until(check, what, timeoutMs, 25)
}

/** A log output that keeps every line. */
export function captureLog(): {
  write(text: string): void
  text(): string
  lines(): Record<string, unknown>[]
} {
  let all = ''
  return {
    write(text: string) {
      all += text
    },
    text: () => all,
    lines: () =>
      all
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  }
}

/** Settles to the promise's outcome, so a test can look at it without awaiting it yet. */
export function outcome<T>(
  promise: Promise<T>,
): () => { done: boolean; value?: T; error?: unknown } {
  const state: { done: boolean; value?: T; error?: unknown } = { done: false }
  promise.then(
    (value) => Object.assign(state, { done: true, value }),
    (error: unknown) => Object.assign(state, { done: true, error }),
  )
  return () => state
}
