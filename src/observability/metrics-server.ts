import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type Clock, maxTimerDelayMs, within } from '../core/clock.js'
import { BreakwaterError, InvalidOptionError } from '../core/errors.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import type { MetricsRegistry } from './metrics.js'

/** Options of {@link startMetricsServer}. */
export interface MetricsServerOptions {
  /** The TCP port; 0 picks a free one (read it from `server.port`). Required. */
  readonly port: number
  /**
   * The address to listen on. Loopback by default: metrics say a lot about a system, so
   * exposing them further is a decision to make explicitly.
   * @default '127.0.0.1'
   */
  readonly host?: string | undefined
  /** The metrics served at `GET /metrics`. Required. */
  readonly registry: MetricsRegistry
  /**
   * Decides `GET /healthz`: 200 `ok` when it returns true, 503 `unhealthy` otherwise (or when
   * it throws, or does not answer within `healthTimeoutMs`). Probes that arrive while a check
   * is unsettled share it rather than starting one each.
   * @default () => true
   */
  readonly health?: (() => boolean | Promise<boolean>) | undefined
  /**
   * How long `GET /healthz` waits for `health`: past it the answer is 503 and `onError` gets
   * a {@link HealthCheckTimeoutError}, rather than the probe held open until it gives up.
   * @default 5000
   */
  readonly healthTimeoutMs?: number | undefined
  /**
   * Times `healthTimeoutMs`.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * Receives errors while rendering metrics or checking health (the request gets a 500 or 503).
   * What it throws is ignored: the request is answered all the same.
   * @default ignore them
   */
  readonly onError?: ((error: unknown) => void) | undefined
}

/** The keys MetricsServerOptions takes (internal: not exported from the package root). */
export const metricsServerOptions = optionKeys<MetricsServerOptions>({
  port: true,
  host: true,
  registry: true,
  health: true,
  healthTimeoutMs: true,
  clock: true,
  onError: true,
})

/**
 * The health check did not settle within `healthTimeoutMs` (code `TIMEOUT`, retryable):
 * `/healthz` answered 503. Given to `onError`.
 */
export class HealthCheckTimeoutError extends BreakwaterError {
  /** The timeout that passed, in milliseconds. */
  readonly timeoutMs: number

  constructor(timeoutMs: number) {
    super(
      'TIMEOUT',
      `the health check did not answer within ${timeoutMs} ms; /healthz answered 503`,
      {
        retryable: true,
      },
    )
    this.timeoutMs = timeoutMs
  }
}

/** A running metrics server; see {@link startMetricsServer}. */
export interface MetricsServer {
  /** The bound port (the real one when `port` was 0). */
  readonly port: number
  /** The bound address. */
  readonly host: string
  /** `http://host:port`, e.g. for logs; add `/metrics`. */
  readonly url: string
  /** Stops listening and closes open connections. */
  close(): Promise<void>
}

/**
 * Serves a registry over HTTP for Prometheus: `GET /metrics` (text format 0.0.4) and
 * `GET /healthz` (200 `ok` or 503). `HEAD` works on both; other paths answer 404, other
 * methods 405. Listens on loopback unless `host` says otherwise. Resolves once listening;
 * rejects when the port cannot be bound (`EADDRINUSE`, `EACCES`).
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const registry = createMetricsRegistry()
 * const server = await startMetricsServer({ port: 9464, registry })
 * // curl http://127.0.0.1:9464/metrics
 * await server.close()
 * ```
 */
