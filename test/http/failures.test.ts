import type { ServerResponse } from 'node:http'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createHttpClient,
  type HttpClient,
  type HttpClientEvent,
  type HttpServiceOptions,
  HttpStatusError,
} from '../../src/http/index.js'
import {
  AbortedError,
  type BreakwaterError,
  BrokenCircuitError,
  classifyFailure,
  RetryBudgetExhaustedError,
  TimeoutError,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { closedPort, Gate, type Handler, startServer, type TestServer, until } from './servers.js'

// Each test starts its own real server failing in one way. Backoff is a millisecond (or runs
// on a ManualClock); real time is only spent on network round trips and timeouts of at most a
// few hundred milliseconds.

const cleanup: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

async function serve(handler: Handler): Promise<TestServer> {
  const server = await startServer(handler)
  cleanup.push(() => server.close())
  return server
}

function clientFor(baseUrl: string, options: Partial<HttpServiceOptions> = {}): HttpClient {
  const client = createHttpClient({
    services: { svc: { baseUrl, retry: { baseDelayMs: 1 }, ...options } },
  })
  cleanup.push(() => client.close())
  return client
}

function record(client: HttpClient): HttpClientEvent[] {
  const events: HttpClientEvent[] = []
  client.events.on((e) => events.push(e))
  return events
}

async function failure(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected the request to fail')
    },
    (error: unknown) => error,
  )
}

function statuses(...list: number[]): Handler {
  return (_req, res, hit) => {
    const status = list[Math.min(hit.n, list.length) - 1]!
    res.writeHead(status, { 'content-type': 'text/plain' })
    res.end(`answer ${hit.n}: ${status}`)
  }
}

describe('transient statuses', () => {
  it('retries a burst of 502, 503 and 504 and succeeds, reusing one connection', async () => {
    const server = await serve(statuses(502, 503, 504, 200))
    const client = clientFor(server.url, { retry: { maxAttempts: 4, baseDelayMs: 1 } })
    const events = record(client)
    const response = await client.request('svc', { path: '/burst' })
    expect(response.status).toBe(200)
    expect(response.text()).toBe('answer 4: 200')
    expect(response.attempts).toBe(4)
    expect(server.hits).toHaveLength(4)
    // The failed attempts' bodies were read to the end, so the connection stayed usable.
    expect(server.connections()).toBe(1)
    const retries = events.filter((e) => e.type === 'retry')
    expect(retries.map((e) => e.type === 'retry' && (e.error as HttpStatusError).status)).toEqual([
      502, 503, 504,
    ])
    expect(events.filter((e) => e.type === 'attempt')).toHaveLength(4)
  })

  it('rejects with HttpStatusError once retries are spent', async () => {
    const server = await serve(statuses(503))
    const client = clientFor(server.url, { retry: { maxAttempts: 3, baseDelayMs: 1 } })
    const events = record(client)
    const error = await failure(client.request('svc', { path: '/down' }))
    expect(error).toBeInstanceOf(HttpStatusError)
    const status = error as HttpStatusError
    expect(status.code).toBe('HTTP_STATUS')
    expect(status.status).toBe(503)
    expect(status.retryable).toBe(true)
    expect(status.service).toBe('svc')
    expect(status.response.text()).toBe('answer 3: 503')
    expect(server.hits).toHaveLength(3)
    expect(events.find((e) => e.type === 'giveUp')).toMatchObject({ reason: 'maxAttempts' })
    expect(events.at(-1)).toMatchObject({ type: 'failure', service: 'svc', path: '/down' })
  })

  it('does not retry 4xx answers, and resolves them unless throwOnErrorStatus', async () => {
    const server = await serve(statuses(404))
    const client = clientFor(server.url, { retry: { maxAttempts: 5, baseDelayMs: 1 } })
    expect((await client.request('svc', { path: '/a' })).status).toBe(404)
    expect(server.hits).toHaveLength(1)
    const error = await failure(client.request('svc', { path: '/b', throwOnErrorStatus: true }))
    expect(error).toBeInstanceOf(HttpStatusError)
    expect((error as HttpStatusError).status).toBe(404)
    expect((error as HttpStatusError).retryable).toBe(false)
    expect(server.hits).toHaveLength(2)
  })

  it('retries 429 and 408, which are transient', async () => {
    const server = await serve(statuses(429, 408, 201))
    const client = clientFor(server.url)
    const response = await client.request('svc', { path: '/' })
    expect(response.status).toBe(201)
    expect(server.hits).toHaveLength(3)
  })

  it("honours Retry-After on the client's clock", async () => {
    const clock = new ManualClock()
    const server = await serve((_req, res, hit) => {
      if (hit.n === 1) res.writeHead(503, { 'retry-after': '2' }).end('busy')
      else res.end('ok')
    })
    const client = createHttpClient({
      clock,
      services: { svc: { baseUrl: server.url, retry: { baseDelayMs: 1 } } },
    })
    cleanup.push(() => client.close())
    const events = record(client)
    const pending = client.request('svc', { path: '/' })
    // The retry sleeps until the earliest timer, 2 s out (the timeouts are further away).
    await until(() => clock.nextTimerAt() === 2_000)
    await clock.advance(1_999)
    expect(server.hits).toHaveLength(1)
    await clock.advance(1)
    const response = await pending
    expect(response.text()).toBe('ok')
    expect(server.hits).toHaveLength(2)
    const retry = events.find((e) => e.type === 'retry')
    expect(retry).toMatchObject({ delayMs: 2_000 })
    expect((retry as { error: HttpStatusError }).error.retryAfterMs).toBe(2_000)
  })

  it('caps a long Retry-After at maxRetryAfterMs', async () => {
    const clock = new ManualClock()
    const server = await serve((_req, res, hit) => {
      if (hit.n === 1) res.writeHead(429, { 'retry-after': '3600' }).end()
      else res.end('ok')
    })
    const client = createHttpClient({
      clock,
      services: {
        svc: {
          baseUrl: server.url,
          retry: { baseDelayMs: 1, maxRetryAfterMs: 5_000 },
          overallTimeoutMs: 60_000,
        },
      },
    })
    cleanup.push(() => client.close())
    const pending = client.request('svc', { path: '/' })
    await until(() => clock.nextTimerAt() === 5_000)
    await clock.advance(5_000)
    expect((await pending).status).toBe(200)
  })
})

