import { Agent, get } from 'node:http'
import { afterEach, describe, expect, it } from 'vitest'
import { createHttpClient } from '../../src/http/index.js'
import { BulkheadRejectedError, TimeoutError } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { Gate, startServer, type TestServer, until } from './servers.js'

// The seed's bulkhead scenario: a service calls B, C and D; D becomes slow. With one shared
// pool of connections, D's stuck calls take every connection and B and C starve although they
// are healthy. With a pool and a bulkhead per downstream, D can only tie up its own.

const cleanup: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

async function healthy(): Promise<TestServer> {
  const server = await startServer((_req, res) => {
    res.end('ok')
  })
  cleanup.push(() => server.close())
  return server
}

// Over node:http with a keep-alive Agent: the "one shared pool" a naive client has.
function sharedGet(agent: Agent, url: string): Promise<{ status: number; ms: number }> {
  const started = Date.now()
  return new Promise((resolve, reject) => {
    get(url, { agent }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: Date.now() - started }))
    }).on('error', reject)
  })
}

describe('bulkheads: a slow service cannot starve the others', () => {
  it('keeps B and C answering while D is saturated, unlike one shared pool', async () => {
    const b = await healthy()
    const c = await healthy()
    let gate = new Gate()
    const d = await startServer(async (_req, res) => {
      await gate.wait()
      res.end('late')
    })
    cleanup.push(async () => {
      gate.open()
      await d.close()
    })
    const slots = 8

    // 1. One shared pool: 8 sockets in total for every downstream.
    const agent = new Agent({ keepAlive: true, maxTotalSockets: slots })
    cleanup.push(async () => agent.destroy())
    const sharedD = Array.from({ length: slots }, () => sharedGet(agent, `${d.url}/`))
    await until(() => d.hits.length === slots)
    const sharedB = Array.from({ length: 10 }, () => sharedGet(agent, `${b.url}/`))
    const sharedC = Array.from({ length: 10 }, () => sharedGet(agent, `${c.url}/`))
    // B's and C's requests wait for a socket that only D can give back.
    const queued = Object.values(agent.requests).reduce((n, list) => n + (list?.length ?? 0), 0)
    expect(queued).toBe(20)
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(b.hits).toHaveLength(0)
    expect(c.hits).toHaveLength(0)
    gate.open()
    const starved = await Promise.all([...sharedB, ...sharedC])
    expect(starved.every((r) => r.status === 200)).toBe(true)
    // They only got through once D let go: every one of them waited out the 100 ms D held on.
    expect(Math.min(...starved.map((r) => r.ms))).toBeGreaterThanOrEqual(95)
    await Promise.all(sharedD)

    // 2. breakwater: a pool and a bulkhead per service, D's sized like the shared pool.
    gate = new Gate()
    const client = createHttpClient({
      services: {
        b: { baseUrl: b.url, bulkhead: { maxConcurrent: slots } },
        c: { baseUrl: c.url, bulkhead: { maxConcurrent: slots } },
        d: { baseUrl: d.url, bulkhead: { maxConcurrent: slots, maxQueued: 0 }, retry: false },
      },
    })
    cleanup.push(() => client.close())
    const rejections: unknown[] = []
    client.service('d').events.on((e) => {
      if (e.type === 'rejected') rejections.push(e)
    })
    const dHitsBefore = d.hits.length
    const slowD = Array.from({ length: slots }, () => client.request('d', { path: '/' }))
    await until(() => d.hits.length === dHitsBefore + slots)
    expect(client.state().d?.bulkhead).toEqual({ running: slots, queued: 0 })

    // D is full: one more call is refused at once instead of piling up.
    const extra = await client.request('d', { path: '/' }).catch((e: unknown) => e)
    expect(extra).toBeInstanceOf(BulkheadRejectedError)
    expect((extra as BulkheadRejectedError).reason).toBe('full')
    expect(d.hits).toHaveLength(dHitsBefore + slots)
    expect(rejections).toEqual([{ type: 'rejected', service: 'd', by: 'bulkhead', reason: 'full' }])

    // B and C keep succeeding, many times over, while D still holds all of its connections.
    const bHitsBefore = b.hits.length
    const cHitsBefore = c.hits.length
    for (let round = 0; round < 3; round++) {
      const results = await Promise.all([
        ...Array.from({ length: 10 }, () => client.request('b', { path: '/' })),
        ...Array.from({ length: 10 }, () => client.request('c', { path: '/' })),
      ])
      expect(results.every((r) => r.status === 200 && r.text() === 'ok')).toBe(true)
    }
    expect(b.hits.length - bHitsBefore).toBe(30)
    expect(c.hits.length - cHitsBefore).toBe(30)
    const state = client.state()
    expect(state.d?.pool.running).toBe(slots)
    expect(state.b?.pool.connected).toBeLessThanOrEqual(slots)
    expect(state.d?.bulkhead?.running).toBe(slots)

    gate.open()
    const late = await Promise.all(slowD)
    expect(late.every((r) => r.text() === 'late')).toBe(true)
  })
})

// The attempt timeout starts before the bulkhead, so a call can run out of it in the queue,
// nothing sent. The breaker ignores that TimeoutError (nothing reached the downstream: counted,
// a deep local queue opened the circuit of a service that answered every request it got), as
// it ignores the BulkheadRejectedError of a queueTimeoutMs shorter than the attempt timeout.
describe('a wait in the bulkhead queue and the breaker', () => {
  it.each([
    ['the attempt timeout, not counted', undefined, 'closed', TimeoutError],
    ['queueTimeoutMs, not counted', 500, 'closed', BulkheadRejectedError],
  ] as const)('ends the wait with %s', async (_name, queueTimeoutMs, breaker, queuedError) => {
    const gate = new Gate()
    const server = await startServer(async (_req, res) => {
      await gate.wait()
      res.end('late')
    })
    cleanup.push(() => server.close())
    cleanup.push(async () => gate.open())
    const clock = new ManualClock()
    const client = createHttpClient({
      clock,
      services: {
        svc: {
          baseUrl: server.url,
          attemptTimeoutMs: 1_000,
          retry: false,
          bulkhead: { maxConcurrent: 1, maxQueued: 2, queueTimeoutMs },
          // The call in flight is one failure; the two queued ones would make three.
          circuitBreaker: { window: { kind: 'consecutive', failures: 3 } },
        },
      },
    })
    cleanup.push(() => client.close())
    const settle = (p: Promise<unknown>) =>
      p.then(
        () => undefined,
        (e: unknown) => e,
      )
    const held = settle(client.request('svc', { path: '/held' }))
    await until(() => server.hits.length === 1)
    const queued = [1, 2].map(() => settle(client.request('svc', { path: '/queued' })))
    await until(() => client.state().svc?.bulkhead?.queued === 2)
    await clock.advance(1_000)
    for (const error of await Promise.all(queued)) expect(error).toBeInstanceOf(queuedError)
    expect(await held).toBeInstanceOf(TimeoutError)
    expect(server.hits).toHaveLength(1)
    expect(client.state().svc?.breaker).toBe(breaker)
  })
})