export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  checkObject('metricsServer', options)
  // A misspelt option was dropped without a word and its default used instead.
  checkOptionKeys('metricsServer', options, metricsServerOptions)
  const port = checkInteger('metricsServer.port', options.port, 0, 65_535)
  const host = options.host ?? '127.0.0.1'
  if (typeof host !== 'string' || host === '')
    throw new InvalidOptionError('metricsServer.host', 'a host name or address', host)
  const registry = options.registry
  if (typeof registry !== 'object' || registry === null || typeof registry.render !== 'function')
    throw new InvalidOptionError('metricsServer.registry', 'a MetricsRegistry', registry)
  const health =
    options.health === undefined
      ? () => true
      : checkFunction<() => boolean | Promise<boolean>>('metricsServer.health', options.health)
  const healthTimeoutMs = checkInteger(
    'metricsServer.healthTimeoutMs',
    options.healthTimeoutMs ?? 5_000,
    1,
    maxTimerDelayMs,
  )
  const clock = checkClock('metricsServer.clock', options.clock)
  const onErrorOption =
    options.onError === undefined
      ? () => {}
      : checkFunction<(error: unknown) => void>('metricsServer.onError', options.onError)
  // onError is the caller's code: one that throws would skip the reply (the scrape hangs until
  // requestTimeout) and reject the request handler with nothing to catch it.
  const onError = (error: unknown): void => {
    try {
      onErrorOption(error)
    } catch {}
  }

  // One check at a time: probes that arrive while it is unsettled (a prober asking every second
  // while a dependency hangs) wait for that check instead of piling up checks of their own. Its
  // failure is reported once, here; each probe reports only its own timeout.
  let checking: Promise<boolean> | undefined
  const checkHealth = (): Promise<boolean> => {
    if (checking === undefined) {
      const run = (async () => (await health()) === true)()
      checking = run
      const settled = (): void => {
        if (checking === run) checking = undefined
      }
      run.then(settled, (error: unknown) => {
        settled()
        onError(error)
      })
    }
    return checking
  }

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const path = (request.url ?? '/').split('?')[0]
    const method = request.method ?? 'GET'
    if (path !== '/metrics' && path !== '/healthz') {
      reply(response, 404, 'text/plain; charset=utf-8', 'not found\n')
      return
    }
    if (method !== 'GET' && method !== 'HEAD') {
      response.setHeader('allow', 'GET, HEAD')
      reply(response, 405, 'text/plain; charset=utf-8', 'method not allowed\n')
      return
    }
    const head = method === 'HEAD'
    if (path === '/healthz') {
      let ok = false
      try {
        ok = await within(
          checkHealth(),
          clock,
          healthTimeoutMs,
          () => new HealthCheckTimeoutError(healthTimeoutMs),
        )
      } catch (error) {
        // The check's own failure was reported where it settled.
        if (error instanceof HealthCheckTimeoutError) onError(error)
      }
      reply(
        response,
        ok ? 200 : 503,
        'text/plain; charset=utf-8',
        ok ? 'ok\n' : 'unhealthy\n',
        head,
      )
      return
    }
    let text: string
    try {
      text = await registry.render()
    } catch (error) {
      onError(error)
      reply(response, 500, 'text/plain; charset=utf-8', 'metrics unavailable\n', head)
      return
    }
    reply(response, 200, registry.contentType, text, head)
  }

  const server = createServer((request, response) => {
    // The body of a GET is never read: drain it so the connection stays usable.
    request.resume()
    handle(request, response).catch((error: unknown) => {
      onError(error)
      if (!response.headersSent) reply(response, 500, 'text/plain; charset=utf-8', 'error\n')
      else response.destroy()
    })
  })
  // A scraper needs a few milliseconds; a client that holds a connection without finishing its
  // request is cut off early.
  server.headersTimeout = 10_000
  server.requestTimeout = 15_000
  server.keepAliveTimeout = 5_000

  await new Promise<void>((resolve, reject) => {
    const onListenError = (error: Error): void => reject(error)
    server.once('error', onListenError)
    server.listen(port, host, () => {
      server.off('error', onListenError)
      resolve()
    })
  })
  server.on('error', onError)
  const address = server.address() as AddressInfo
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address
  let closing: Promise<void> | undefined
  return {
    port: address.port,
    host: address.address,
    url: `http://${shownHost}:${address.port}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
      return closing
    },
  }
}

function reply(
  response: ServerResponse,
  status: number,
  contentType: string,
  body: string,
  head = false,
): void {
  response.statusCode = status
  response.setHeader('content-type', contentType)
  response.setHeader('content-length', Buffer.byteLength(body))
  response.setHeader('cache-control', 'no-store')
  response.end(head ? undefined : body)
}
