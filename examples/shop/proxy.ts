// The breakwater proxy in front of the shop (breakwater/proxy's startProxy, in the demo
// process). Two listeners:
//   - gateway (the strangler fig): `/orders` split between legacy and the new orders service
//     by weight, sticky per customer; `/catalog` served by legacy and shadowed to the new
//     inventory catalog, the answers compared with noise filtered out; the rest to legacy.
//   - ambassador: the services' outbound calls (`/<service>/<path>`), with timeouts, retries
//     with full jitter and a retry budget, a circuit breaker and a bulkhead per service.
// This module is the one seam between the demo and the proxy: the rest of the demo sees a
// ShopProxy, or none with `--no-proxy` (the services then run the same policies in-process).
import { type StartProxyOptions, startProxy } from 'breakwater/proxy'

/** What the dashboard shows of one proxied service. */
export interface ProxyServiceView {
  readonly name: string
  readonly breaker: string
  readonly running: number
  readonly queued: number
  readonly max: number
  readonly retryBudgetLeft: number | undefined
}

/** What the dashboard shows of one strangler route. */
export interface ProxyRouteView {
  readonly name: string
  readonly targets: readonly { readonly service: string; readonly weight: number }[]
  readonly overridden: boolean
  readonly requestsByService: Readonly<Record<string, number>>
  readonly shadow:
    | {
        readonly compared: number
        readonly mismatches: number
        readonly examples: readonly {
          readonly target: string
          readonly differences: readonly string[]
        }[]
      }
    | undefined
  /** Requests whose Idempotency-Key had been seen, sent where the key's first one went. */
  readonly retryAffinity?:
    | { readonly pinnedKeys: number; readonly repeatsFollowed: number }
    | undefined
}

/** The running proxy, as the demo uses it. */
export interface ShopProxy {
  /** Where clients send shop requests (the gateway listener). */
  readonly gatewayUrl: string
  /** Where services send their outbound calls (the ambassador listener). */
  readonly ambassadorUrl: string
  /** The YAML the proxy runs with. */
  readonly configYaml: string
  /** Sends `percent` % of `/orders` to the new orders service (sticky per customer). */
  setNewOrdersShare(percent: number): void
  /** Rolls `/orders` back: every order to legacy at once (requests in flight finish). */
  rollback(): void
  services(): ProxyServiceView[]
  /** Retries and failed answers (5xx to the caller) per service, from the proxy's metrics. */
  counters(): Promise<Record<string, { retries: number; failed: number }>>
  routes(): ProxyRouteView[]
  close(): Promise<void>
}

// The proxy logs JSON lines; in the demo only its warnings and errors matter, as live lines.
function demoLogger(log: (line: string) => void): NonNullable<StartProxyOptions['logger']> {
  const logger: NonNullable<StartProxyOptions['logger']> = {
    level: 'warn',
    isLevelEnabled: (level) => level === 'warn' || level === 'error',
    debug: () => {},
    info: () => {},
    warn: (msg) => log(`proxy: ${msg}`),
    error: (msg) => log(`proxy: ${msg}`),
    child: () => logger,
  }
  return logger
}

/** The YAML the demo runs the proxy with: a config like any `breakwater proxy --config` file. */
export function proxyConfigYaml(peers: Readonly<Record<string, string>>, newShare: number): string {
  const policies = `
    timeouts: { connectMs: 500, readMs: 1500, overallMs: 4000 }
    retry: { attempts: 3, baseDelayMs: 50, maxDelayMs: 500, budget: { ratio: 0.2, minPerSecond: 5 } }
    circuitBreaker: { failureThreshold: 5, cooldownMs: 2000, halfOpenProbes: 1 }
    bulkhead: { maxConcurrent: 8, maxQueue: 16, connectionsPerEndpoint: 8 }`
  const services = Object.entries(peers)
    .map(([name, url]) => `  ${name}:\n    endpoints: [${url}]${policies}`)
    .join('\n')
  return `services:
${services}
listeners:
  - { name: ambassador, role: ambassador, port: 0 }
  - name: gateway
    role: gateway
    port: 0
    routes:
      - name: orders
        match: { prefix: /orders }
        targets: [{ service: legacy, weight: ${100 - newShare} }, { service: orders, weight: ${newShare} }]
        sticky: { header: x-customer-id }
      - name: catalog
        match: { prefix: /catalog, methods: [GET] }
        targets: [{ service: legacy, weight: 1 }]
        shadow: { service: inventory, ignoreFields: [/generatedAt] }
      - { name: legacy, match: { prefix: / }, targets: [{ service: legacy, weight: 1 }] }
accessLog: false
drainTimeoutMs: 2000
`
}

/** Starts the proxy for these upstreams (`peers`: service name to base URL). */
export async function startShopProxy(
  peers: Readonly<Record<string, string>>,
  newShare: number,
  log: (line: string) => void,
): Promise<ShopProxy> {
  const configYaml = proxyConfigYaml(peers, newShare)
  const proxy = await startProxy({
    config: configYaml,
    logger: demoLogger(log),
  })
  const url = (listener: string): string => {
    const { host, port } = proxy.address(listener)
    return `http://${host}:${port}`
  }
  const split = (percent: number) => [
    { service: 'legacy', weight: 100 - percent },
    { service: 'orders', weight: percent },
  ]
  return {
    gatewayUrl: url('gateway'),
    ambassadorUrl: url('ambassador'),
    configYaml,
    setNewOrdersShare: (percent) => proxy.switchRoute('orders', split(percent)),
    rollback: () => proxy.switchRoute('orders', split(0)),
    services: () =>
      proxy.services().map((s) => ({
        name: s.name,
        breaker: s.breaker,
        running: s.bulkhead.running,
        queued: s.bulkhead.queued,
        max: s.bulkhead.max,
        retryBudgetLeft: s.retryBudgetLeft,
      })),
    counters: async () => {
      const counters: Record<string, { retries: number; failed: number }> = {}
      const of = (service: string) => {
        counters[service] ??= { retries: 0, failed: 0 }
        return counters[service]
      }
      // Prometheus text: `name{labels} value` per line.
      for (const line of (await proxy.metricsText()).split('\n')) {
        const retry = /^breakwater_proxy_upstream_retries_total\{service="([^"]+)"\} (\S+)/.exec(
          line,
        )
        if (retry !== null) of(retry[1]!).retries += Number(retry[2])
        const request =
          /^breakwater_proxy_upstream_requests_total\{service="([^"]+)",status="(\d+)"\} (\S+)/.exec(
            line,
          )
        if (request !== null && Number(request[2]) >= 500)
          of(request[1]!).failed += Number(request[3])
      }
      return counters
    },
    routes: () => proxy.routes(),
    close: async () => {
      await proxy.close(1_000)
    },
  }
}
