// The processes of the proxy benchmark (bench/proxy.bench.ts), one role each, started as
// `node --import tsx bench/lib/proxy-roles.ts <role> [json-args]`. Each prints one JSON line
// `{"port":N}` on stdout when it listens, and answers an IPC message 'cpu' with its
// process.cpuUsage() so the parent can charge CPU time to the requests of a run.
//
// Roles:
// - upstream: node:http answering every request 200 with a 1 KiB body.
// - breakwater: the ambassador. With startProxy available (src/proxy/runtime.ts), the real
//   proxy from a config object; with `{"front":"minimal"}` (or when startProxy cannot start),
//   a ServiceRuntime behind a bare node:http server that forwards every request.
// - http-proxy: http-proxy 1.18 with a keep-alive agent behind node:http.
import {
  createServer,
  Agent as HttpAgent,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http'
import type { AddressInfo } from 'node:net'
import { built } from './built.js'
import { benchProxyYaml } from './proxy-config.js'

const role = process.argv[2]
const args = JSON.parse(process.argv[3] ?? '{}') as Record<string, unknown>

// A normal exit (not the default signal death) lets --cpu-prof write its profile.
process.on('SIGTERM', () => process.exit(0))
process.on('message', (message) => {
  if (message === 'cpu') process.send?.({ cpu: process.cpuUsage() })
})

function ready(port: number, extra: Record<string, unknown> = {}): void {
  process.stdout.write(`${JSON.stringify({ port, ...extra })}\n`)
}

async function listen(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<number> {
  const server = createServer({ keepAliveTimeout: 60_000 }, handler)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as AddressInfo).port
}

/** The bench service: every policy on, thresholds far from tripping in a healthy run. */
export function benchServiceConfig(upstreamUrl: string) {
  return {
    name: 'bench',
    discovery: { kind: 'static' as const, endpoints: [upstreamUrl] },
    loadBalancer: 'least-request' as const,
    timeouts: { connectMs: 1_000, readMs: 5_000, overallMs: 10_000 },
    retry: {
      attempts: 3,
      baseDelayMs: 25,
      maxDelayMs: 1_000,
      retryOnStatus: [408, 429, 502, 503, 504],
      budgetRatio: 0.2,
      budgetMinPerSecond: 10,
      addIdempotencyKey: false,
    },
    breaker: { failureThreshold: 5, cooldownMs: 10_000, halfOpenProbes: 1 },
    bulkhead: { maxConcurrent: 1_024, maxQueue: 1_024, connectionsPerEndpoint: 64 },
    outlierEjection: { consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectedPercent: 50 },
    tls: {
      caFile: undefined,
      certFile: undefined,
      keyFile: undefined,
      serverName: undefined,
      verify: true,
    },
    auth: undefined,
    rewriteHost: true,
  }
}

async function upstream(): Promise<void> {
  const body = Buffer.alloc(1024, 'x')
  const port = await listen((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 1024 })
    res.end(body)
  })
  ready(port)
}