describe('network failures', () => {
  it('retries a connection reset before any response', async () => {
    const server = await serve((req, res, hit) => {
      if (hit.n === 1) req.socket.destroy()
      else res.end('ok')
    })
    const client = clientFor(server.url)
    const response = await client.request('svc', { path: '/' })
    expect(response.text()).toBe('ok')
    expect(response.attempts).toBe(2)
    expect(server.hits).toHaveLength(2)
  })

  it('retries a connection reset in the middle of the body', async () => {
    const server = await serve((req, res, hit) => {
      if (hit.n === 1) {
        res.writeHead(200, { 'content-length': '1000' })
        res.write('partial')
        setImmediate(() => req.socket.destroy())
      } else res.end('whole')
    })
    const client = clientFor(server.url)
    const response = await client.request('svc', { path: '/' })
    expect(response.text()).toBe('whole')
    expect(server.hits).toHaveLength(2)
  })

  it('classifies resets as transient', async () => {
    const server = await serve((req) => {
      req.socket.destroy()
    })
    const client = clientFor(server.url, { retry: false })
    const error = await failure(client.request('svc', { path: '/' }))
    expect((error as { code?: string }).code).toBe('UND_ERR_SOCKET')
    expect(classifyFailure(error)).toBe('transient')
    expect(server.hits).toHaveLength(1)
  })

  it('retries a refused connection, then fails with ECONNREFUSED (transient)', async () => {
    const port = await closedPort()
    const client = clientFor(`http://127.0.0.1:${port}`, {
      retry: { maxAttempts: 3, baseDelayMs: 1 },
    })
    const events = record(client)
    const error = await failure(client.request('svc', { path: '/' }))
    expect((error as { code?: string }).code).toBe('ECONNREFUSED')
    expect(classifyFailure(error)).toBe('transient')
    expect(events.filter((e) => e.type === 'attempt')).toHaveLength(3)
  })

  it('times out an attempt to a hanging server and retries it', async () => {
    const closed: number[] = []
    const server = await serve((_req, res, hit) => {
      // The first request never gets an answer; the client must give up on it.
      res.on('close', () => closed.push(hit.n))
      if (hit.n > 1) res.end('ok')
    })
    const client = clientFor(server.url, { attemptTimeoutMs: 100 })
    const events = record(client)
    const response = await client.request('svc', { path: '/' })
    expect(response.text()).toBe('ok')
    expect(response.attempts).toBe(2)
    const retry = events.find((e) => e.type === 'retry') as { error: unknown }
    expect(retry.error).toBeInstanceOf(TimeoutError)
    // The timed-out request was really aborted: its connection was closed.
    await until(() => closed.includes(1))
  })

  // On the client's clock: on real time a loaded machine let the overall timeout pass before
  // an attempt reached the server, or fit a fourth one in (a CI run failed so).
  it('fails the call at the overall timeout however many attempts are left', async () => {
    const clock = new ManualClock()
    const server = await serve(() => {})
    const client = createHttpClient({
      clock,
      services: {
        svc: {
          baseUrl: server.url,
          attemptTimeoutMs: 100,
          overallTimeoutMs: 250,
          retry: { maxAttempts: 50, baseDelayMs: 1 },
        },
      },
    })
    cleanup.push(() => client.close())
    const events = record(client)
    let settled = false
    const pending = failure(client.request('svc', { path: '/' })).finally(() => {
      settled = true
    })
    // Every attempt sent reaches the hanging server before time moves on to the next timer
    // (its timeout, a backoff of at most 1 ms, or the overall timeout).
    while (!settled) {
      const sent = events.filter((e) => e.type === 'attempt').length
      await until(
        () => settled || (server.hits.length === sent && clock.nextTimerAt() !== undefined),
      )
      if (settled) break
      await clock.advance(clock.nextTimerAt()! - clock.now())
    }
    const error = await pending
    expect(error).toBeInstanceOf(TimeoutError)
    expect((error as TimeoutError).timeoutMs).toBe(250)
    expect(clock.now()).toBe(250)
    // At 0, about 100 and about 200: the fourth would begin after 250.
    expect(server.hits).toHaveLength(3)
  })

  it('times out slow headers with headersTimeoutMs', async () => {
    const responses: ServerResponse[] = []
    const server = await serve((_req, res) => {
      responses.push(res)
    })
    const client = clientFor(server.url, { headersTimeoutMs: 100, retry: false })
    const error = await failure(client.request('svc', { path: '/' }))
    expect((error as { code?: string }).code).toBe('UND_ERR_HEADERS_TIMEOUT')
    expect(classifyFailure(error)).toBe('transient')
  })

  it('times out a stalled body with bodyTimeoutMs, and retries it', async () => {
    const server = await serve((_req, res, hit) => {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('start ')
      if (hit.n > 1) res.end('end')
    })
    const single = clientFor(server.url, { bodyTimeoutMs: 100, retry: false })
    const error = await failure(single.request('svc', { path: '/' }))
    expect((error as { code?: string }).code).toBe('UND_ERR_BODY_TIMEOUT')
    expect(classifyFailure(error)).toBe('transient')

    const retrying = clientFor(server.url, { bodyTimeoutMs: 100 })
    const response = await retrying.request('svc', { path: '/' })
    expect(response.text()).toBe('start end')
  })

  it('counts the body timeout from the last chunk, not from the headers', async () => {
    const server = await serve(async (_req, res) => {
      res.writeHead(200)
      for (let i = 0; i < 5; i++) {
        res.write(`${i}`)
        await new Promise((resolve) => setTimeout(resolve, 40))
      }
      res.end()
    })
    const client = clientFor(server.url, { bodyTimeoutMs: 150, retry: false })
    const response = await client.request('svc', { path: '/' })
    expect(response.text()).toBe('01234')
  })

  it('refuses a body larger than maxResponseBytes, without retrying', async () => {
    const server = await serve((_req, res) => {
      res.end('x'.repeat(5_000))
    })
    const client = clientFor(server.url, { maxResponseBytes: 1_000 })
    const error = await failure(client.request('svc', { path: '/' }))
    expect((error as { code?: string }).code).toBe('UND_ERR_RES_EXCEEDED_MAX_SIZE')
    // undici's own message says only 'Response content exceeded max size': the service, the
    // limit and the option are what a log reader needs, as the timeouts' messages name theirs.
    expect((error as Error).message).toBe(
      'Service "svc": the response body exceeded maxResponseBytes (1000 bytes)',
    )
    expect(server.hits).toHaveLength(1)
  })

  it("aborts the undici request when the caller's signal aborts", async () => {
    let closed = false
    const server = await serve((_req, res) => {
      res.on('close', () => {
        closed = true
      })
    })
    const client = clientFor(server.url)
    const controller = new AbortController()
    const pending = failure(client.request('svc', { path: '/', signal: controller.signal }))
    await until(() => server.hits.length === 1)
    controller.abort(new Error('user left'))
    const error = await pending
    expect(error).toBeInstanceOf(AbortedError)
    await until(() => closed)
    expect(server.hits).toHaveLength(1)
  })

  it('drops a request that ended while waiting for a connection without killing the connection', async () => {
    // The only connection is busy; the second call gives up while its request waits in the
    // pool. When the connection frees, undici hands that stale request to it: it must be
    // dropped unsent, not aborted (which destroys the healthy keep-alive socket, so a slow
    // connect could never be used by the next attempt either).
    const gate = new Gate()
    const server = await serve(async (req, res) => {
      if (req.url === '/hold') await gate.wait()
      res.end('ok')
    })
    const client = clientFor(server.url, { bulkhead: false, connections: 1, retry: false })
    const held = client.request('svc', { path: '/hold' })
    await until(() => server.hits.length === 1)
    const controller = new AbortController()
    const stale = failure(client.request('svc', { path: '/stale', signal: controller.signal }))
    await until(() => client.state().svc?.pool.pending === 1)
    controller.abort(new Error('caller left'))
    expect(await stale).toBeInstanceOf(AbortedError)
    gate.open()
    await held
    expect((await client.request('svc', { path: '/after' })).status).toBe(200)
    expect(server.hits.map((h) => h.url)).toEqual(['/hold', '/after'])
    expect(server.connections()).toBe(1)
    expect(client.state().svc?.pool.size).toBe(0)
  })

  it('rejects at once with AbortedError for an already aborted signal', async () => {
    const server = await serve((_req, res) => {
      res.end()
    })
    const client = clientFor(server.url)
    const error = await failure(client.request('svc', { path: '/', signal: AbortSignal.abort() }))
    expect(error).toBeInstanceOf(AbortedError)
    expect(server.hits).toHaveLength(0)
  })
})

