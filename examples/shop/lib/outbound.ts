// The seam for the services' outbound calls. With the breakwater proxy running, a service
// sends every call to the proxy's ambassador listener (`http://127.0.0.1:<port>/<service>/...`)
// and the proxy applies timeouts, retries with jitter and a budget, the breaker and the
// bulkhead: the service itself carries no policy. Without the proxy, the same policies run
// in-process in breakwater/http's client, one stack per downstream service. Either way the
// service code only calls `client.request('payments', ...)`.
import type { CircuitState } from 'breakwater'
import { createHttpClient, type HttpClient, type HttpServiceOptions } from 'breakwater/http'
import type { ShopEnv } from './env.js'

/** One breaker state change, for the dashboard's timeline. */
export interface BreakerTransition {
  readonly at: number
  readonly downstream: string
  readonly from: CircuitState
  readonly to: CircuitState
}

/** What the dashboard shows of a process's outbound calls, per downstream service. */
export interface OutboundState {
  /** `in-process` (breakwater/http) or `proxy` (the policies run in the proxy). */
  readonly via: 'in-process' | 'proxy'
  readonly downstreams: Readonly<
    Record<
      string,
      {
        readonly breaker: CircuitState | 'disabled'
        readonly running: number
        readonly queued: number
        readonly retryBudget: number | undefined
        readonly retries: number
        readonly rejected: number
        readonly failures: number
      }
    >
  >
  readonly transitions: readonly BreakerTransition[]
}

/** A process's outbound client and the figures the dashboard shows about it. */
export interface Outbound {
  readonly client: HttpClient
  state(): OutboundState
  close(): Promise<void>
}

// The policies of one downstream when they run in-process. Short timeouts and a breaker that
// opens after five failures in a row keep a dead payments service from tying the saga workers
// up; the retry budget caps retries at 20% of calls (plus 5/s) so retries cannot multiply load
// on a service that is already struggling.
function policies(baseUrl: string): HttpServiceOptions {
  return {
    baseUrl,
    connectTimeoutMs: 500,
    attemptTimeoutMs: 1_500,
    overallTimeoutMs: 4_000,
    retry: { maxAttempts: 3, baseDelayMs: 50, maxDelayMs: 500, jitter: 'full' },
    retryBudget: { ratio: 0.2, minRetriesPerSecond: 5 },
    circuitBreaker: { window: { kind: 'consecutive', failures: 5 }, cooldownMs: 2_000 },
    bulkhead: { maxConcurrent: 8, maxQueued: 16, queueTimeoutMs: 1_000 },
  }
}

/** Creates the outbound client for the `downstreams` this process calls. */
export function createOutbound(env: ShopEnv, downstreams: readonly string[]): Outbound {
  const services: Record<string, HttpServiceOptions> = {}
  for (const name of downstreams) {
    if (env.ambassadorUrl !== undefined) {
      // The proxy owns the policies; the client only keeps a generous overall bound.
      services[name] = {
        baseUrl: `${env.ambassadorUrl}/${name}`,
        overallTimeoutMs: 10_000,
        attemptTimeoutMs: 10_000,
        retry: false,
        circuitBreaker: false,
        bulkhead: false,
        retryBudget: false,
      }
    } else {
      const base = env.peers[name]
      if (base === undefined) throw new Error(`no address for downstream "${name}"`)
      services[name] = policies(base)
    }
  }
  const client = createHttpClient({ services })
  const counts = new Map(downstreams.map((d) => [d, { retries: 0, rejected: 0, failures: 0 }]))
  const transitions: BreakerTransition[] = []
  client.events.on((event) => {
    const count = counts.get(event.service)
    if (count === undefined) return
    if (event.type === 'retry') count.retries++
    else if (event.type === 'rejected') count.rejected++
    else if (event.type === 'failure') count.failures++
    else if (event.type === 'stateChange') {
      transitions.push({
        at: Date.now(),
        downstream: event.service,
        from: event.from,
        to: event.to,
      })
      if (transitions.length > 30) transitions.shift()
    }
  })
  return {
    client,
    state: () => {
      const snapshot = client.state()
      const result: Record<string, OutboundState['downstreams'][string]> = {}
      for (const name of downstreams) {
        const s = snapshot[name]
        const c = counts.get(name)!
        result[name] = {
          breaker: s?.breaker ?? 'disabled',
          running: s?.bulkhead?.running ?? 0,
          queued: s?.bulkhead?.queued ?? 0,
          retryBudget: s?.retryBudget,
          ...c,
        }
      }
      return {
        via: env.ambassadorUrl === undefined ? 'in-process' : 'proxy',
        downstreams: result,
        transitions,
      }
    },
    close: () => client.close(),
  }
}

/**
 * Whether a failed call is worth another attempt later (by the saga's own step retry): network
 * failures, timeouts, 5xx and the policies' fast failures (open breaker, full bulkhead, spent
 * retry budget) are; a 4xx answer (402 declined card, 409 out of stock) is final, except 408
 * and 429.
 */
export function worthRetrying(error: unknown): boolean {
  const status = (error as { status?: unknown } | undefined)?.status
  if (typeof status !== 'number' || status >= 500) return true
  return status === 408 || status === 429
}
