import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createHttpClient,
  type HttpClient,
  type HttpClientEvent,
  type HttpServiceOptions,
  HttpStatusError,
} from '../../src/http/index.js'
import {
  adoptDeadline,
  BreakwaterError,
  currentDeadline,
  DEADLINE_HEADER,
  DeadlineExceededError,
  remainingMs,
  withDeadline,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { Gate, type Handler, startServer, type TestServer, until } from './servers.js'

const cleanup: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

async function serve(handler: Handler): Promise<TestServer> {
  const server = await startServer(handler)
  cleanup.push(() => server.close())
  return server
}

function track(client: HttpClient): HttpClient {
  cleanup.push(() => client.close())
  return client
}

describe('the deadline header', () => {
  const ok: Handler = (_req, res) => {
    res.end('ok')
  }

  async function headerSent(
    options: Partial<HttpServiceOptions>,
    run: (client: HttpClient, clock: ManualClock) => Promise<unknown>,
  ): Promise<unknown> {
    const server = await serve(ok)
    const clock = new ManualClock(1_000_000)
    const client = track(
      createHttpClient({ clock, services: { svc: { baseUrl: server.url, ...options } } }),
    )
    await run(client, clock)
    return server.hits[0]?.headers[DEADLINE_HEADER]
  }

  it('sends the remaining deadline when it is the tightest budget', async () => {
    const sent = await headerSent({}, (client, clock) =>
      withDeadline(1_500, () => client.request('svc', { path: '/' }), { clock }),
    )
    // Less the default 5 ms margin for the time the request takes to arrive.
    expect(sent).toBe('1495')
    const exact = await headerSent({ deadlineMarginMs: 0 }, (client, clock) =>
      withDeadline(1_500, () => client.request('svc', { path: '/' }), { clock }),
    )
    expect(exact).toBe('1500')
  })

  it('sends the attempt timeout when there is no deadline', async () => {
    expect(
      await headerSent({ attemptTimeoutMs: 2_000 }, (c) => c.request('svc', { path: '/' })),
    ).toBe('1995')
  })

  it('sends what is left of the overall timeout', async () => {
    const sent = await headerSent(
      { attemptTimeoutMs: Number.POSITIVE_INFINITY, overallTimeoutMs: 3_000 },
      (c) => c.request('svc', { path: '/' }),
    )
    expect(sent).toBe('2995')
  })

  it('sends nothing when turned off or when no budget is known', async () => {
    expect(
      await headerSent({ propagateDeadline: false }, (c) => c.request('svc', { path: '/' })),
    ).toBeUndefined()
    expect(
      await headerSent(
        {
          attemptTimeoutMs: Number.POSITIVE_INFINITY,
          overallTimeoutMs: Number.POSITIVE_INFINITY,
        },
        (c) => c.request('svc', { path: '/' }),
      ),
    ).toBeUndefined()
  })

  // With propagation on the header is the client's: it states the budget it knows as of the
  // write, or nothing. A caller's own value (forwarded inbound headers, a service default) could
  // not follow the time spent queueing, connecting or between retries.
  const unbounded: Partial<HttpServiceOptions> = {
    attemptTimeoutMs: Number.POSITIVE_INFINITY,
    overallTimeoutMs: Number.POSITIVE_INFINITY,
  }
  it.each(['2000', '-5', 'soon', '1e300'])(
    "drops a caller's header %s when no budget is known, from a request or a service",
    async (value) => {
      expect(
        await headerSent(unbounded, (c) =>
          c.request('svc', { path: '/', headers: { 'X-Breakwater-Deadline-Ms': value } }),
        ),
      ).toBeUndefined()
      expect(
        await headerSent({ ...unbounded, headers: { [DEADLINE_HEADER]: value } }, (c) =>
          c.request('svc', { path: '/' }),
        ),
      ).toBeUndefined()
    },
  )

  it("replaces a caller's header with the budget it knows", async () => {
    expect(
      await headerSent({ attemptTimeoutMs: 2_000 }, (c) =>
        c.request('svc', { path: '/', headers: { [DEADLINE_HEADER]: '999999' } }),
      ),
    ).toBe('1995')
  })

  it("passes a caller's header as given when propagation is off", async () => {
    expect(
      await headerSent({ propagateDeadline: false }, (c) =>
        c.request('svc', { path: '/', headers: { [DEADLINE_HEADER]: '2000' } }),
      ),
    ).toBe('2000')
  })

  it('sends a smaller budget on each retry, as time passes', async () => {
    const clock = new ManualClock()
    const server = await serve((_req, res, hit) => {
      if (hit.n === 1) res.writeHead(503, { 'retry-after': '1' }).end()
      else res.end('ok')
    })
    const client = track(
      createHttpClient({
        clock,
        services: { svc: { baseUrl: server.url, retry: { baseDelayMs: 1 } } },
      }),
    )
    const pending = withDeadline(5_000, () => client.request('svc', { path: '/' }), { clock })
    await until(() => clock.nextTimerAt() === 1_000)
    await clock.advance(1_000)
    await pending
    expect(server.hits.map((h) => h.headers[DEADLINE_HEADER])).toEqual(['4995', '3995'])
  })

  /**
   * A client of `svc` (with `options`) whose only bulkhead slot is held by a call to /hold until
   * the returned gate opens; calls made next wait in the bulkhead queue.
   */
  async function slotHeld(options: Partial<HttpServiceOptions>) {
    const gate = new Gate()
    const server = await serve(async (req, res) => {
      if (req.url === '/hold') await gate.wait()
      res.end('ok')
    })
    const clock = new ManualClock(1_000_000)
    const client = track(
      createHttpClient({ clock, services: { svc: { baseUrl: server.url, ...options } } }),
    )
    const held = client.request('svc', { path: '/hold' })
    await until(() => server.hits.length === 1)
    return { gate, server, clock, client, held }
  }

  it('sends what is left of the attempt timeout after a wait in the bulkhead queue', async () => {
    // The attempt timeout is outside the bulkhead: time spent queueing counts against it.
    const { gate, server, clock, client, held } = await slotHeld({
      attemptTimeoutMs: 1_000,
      bulkhead: { maxConcurrent: 1, maxQueued: 2 },
    })
    // One call that runs fused, one that takes the promise-based chain (a caller signal).
    const queued = client.request('svc', { path: '/fused' })
    const signalled = client.request('svc', {
      path: '/chained',
      signal: new AbortController().signal,
    })
    await until(() => client.state().svc?.bulkhead?.queued === 2)
    await clock.advance(600)
    gate.open()
    await Promise.all([held, queued, signalled])
    const sent = Object.fromEntries(server.hits.map((h) => [h.url, h.headers[DEADLINE_HEADER]]))
    expect(sent).toEqual({ '/hold': '995', '/fused': '395', '/chained': '395' })
  })

  it('sends what is left when the request is written, after a wait for a pooled connection', async () => {
    // Without a bulkhead the pool's one connection is the only limit: /late waits in undici's
    // queue, not in a policy, until /hold's answer frees the connection.
    const { gate, server, clock, client, held } = await slotHeld({
      attemptTimeoutMs: 2_000,
      bulkhead: false,
      connections: 1,
    })
    const late = withDeadline(1_500, () => client.request('svc', { path: '/late' }), { clock })
    await until(() => client.state().svc?.pool.pending === 1)
    await clock.advance(600)
    gate.open()
    await Promise.all([held, late])
    const sent = Object.fromEntries(server.hits.map((h) => [h.url, h.headers[DEADLINE_HEADER]]))
    // 1_500 - 600 - 5: the 600 ms spent waiting for the connection are no longer the callee's.
    expect(sent).toEqual({ '/hold': '1995', '/late': '895' })
  })

  it('sends nothing when the wait for a pooled connection leaves less than the margin', async () => {
    const { gate, server, clock, client, held } = await slotHeld({
      attemptTimeoutMs: 2_000,
      bulkhead: false,
      connections: 1,
      retry: false,
    })
    const late = withDeadline(1_500, () => client.request('svc', { path: '/late' }), {
      clock,
    }).catch((e: unknown) => e)
    await until(() => client.state().svc?.pool.pending === 1)
    // 3 ms are left when the connection frees: less than the 5 ms margin.
    await clock.advance(1_497)
    gate.open()
    await held
    expect(await late).toMatchObject({ code: 'DEADLINE_EXCEEDED', started: false })
    expect(server.hits.map((h) => h.url)).toEqual(['/hold'])
    // undici dropped the request, not the connection.
    await client.request('svc', { path: '/next' })
    expect(server.connections()).toBe(1)
    expect(client.state().svc?.breaker).toBe('closed')
  })

  it('sends what is left once connected, after a slow connect', async () => {
    const server = await serve(ok)
    // A clock that jumps forward the moment undici has connected to this server: the connect
    // took 300 ms as far as the budget is concerned, with no real time and no race involved.
    const base = new ManualClock(1_000_000)
    let connectMs = 0
    const clock = {
      now: () => base.now() + connectMs,
      setTimeout: (fn: () => void, ms: number) => base.setTimeout(fn, ms),
      clearTimeout: (handle: ReturnType<ManualClock['setTimeout']>) => base.clearTimeout(handle),
    }
    const onConnected = (message: unknown) => {
      const { connectParams } = message as { connectParams: { port: string | number } }
      if (Number(connectParams.port) === server.port) connectMs += 300
    }
    subscribe('undici:client:connected', onConnected)
    cleanup.push(async () => {
      unsubscribe('undici:client:connected', onConnected)
    })
    const client = track(createHttpClient({ clock, services: { svc: { baseUrl: server.url } } }))
    await withDeadline(1_500, () => client.request('svc', { path: '/' }), { clock })
    expect(connectMs).toBe(300)
    expect(server.hits[0]?.headers[DEADLINE_HEADER]).toBe('1195')
  })

  it('does not hold a call its deadline left too late to send (after a bulkhead wait) against the service', async () => {
    const { gate, server, clock, client, held } = await slotHeld({
      attemptTimeoutMs: 10_000,
      bulkhead: { maxConcurrent: 1, maxQueued: 1 },
      circuitBreaker: { window: { kind: 'consecutive', failures: 1 } },
      retry: false,
    })
    const events: HttpClientEvent[] = []
    client.events.on((e) => events.push(e))
    const late = withDeadline(700, () => client.request('svc', { path: '/late' }), {
      clock,
    }).catch((e: unknown) => e)
    await until(() => client.state().svc?.bulkhead?.queued === 1)
    // 3 ms of the deadline are left when the slot frees: less than the 5 ms margin.
    await clock.advance(697)
    gate.open()
    await held
    expect(await late).toMatchObject({ code: 'DEADLINE_EXCEEDED', started: false })
    expect(server.hits.map((h) => h.url)).toEqual(['/hold'])
    // Nothing was sent for /late: no 'attempt' event may count it as one.
    expect(events.filter((e) => e.type === 'attempt' && e.path === '/late')).toEqual([])
    // The caller was late; the service did nothing wrong.
    expect(client.state().svc?.breaker).toBe('closed')
  })

  it('sends nothing and rejects with DeadlineExceededError once the deadline has passed', async () => {
    const clock = new ManualClock()
    const server = await serve(ok)
    const client = track(createHttpClient({ clock, services: { svc: { baseUrl: server.url } } }))
    const error = await withDeadline(
      10,
      async () => {
        await clock.advance(10)
        return client.request('svc', { path: '/' })
      },
      { clock },
    ).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(DeadlineExceededError)
    expect(server.hits).toHaveLength(0)

    // 5 ms left is not enough to reach the service within the 5 ms margin either.
    const late = await withDeadline(5, () => client.request('svc', { path: '/' }), {
      clock,
    }).catch((e: unknown) => e)
    expect(late).toBeInstanceOf(DeadlineExceededError)
    expect(server.hits).toHaveLength(0)
    expect(client.state().svc?.breaker).toBe('closed')
  })

  it('reports a call refused for a spent deadline as a failure event', async () => {
    const clock = new ManualClock()
    const server = await serve(ok)
    const client = track(createHttpClient({ clock, services: { svc: { baseUrl: server.url } } }))
    const events: HttpClientEvent[] = []
    client.events.on((e) => events.push(e))
    const error = await withDeadline(3, () => client.request('svc', { path: '/late' }), {
      clock,
    }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(DeadlineExceededError)
    expect(events).toEqual([
      {
        type: 'failure',
        service: 'svc',
        method: 'GET',
        path: '/late',
        error,
        durationMs: 0,
      },
    ])
    expect(server.hits).toHaveLength(0)
  })

  it('aborts the request in flight when the deadline passes', async () => {
    let closed = false
    const server = await serve((_req, res) => {
      res.on('close', () => {
        closed = true
      })
    })
    const client = track(createHttpClient({ services: { svc: { baseUrl: server.url } } }))
    const error = await withDeadline(150, () => client.request('svc', { path: '/' })).catch(
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(DeadlineExceededError)
    await until(() => closed)
  })
})

describe('deadline propagation across three real hops', () => {
  // A calls B calls C calls D over real HTTP, each through the client, each server adopting the
  // deadline it receives. Every hop spends `hopMs` before calling the next; D works in 10 ms
  // units for up to a second, checking its deadline before each unit. All of it, the 200 ms
  // deadline included, runs on one ManualClock that moves only while every hop is asleep: a
  // request in transit takes no time on it, however busy the machine, so the budgets each hop
  // is told are exact and the outcome is the same on every run. Each hop keeps a 25 ms margin.
  const margin = 25

  async function chain(hopMs: number) {
    const clock = new ManualClock()
    const received: Record<string, number[]> = { a: [], b: [], c: [], d: [] }
    const dUnits: number[] = []
    const finished = new Set<string>()
    let client: HttpClient | undefined
    // Sleeps on the clock; the test moves the clock only while one of these is pending, when
    // nothing else of the chain is under way (each hop waits for the one it called).
    let asleep = 0
    const sleep = (ms: number) =>
      new Promise<void>((resolve) => {
        asleep++
        clock.setTimeout(() => {
          asleep--
          resolve()
        }, ms)
      })

    const hop =
      (name: string, next: string | undefined): Handler =>
      async (req, res) => {
        received[name]!.push(Number(req.headers[DEADLINE_HEADER]))
        try {
          const body = await adoptDeadline(
            req.headers,
            async () => {
              if (next === undefined) {
                for (let unit = 0; unit < 100; unit++) {
                  if ((remainingMs() ?? 0) <= 0)
                    throw new DeadlineExceededError(currentDeadline()!.atMs)
                  dUnits.push(clock.now())
                  await sleep(10)
                }
                return 'done'
              }
              await sleep(hopMs)
              return (await client!.request(next, { path: '/' })).text()
            },
            { clock },
          )
          res.end(body)
        } catch (error) {
          res.writeHead(504).end(BreakwaterError.is(error) ? error.code : String(error))
        } finally {
          // The handler's work is over (its caller may have hung up long before).
          finished.add(name)
        }
      }

    const d = await serve(hop('d', undefined))
    const c = await serve(hop('c', 'd'))
    const b = await serve(hop('b', 'c'))
    const a = await serve(hop('a', 'b'))
    const service = (server: TestServer): HttpServiceOptions => ({
      baseUrl: server.url,
      retry: false,
      deadlineMarginMs: margin,
    })
    client = track(
      createHttpClient({
        clock,
        services: { a: service(a), b: service(b), c: service(c), d: service(d) },
      }),
    )
    let settled = false
    const outcome = withDeadline(200, () => client!.request('a', { path: '/' }), { clock })
      .catch((e: unknown) => e)
      .finally(() => {
        settled = true
      })
    for (;;) {
      await until(() => settled || asleep > 0)
      if (settled) break
      await clock.advance(clock.nextTimerAt()! - clock.now())
    }
    const error = await outcome
    // What the caller is waiting for is over; so must be every hop's work.
    await until(() =>
      ['a', 'b', 'c', 'd'].every((h) => received[h]!.length === 0 || finished.has(h)),
    )
    return { error, endedAtMs: clock.now(), received, dUnits, d }
  }

  it("stops the whole chain within A's 200 ms; D works only inside the deadline", async () => {
    const run = await chain(5)
    // Each hop is told what its caller was told, less the 5 ms it spent and the margin: the
    // deadline D adopts ends 4 margins and 3 hops before the caller's, at 100.
    expect([run.received.a, run.received.b, run.received.c, run.received.d]).toEqual([
      [175],
      [145],
      [115],
      [85],
    ])
    // D starts a unit only while its deadline lasts (15 to 95), stops by itself at 105, long
    // before its second of work, and the 504 travels back up to the caller well within its 200.
    expect(run.dUnits).toEqual([15, 25, 35, 45, 55, 65, 75, 85, 95])
    expect(run.error).toBeInstanceOf(HttpStatusError)
    expect((run.error as HttpStatusError).status).toBe(504)
    expect(run.endedAtMs).toBe(105)
  })

  it('never calls D when the budget is spent before C gets to it', async () => {
    const run = await chain(50)
    // A tells B 175 - 50 - 25 = 100, B tells C 100 - 50 - 25 = 25, and C, after its 50 ms,
    // has nothing left for D: nothing is sent to it.
    expect([run.received.a, run.received.b, run.received.c]).toEqual([[175], [100], [25]])
    expect(run.d.hits).toHaveLength(0)
    expect(run.dUnits).toHaveLength(0)
    // B's deadline (150) ends its call to C; B answers A with 504, A the caller.
    expect(run.error).toBeInstanceOf(HttpStatusError)
    expect((run.error as HttpStatusError).status).toBe(504)
    expect(run.endedAtMs).toBe(150)
  })
})

describe('the overall timeout around the retries', () => {
  it('ends the call with the 503 at once when its Retry-After would outlast the time left', async () => {
    const clock = new ManualClock()
    const server = await serve((_req, res) => {
      res.writeHead(503, { 'retry-after': '5' }).end('busy')
    })
    const client = track(
      createHttpClient({
        clock,
        services: { svc: { baseUrl: server.url, overallTimeoutMs: 3_000 } },
      }),
    )
    // Waiting 5 s would only end in the overall timeout's TimeoutError at 3 s.
    const error = await client.request('svc', { path: '/' }).catch((e: unknown) => e)
    expect(server.hits).toHaveLength(1)
    expect(error).toMatchObject({ status: 503 })
    expect(clock.now()).toBe(0)
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('a retry backoff under the deadline margin', () => {
  // deadlineMarginMs: 100 under a 300 ms deadline: an attempt needs at least 101 ms left, so a
  // backoff may end at 199 ms at the latest (the first attempt takes no time on the clock).
  async function run(baseDelayMs: number) {
    const clock = new ManualClock()
    const server = await serve((_req, res) => {
      res.writeHead(503).end('busy')
    })
    const client = track(
      createHttpClient({
        clock,
        services: {
          svc: {
            baseUrl: server.url,
            deadlineMarginMs: 100,
            circuitBreaker: false,
            retry: { maxAttempts: 2, baseDelayMs, jitter: 'none' },
          },
        },
      }),
    )
    const events: HttpClientEvent[] = []
    client.events.on((event) => events.push(event))
    let settled = false
    const pending = withDeadline(300, () => client.request('svc', { path: '/' }), { clock })
      .catch((e: unknown) => e)
      .finally(() => {
        settled = true
      })
    await until(() => settled || events.some((e) => e.type === 'retry'))
    const slept = events.some((e) => e.type === 'retry')
    // A backoff that was started runs out, so the call ends either way.
    while (!settled) {
      await clock.advance(baseDelayMs)
      await until(() => settled || server.hits.length === 2, 1_000).catch(() => {})
    }
    return { error: await pending, hits: server.hits.length, events, slept, clock }
  }

  it('gives up at once with the 503 when the backoff would end inside the margin', async () => {
    const { error, hits, events, slept, clock } = await run(200)
    // Sleeping to 200 ms would leave 100 ms, too little to send: the call would then end in a
    // DeadlineExceededError (started: false) with the 503 lost.
    expect(slept).toBe(false)
    expect(error).toBeInstanceOf(HttpStatusError)
    expect((error as HttpStatusError).status).toBe(503)
    expect(hits).toBe(1)
    expect(clock.now()).toBe(0)
    expect(events.find((e) => e.type === 'giveUp')).toMatchObject({ reason: 'deadline' })
  })

  it('still retries when the backoff leaves exactly the margin plus 1 ms', async () => {
    const { error, hits } = await run(199)
    expect(hits).toBe(2)
    expect((error as HttpStatusError).status).toBe(503)
  })
})
