// The sidecar's idempotency keys live per listener and route, not only per credential: two
// gateway listeners in front of two apps, sharing the proxy's idempotency.url, answered a POST
// to the second app with the first app's recorded response (`Idempotent-Replayed: true`), and
// the second app never saw it. Two routes of one listener whose paths overlap did the same.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let appA: NamedUpstream
let appB: NamedUpstream
const proxies: RunningProxy[] = []
let dir: string

beforeEach(async () => {
  appA = await startNamedUpstream('appA')
  appB = await startNamedUpstream('appB')
  dir = mkdtempSync(join(tmpdir(), 'bw-proxy-idem-scope-'))
})

afterEach(async () => {
  for (const proxy of proxies.splice(0)) await proxy.close(0)
  await appA.close()
  await appB.close()
  rmSync(dir, { recursive: true, force: true })
})

const services = (): string =>
  `services: { appA: { endpoints: [${appA.url}] }, appB: { endpoints: [${appB.url}] } }`
const store = (): string => `idempotency: { url: "sqlite:${join(dir, 'idem.db')}" }`
const guarded = 'idempotency: { methods: [POST] }'

async function start(config: string): Promise<RunningProxy> {
  const proxy = await startProxy({ config })
  proxies.push(proxy)
  return proxy
}

function pay(port: number, headers: Record<string, string> = {}): ReturnType<typeof http> {
  return http(port, '/pay', {
    method: 'POST',
    headers: { 'idempotency-key': 'order-1', 'content-type': 'text/plain', ...headers },
    body: 'amount=5',
  })
}

describe('sidecar idempotency scope', () => {
  it.each([
    ['a credential', { authorization: 'Bearer alice' }],
    ['no credential', {}],
  ])('keeps two listeners sharing a store apart (%s)', async (_what, credential) => {
    const proxy = await start(`${services()}
listeners:
  - name: frontA
    role: gateway
    port: 0
    routes: [{ name: a, targets: [{ service: appA }], ${guarded} }]
  - name: frontB
    role: gateway
    port: 0
    routes: [{ name: b, targets: [{ service: appB }], ${guarded} }]
${store()}
`)
    const first = await pay(proxy.address('frontA').port, credential)
    expect(first.json().service).toBe('appA')
    const second = await pay(proxy.address('frontB').port, credential)
    expect(second.headers['idempotent-replayed']).toBeUndefined()
    expect(second.json().service).toBe('appB')
    expect([appA.seen.length, appB.seen.length]).toEqual([1, 1])
    // Within one route the key still replays.
    const again = await pay(proxy.address('frontB').port, credential)
    expect(again.headers['idempotent-replayed']).toBe('true')
    expect(appB.seen).toHaveLength(1)
  })

  it('keeps two routes of one listener apart when their paths overlap', async () => {
    const proxy = await start(`${services()}
listeners:
  - name: front
    role: gateway
    port: 0
    routes:
      - { name: shop-b, match: { prefix: /pay, headers: { x-shop: b } }, targets: [{ service: appB }], ${guarded} }
      - { name: main, targets: [{ service: appA }], ${guarded} }
${store()}
`)
    const port = proxy.address('front').port
    expect((await pay(port)).json().service).toBe('appA')
    const b = await pay(port, { 'x-shop': 'b' })
    expect(b.headers['idempotent-replayed']).toBeUndefined()
    expect(b.json().service).toBe('appB')
  })

  it('keeps a route of one name apart on listeners of two proxies sharing a store', async () => {
    const proxyOf = (listener: string, service: string) =>
      start(`${services()}
listeners:
  - name: ${listener}
    role: gateway
    port: 0
    routes: [{ name: pay, targets: [{ service: ${service} }], ${guarded} }]
${store()}
`)
    const east = await proxyOf('east', 'appA')
    const west = await proxyOf('west', 'appB')
    expect((await pay(east.address('east').port)).json().service).toBe('appA')
    const fromWest = await pay(west.address('west').port)
    expect(fromWest.headers['idempotent-replayed']).toBeUndefined()
    expect(fromWest.json().service).toBe('appB')
  })

  it('keeps a route’s keys through a reload that changes its targets, not through a rename', async () => {
    const config = (name: string, service: string) => `${services()}
listeners:
  - name: front
    role: gateway
    port: 0
    routes: [{ name: ${name}, targets: [{ service: ${service} }], ${guarded} }]
${store()}
`
    const proxy = await start(config('pay', 'appA'))
    const port = proxy.address('front').port
    expect((await pay(port)).json().service).toBe('appA')
    // The strangler moved the route to appB: a retry of a request appA ran is replayed, not
    // run again on appB.
    await proxy.reload(config('pay', 'appB'))
    const retried = await pay(port)
    expect(retried.headers['idempotent-replayed']).toBe('true')
    expect(retried.json().service).toBe('appA')
    expect(appB.seen).toHaveLength(0)
    // A renamed route is another route: its keys start afresh (docs/proxy.md).
    await proxy.reload(config('payments', 'appB'))
    const renamed = await pay(port)
    expect(renamed.headers['idempotent-replayed']).toBeUndefined()
    expect(appB.seen).toHaveLength(1)
  })
})
