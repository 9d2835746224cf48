// A refused reload leaves the running routes exactly as they were: the route table it built
// shares the running routes' retry pins and shadow statistics (so a successful reload keeps
// them), and must not change their settings before the swap. Real loopback sockets; the pins'
// ttl runs on a ManualClock.
import { createServer } from 'node:net'
import { afterEach, beforeEach, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let legacy: NamedUpstream
let modern: NamedUpstream
let proxy: RunningProxy | undefined
const blocker = createServer()
let taken: number
const quiet = createJsonLogger({ level: 'silent' })

beforeEach(async () => {
  legacy = await startNamedUpstream('legacy')
  modern = await startNamedUpstream('modern')
  taken = await listenOnLoopback(blocker)
})

afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  await legacy.close()
  await modern.close()
  await new Promise<void>((resolve) => blocker.close(() => resolve()))
})

function yaml(route: string, extraListener = ''): string {
  return `
services:
  legacy: { endpoints: [${legacy.url}] }
  modern: { endpoints: [${modern.url}] }
listeners:${extraListener}
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: orders, match: { prefix: /orders }, targets: [{ service: legacy }], ${route} }
`
}

// The same routes plus a listener on a port in use: refused once the route tables are built.
function refused(route: string): string {
  return yaml(route, `\n  - { name: extra, role: ambassador, port: ${taken} }`)
}

it('a refused reload changes neither the ttlMs nor the maxKeys of the running retry pins', async () => {
  const clock = new ManualClock()
  const affinity = (ttlMs: number, maxKeys: number) =>
    `retryAffinity: { ttlMs: ${ttlMs}, maxKeys: ${maxKeys} }`
  proxy = await startProxy({ config: yaml(affinity(60_000, 100)), logger: quiet, clock })
  const port = proxy.address('in').port
  const key = (k: string) => ({ headers: { 'idempotency-key': k } })
  const serviceOf = async (k: string) =>
    (await http(port, '/orders/1', key(k))).json<{ service: string }>().service
  expect(await serviceOf('order-7')).toBe('legacy')

  await expect(proxy.reload(refused(affinity(1_000, 1)))).rejects.toThrow('EADDRINUSE')
  // Pinned under the running maxKeys (100): order-7's pin is not dropped to make room.
  expect(await serviceOf('order-8')).toBe('legacy')
  proxy.switchRoute('orders', [{ service: 'modern', weight: 1 }])
  await clock.advance(2_000)
  // Both retries follow their first attempts, for the running 60 s.
  expect(await serviceOf('order-7')).toBe('legacy')
  expect(await serviceOf('order-8')).toBe('legacy')
})

it('a refused reload keeps the shadow examples the running config keeps', async () => {
  const shadow = (keep: number) =>
    `shadow: { service: modern, learnNoise: false, keepExamples: ${keep} }`
  proxy = await startProxy({ config: yaml(shadow(5)), logger: quiet })
  const port = proxy.address('in').port
  for (const n of [1, 2]) expect((await http(port, `/orders/${n}`)).status).toBe(200)
  const examples = () => proxy?.routes().find((r) => r.name === 'orders')?.shadow?.examples ?? []
  await eventually(() => examples().length === 2, 'two mismatches recorded')

  await expect(proxy.reload(refused(shadow(0)))).rejects.toThrow('EADDRINUSE')
  expect(examples()).toHaveLength(2)
  expect((await http(port, '/orders/3')).status).toBe(200)
  await eventually(() => examples().length === 3, 'the running keepExamples (5) applies')
})