describe('circuit breaker', () => {
  it('opens after failures and then fails fast without reaching the server', async () => {
    const clock = new ManualClock()
    let healthy = false
    const server = await serve((_req, res) => {
      res.writeHead(healthy ? 200 : 503).end()
    })
    const client = createHttpClient({
      clock,
      services: {
        svc: {
          baseUrl: server.url,
          retry: false,
          circuitBreaker: { window: { kind: 'consecutive', failures: 3 }, cooldownMs: 10_000 },
        },
      },
    })
    cleanup.push(() => client.close())
    const events = record(client)
    for (let i = 0; i < 3; i++) {
      expect(await failure(client.request('svc', { path: '/' }))).toBeInstanceOf(HttpStatusError)
    }
    expect(client.state().svc?.breaker).toBe('open')
    for (let i = 0; i < 5; i++) {
      const error = await failure(client.request('svc', { path: '/' }))
      expect(error).toBeInstanceOf(BrokenCircuitError)
      expect((error as BrokenCircuitError).retryAfterMs).toBe(10_000)
    }
    expect(server.hits).toHaveLength(3)
    expect(events.filter((e) => e.type === 'rejected' && e.by === 'breaker')).toHaveLength(5)

    healthy = true
    await clock.advance(10_000)
    expect(client.state().svc?.breaker).toBe('half-open')
    expect((await client.request('svc', { path: '/' })).status).toBe(200)
    expect(client.state().svc?.breaker).toBe('closed')
    expect(server.hits).toHaveLength(4)
    expect(
      events.filter((e) => e.type === 'stateChange').map((e) => e.type === 'stateChange' && e.to),
    ).toEqual(['open', 'half-open', 'closed'])
  })

  it('ends the retries as soon as the breaker opens', async () => {
    const server = await serve(statuses(503))
    const client = clientFor(server.url, {
      retry: { maxAttempts: 10, baseDelayMs: 1 },
      circuitBreaker: { window: { kind: 'consecutive', failures: 2 } },
    })
    const error = await failure(client.request('svc', { path: '/' }))
    expect(error).toBeInstanceOf(BrokenCircuitError)
    expect(server.hits).toHaveLength(2)
  })

  it('counts other 5xx as failures although they resolve as responses', async () => {
    const server = await serve(statuses(500))
    const client = clientFor(server.url, {
      retry: { maxAttempts: 5, baseDelayMs: 1 },
      circuitBreaker: { window: { kind: 'consecutive', failures: 2 } },
    })
    expect((await client.request('svc', { path: '/' })).status).toBe(500)
    expect((await client.request('svc', { path: '/' })).status).toBe(500)
    // A 500 is not known to be temporary: never retried, one hit per call.
    expect(server.hits).toHaveLength(2)
    expect(await failure(client.request('svc', { path: '/' }))).toBeInstanceOf(BrokenCircuitError)
    expect(server.hits).toHaveLength(2)
  })

  // The downstream answered; the body was over this client's own limit. Counted, one endpoint
  // with large answers opened the circuit, and every call to the service failed fast.
  it('does not count an answer over maxResponseBytes against the service, unless a 5xx', async () => {
    const server = await serve((req, res) => {
      res.statusCode = req.url === '/broken' ? 500 : 200
      res.end('x'.repeat(5_000))
    })
    const client = clientFor(server.url, {
      maxResponseBytes: 1_000,
      circuitBreaker: { window: { kind: 'consecutive', failures: 2 } },
    })
    for (let i = 0; i < 3; i++) {
      const error = await failure(client.request('svc', { path: '/export' }))
      expect((error as { code?: string }).code).toBe('UND_ERR_RES_EXCEEDED_MAX_SIZE')
    }
    expect(client.state().svc?.breaker).toBe('closed')
    await failure(client.request('svc', { path: '/broken' }))
    await failure(client.request('svc', { path: '/broken' }))
    expect(client.state().svc?.breaker).toBe('open')
    expect(server.hits).toHaveLength(5)
  })

  it('does not count 4xx answers against the service', async () => {
    const server = await serve(statuses(400))
    const client = clientFor(server.url, {
      circuitBreaker: { window: { kind: 'consecutive', failures: 2 } },
    })
    for (let i = 0; i < 4; i++) {
      await client.request('svc', { path: '/', throwOnErrorStatus: i % 2 === 0 }).catch(() => {})
    }
    expect(client.state().svc?.breaker).toBe('closed')
    expect(server.hits).toHaveLength(4)
  })
})

describe('retry budget', () => {
  it('is on by default and stops retries once spent', async () => {
    const server = await serve(statuses(503))
    const client = clientFor(server.url, {
      retry: { maxAttempts: 5, baseDelayMs: 1 },
      // No share of traffic and a floor of one token per ten seconds: exactly one retry.
      retryBudget: { ratio: 0, minRetriesPerSecond: 0.1, ttlMs: 10_000 },
    })
    const error = await failure(client.request('svc', { path: '/' }))
    expect(error).toBeInstanceOf(RetryBudgetExhaustedError)
    expect(((error as BreakwaterError).cause as HttpStatusError).status).toBe(503)
    expect(server.hits).toHaveLength(2)

    const defaults = clientFor(server.url)
    expect(defaults.state().svc?.retryBudget).toBe(100)
  })
})
