// A listener that a start or a reload adds is bound before the config that adds it is in force:
// the config's other listeners are bound after it, and only then is the new generation swapped
// in. A request that reached it in that gap found no handler in force and was answered 503
// LISTENER_REMOVED (a WebSocket handshake, 400 REQUEST_UPGRADE_REFUSED): wrong, the listener
// was being added, not removed. Such a request now waits until the config is in force and is
// served by it; when the config is not applied after all (another of its listeners cannot be
// bound), it is answered 503 LISTENER_NOT_IN_FORCE.
//
// The gap is held open by the test, not timed: the config's last listener binds a host name,
// whose resolution (node's dns.lookup, which net.Server.listen calls for a name) waits until
// the test answers it.

import dns from 'node:dns'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { freeLoopbackPort } from '../../support/loopback.js'
import {
  captureLog,
  eventually,
  http,
  type NamedUpstream,
  outcome,
  type SimpleResponse,
  startNamedUpstream,
} from './helpers.js'
import { connectWs, rawHandshake, startWsUpstream, type WsUpstream } from './websocket-helpers.js'

/** The host name of the listener whose bind the test holds. */
const held = 'held-listener.test'

let app: NamedUpstream
let chat: WsUpstream
beforeAll(async () => {
  app = await startNamedUpstream('app')
  chat = await startWsUpstream('chat')
})
afterAll(async () => {
  await app.close()
  await chat.close()
})

/** Resolutions of {@link held} waiting for the test: `answer()` binds to 127.0.0.1, `fail()` fails it. */
let lookups: { answer(): void; fail(): void }[] = []
const proxies: Promise<RunningProxy>[] = []
beforeEach(() => {
  lookups = []
  const real = dns.lookup
  vi.spyOn(dns, 'lookup').mockImplementation(((hostname: string, ...rest: unknown[]) => {
    if (hostname !== held) return Reflect.apply(real, dns, [hostname, ...rest])
    const done = rest.at(-1) as (error: Error | null, address?: string, family?: number) => void
    lookups.push({
      answer: () => done(null, '127.0.0.1', 4),
      fail: () =>
        done(Object.assign(new Error(`getaddrinfo ENOTFOUND ${held}`), { code: 'ENOTFOUND' })),
    })
  }) as never)
})
afterEach(async () => {
  // A test that failed midway leaves no start or reload hanging on its bind.
  for (const lookup of lookups.splice(0)) lookup.answer()
  for (const started of proxies.splice(0))
    await started.then(
      (proxy) => proxy.close(0),
      () => {},
    )
  vi.restoreAllMocks()
})

/**
 * The config: `out`, then `in` (a gateway on `port`, with a WebSocket route) and `late`, bound
 * last, on {@link held}; without `added`, `out` alone.
 */
function yaml(port: number, added: boolean): string {
  return `
services:
  app: { endpoints: [${app.url}] }
  chat: { endpoints: [${chat.url}], websocket: true }
listeners:
  - { name: out, role: ambassador, port: 0 }
${
  added
    ? `  - name: in
    role: gateway
    port: ${port}
    routes:
      - { name: chat, match: { prefix: /chat }, targets: [{ service: chat }], websocket: true }
      - { name: app, match: { prefix: / }, targets: [{ service: app }] }
  - { name: late, role: ambassador, host: ${held}, port: 0 }
`
    : ''
}accessLog: true
`
}

function start(config: string, log: ReturnType<typeof captureLog>): Promise<RunningProxy> {
  const started = startProxy({
    config,
    logger: createJsonLogger({ output: log, level: 'debug' }),
    watch: false,
  })
  proxies.push(started)
  return started
}

/** How many requests the proxy holds until the config that adds their listener is in force. */
function waiting(log: ReturnType<typeof captureLog>): number {
  return log
    .lines()
    .filter((line) => line.msg === 'request waiting for the config that adds its listener').length
}

/** The listener `in` is bound, and `late`, bound after it, waits for its name. */
async function inBoundLateHeld(): Promise<void> {
  await eventually(() => lookups.length > 0, `the resolution of ${held}`)
}

/** A start of the config with `in` and `late`, held between the two binds. */
async function startAdding(log: ReturnType<typeof captureLog>) {
  const port = await freeLoopbackPort()
  const starting = start(yaml(port, true), log)
  const started = outcome(starting)
  await inBoundLateHeld()
  return { port, starting, started }
}

/** A proxy started with `out` alone, reloading to the config with `in` and `late`, held between the two binds. */
async function reloadAdding(log: ReturnType<typeof captureLog>) {
  const port = await freeLoopbackPort()
  const proxy = await start(yaml(port, false), log)
  const reloading = proxy.reload(yaml(port, true))
  const reloaded = outcome(reloading)
  await inBoundLateHeld()
  return { port, proxy, reloading, reloaded }
}