// The scaling case's upstream: a JSON document of `items` orders (about 16 KiB for 100), the
// kind of answer a strangler gateway shadows and diffs.
async function upstreamJson(): Promise<void> {
  const items = Number(args.items ?? 100)
  const document = {
    page: 1,
    items: Array.from({ length: items }, (_, i) => ({
      id: `order-${i}`,
      customer: {
        id: `c-${i % 17}`,
        name: `Customer ${i % 17}`,
        tier: i % 3 === 0 ? 'gold' : 'std',
      },
      lines: [
        { sku: `sku-${i}`, quantity: 1 + (i % 4), priceCents: 1_299 },
        { sku: `sku-${i + 1}`, quantity: 1, priceCents: 499 },
      ],
      status: 'paid',
      totalCents: 1_299 * (1 + (i % 4)) + 499,
    })),
  }
  const body = Buffer.from(JSON.stringify(document))
  // A canned response written straight to the socket for every bodiless request that arrives
  // (keep-alive GETs, as the proxy sends them): the upstream should cost as little CPU as it
  // can, so that what the case measures is the proxy's share.
  const response = Buffer.concat([
    Buffer.from(
      `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nkeep-alive: timeout=60\r\n\r\n`,
    ),
    body,
  ])
  const { createServer: createNetServer } = await import('node:net')
  const server = createNetServer((socket) => {
    socket.setNoDelay(true)
    let pending = ''
    socket.on('data', (chunk: Buffer) => {
      pending += chunk.toString('latin1')
      let end = pending.indexOf('\r\n\r\n')
      while (end !== -1) {
        socket.write(response)
        pending = pending.slice(end + 4)
        end = pending.indexOf('\r\n\r\n')
      }
    })
    socket.on('error', () => socket.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  ready((server.address() as AddressInfo).port, { bytes: body.length })
}

async function breakwaterMinimal(upstreamUrl: string): Promise<number> {
  const { systemClock } = await built<typeof import('../../src/core/clock.js')>('core/clock.js')
  const { createJsonLogger } =
    await built<typeof import('../../src/observability/logger.js')>('observability/logger.js')
  const { createMetricsRegistry } = await built<
    typeof import('../../src/observability/metrics.js')
  >('observability/metrics.js')
  const { forwardableHeaders } =
    await built<typeof import('../../src/proxy/hop-by-hop.js')>('proxy/hop-by-hop.js')
  const { createServiceRuntime } =
    await built<typeof import('../../src/proxy/upstream/index.js')>('proxy/upstream/index.js')
  const service = createServiceRuntime(benchServiceConfig(upstreamUrl), {
    clock: systemClock,
    logger: createJsonLogger({ level: 'warn' }),
    metrics: createMetricsRegistry(),
  })
  const dropHost = new Set(['host'])
  let n = 0
  return listen((req, res) => {
    const path = req.url ?? '/'
    const slash = path.indexOf('/', 1)
    void service.forward(
      new MinimalForward(
        req,
        res,
        slash < 0 ? '/' : path.slice(slash),
        forwardableHeaders(req.rawHeaders, dropHost),
        String(++n),
      ),
      res,
    )
  })
}

// A ForwardRequest whose signal is made only when something reads it (the upstream side
// watches the response's 'close' instead), as an inbound side can do it.
class MinimalForward {
  readonly method: string
  readonly target: string
  readonly headers: Record<string, string | string[]>
  readonly host: string
  readonly body = undefined
  readonly deadlineAt = undefined
  readonly route = 'ambassador'
  readonly requestId: string
  readonly #res: ServerResponse
  #controller: AbortController | undefined

  constructor(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    headers: Record<string, string | string[]>,
    requestId: string,
  ) {
    this.method = req.method ?? 'GET'
    this.target = target
    this.headers = headers
    this.host = req.headers.host ?? ''
    this.requestId = requestId
    this.#res = res
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      const controller = new AbortController()
      this.#controller = controller
      if (this.#res.destroyed) controller.abort()
      else this.#res.once('close', () => controller.abort())
    }
    return this.#controller.signal
  }
}

async function breakwaterStartProxy(upstreamUrl: string): Promise<number> {
  const { startProxy } = await built<typeof import('../../src/proxy/index.js')>('proxy/index.js')
  const { createJsonLogger } =
    await built<typeof import('../../src/observability/logger.js')>('observability/logger.js')
  const yaml = benchProxyYaml(upstreamUrl, 0)
  const proxy = await startProxy({ config: yaml, logger: createJsonLogger({ level: 'warn' }) })
  return proxy.address('outbound').port
}

async function breakwater(): Promise<void> {
  const upstreamUrl = String(args.upstream)
  if (args.front !== 'minimal') {
    try {
      ready(await breakwaterStartProxy(upstreamUrl), { front: 'startProxy' })
      return
    } catch (error) {
      process.stderr.write(
        `startProxy could not run the bench config (${(error as Error).message}); using the minimal front\n`,
      )
    }
  }
  ready(await breakwaterMinimal(upstreamUrl), { front: 'minimal' })
}

async function httpProxy(): Promise<void> {
  const { default: HttpProxy } = await import('http-proxy')
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 64 })
  const proxy = HttpProxy.createProxyServer({ target: String(args.upstream), agent })
  proxy.on('error', (_error, _req, res) => {
    const response = res as ServerResponse
    if (!response.headersSent) response.writeHead(502)
    response.end()
  })
  ready(await listen((req, res) => proxy.web(req, res)))
}

switch (role) {
  case 'upstream':
    await upstream()
    break
  case 'upstream-json':
    await upstreamJson()
    break
  case 'breakwater':
    await breakwater()
    break
  case 'http-proxy':
    await httpProxy()
    break
  default:
    process.stderr.write(`unknown role ${role}\n`)
    process.exit(2)
}