/**
 * Resolves once the proxy holds everything `sent` (sent to `in` in the gap): anything answered
 * first fails the test, with its answer in the message.
 */
async function heldByTheProxy(
  log: ReturnType<typeof captureLog>,
  sent: readonly Promise<unknown>[],
): Promise<void> {
  const states = sent.map((promise) => outcome(promise))
  await eventually(
    () => states.some((state) => state().done) || waiting(log) === sent.length,
    'the proxy holding what was sent to `in`',
  )
  expect(states.map((state) => state())).toEqual(sent.map(() => ({ done: false })))
}

function problemOf(response: SimpleResponse): Record<string, unknown> {
  expect(response.headers['content-type']).toBe('application/problem+json')
  return response.json()
}

const notInForce = {
  type: 'about:blank',
  title: 'Service Unavailable',
  status: 503,
  code: 'LISTENER_NOT_IN_FORCE',
  detail: 'the config that adds this listener was not applied',
}

describe('a request on a listener being added, before its config is in force', () => {
  it('at the first start: waits, and is served by that config once it is in force', async () => {
    const log = captureLog()
    const { port, starting, started } = await startAdding(log)

    const request = http(port, '/x')
    await heldByTheProxy(log, [request])
    expect(started().done).toBe(false)

    lookups.splice(0)[0]?.answer()
    const response = await request
    expect(response.status).toBe(200)
    expect(response.json()).toMatchObject({ service: 'app', url: '/x' })
    await starting
  })

  it('at a reload that adds it: a request and a WebSocket handshake wait, and are served once it is in force', async () => {
    const log = captureLog()
    const { port, reloading, reloaded } = await reloadAdding(log)

    const request = http(port, '/x')
    const handshake = connectWs(`ws://127.0.0.1:${port}/chat`)
    await heldByTheProxy(log, [request, handshake])
    expect(reloaded().done).toBe(false)

    lookups.splice(0)[0]?.answer()
    await reloading
    const response = await request
    expect(response.status).toBe(200)
    expect(response.json()).toMatchObject({ service: 'app', url: '/x' })
    const client = await handshake
    client.socket.send('hi')
    expect(await client.next()).toBe('chat:hi')
    client.socket.close()
    await client.closed
  })

  it('at a reload that adds it and is refused: both are answered 503 LISTENER_NOT_IN_FORCE, counted and logged as refusals', async () => {
    const log = captureLog()
    const { port, proxy, reloading, reloaded } = await reloadAdding(log)

    const request = http(port, '/x')
    const handshake = rawHandshake(port, '/chat')
    await heldByTheProxy(log, [request, handshake])

    // `late` cannot be bound: the reload is refused, and `in` closed.
    lookups.splice(0)[0]?.fail()
    await expect(reloading).rejects.toMatchObject({ code: 'CONFIG_INVALID' })
    expect(reloaded().done).toBe(true)
    const response = await request
    expect(response.status).toBe(503)
    expect(response.headers.connection).toBe('close')
    expect(problemOf(response)).toEqual(notInForce)
    const answer = await handshake
    expect(answer.status).toBe(503)
    expect(answer.headers.connection).toBe('close')
    expect(JSON.parse(answer.body)).toEqual(notInForce)

    expect(await proxy.metricsText()).toContain(
      'breakwater_proxy_route_requests_total{listener="in",route="",service="",status="503"} 2',
    )
    const refusals = log.lines().filter((line) => line.msg === 'request refused')
    expect(refusals).toEqual([
      expect.objectContaining({ listener: 'in', status: 503, code: 'LISTENER_NOT_IN_FORCE' }),
      expect.objectContaining({ listener: 'in', status: 503, code: 'LISTENER_NOT_IN_FORCE' }),
    ])
    expect(refusals[0]?.detail).toBe(notInForce.detail)
    // The config in force goes on serving.
    expect(() => proxy.address('in')).toThrow(/running listener/)
    expect((await http(proxy.address('out').port, '/app/y')).status).toBe(200)
  })

  it('at a start that fails: answered 503 LISTENER_NOT_IN_FORCE, and the start rejects', async () => {
    const log = captureLog()
    const { port, starting, started } = await startAdding(log)

    const request = http(port, '/x')
    await heldByTheProxy(log, [request])

    lookups.splice(0)[0]?.fail()
    await expect(starting).rejects.toMatchObject({
      code: 'PROXY_LISTEN_FAILED',
      setting: 'listeners.late',
    })
    expect(started().done).toBe(true)
    const response = await request
    expect(response.status).toBe(503)
    expect(problemOf(response)).toEqual(notInForce)
  })
})
