import { createServer, request as httpRequest, type IncomingMessage } from 'node:http'
import { describe, expect, it } from 'vitest'
import { classifyFailure, DEADLINE_HEADER } from '../../../src/index.js'
import type { ServiceConfig } from '../../../src/proxy/contracts.js'
import {
  createServiceRuntime,
  UpstreamError,
  type UpstreamService,
} from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { refusedUrl } from '../support/faulty-upstream.js'
import {
  eventually,
  type Front,
  forwardRequest,
  recordingClient,
  serviceConfig,
  startFront,
  testDeps,
  useUpstreamTest,
} from './helpers.js'

const { cleanups, upstream } = useUpstreamTest()

interface Setup {
  readonly clock: ManualClock
  readonly service: UpstreamService
  readonly front: Front
  readonly deps: ReturnType<typeof testDeps>
}

async function setup(
  config: ServiceConfig,
  random = () => 0.5,
  deadlineHeader?: string,
): Promise<Setup> {
  const clock = new ManualClock(1_000_000)
  const deps = testDeps(clock)
  const service = createServiceRuntime(
    config,
    deps,
    deadlineHeader === undefined ? { random } : { random, deadlineHeader },
  )
  cleanups.push(() => service.close())
  const front = await startFront(service, clock)
  cleanups.push(() => front.close())
  return { clock, service, front, deps }
}

/** Waits until the clock's earliest timer is at most `ms` away (a retry or wait was scheduled). */
async function timerWithin(clock: ManualClock, ms: number): Promise<void> {
  await eventually(() => {
    const at = clock.nextTimerAt()
    return at !== undefined && at - clock.now() <= ms
  })
}

/**
 * A POST with `headers` through a service with addIdempotencyKey, whose first attempt gets a
 * 502: both attempts carry one generated key (Node would join a second one with ", ").
 */
async function expectOneAddedKey(headers: Record<string, string>): Promise<void> {
  const added = await upstream()
  added.script.push({ kind: 'respond', status: 502 })
  const base = serviceConfig([added.url])
  const { front, clock } = await setup({
    ...base,
    retry: { ...base.retry!, addIdempotencyKey: true },
  })
  const pending = fetch(`${front.url}/pay`, { method: 'POST', body: 'x', headers })
  await timerWithin(clock, 50)
  await clock.advance(50)
  expect((await pending).status).toBe(200)
  const keys = added.requests.map((r) => r.headers['idempotency-key'])
  expect(keys).toHaveLength(2)
  expect(keys[0]).toMatch(/^[0-9a-f-]{36}$/)
  expect(keys[1]).toBe(keys[0])
}

/**
 * A GET whose response the client does not read until `finish()`, which reads it to the end
 * and resolves with its length (rejects if it was cut short).
 */
function pausedDownload(url: string): { started(): boolean; finish(): Promise<number> } {
  let received = 0
  let response: IncomingMessage | undefined
  const done = new Promise<number>((resolve, reject) => {
    const req = httpRequest(url, { agent: false }, (res) => {
      response = res
      res.pause()
      res.on('data', (chunk: Buffer) => {
        received += chunk.length
      })
      res.on('end', () => resolve(received))
      res.on('error', reject)
      res.on('aborted', () => reject(new Error('response cut short')))
    })
    req.on('error', reject)
    req.end()
  })
  return {
    started: () => response !== undefined,
    finish: () => {
      response?.resume()
      return done
    },
  }
}

describe('forward: streaming and headers', () => {
  it('streams the response, drops hop-by-hop and Connection-named headers, and sets the request head', async () => {
    const up = await upstream({
      fallback: {
        kind: 'respond',
        status: 201,
        headers: { connection: 'x-internal', 'x-internal': 'secret', 'x-kept': 'yes' },
        body: 'hello',
      },
    })
    const { front } = await setup(serviceConfig([up.url]))
    const response = await fetch(`${front.url}/items?x=1`, {
      headers: { 'x-custom': 'a', [DEADLINE_HEADER]: '999999', 'x-request-id': 'spoofed' },
    })
    expect(response.status).toBe(201)
    expect(await response.text()).toBe('hello')
    expect(response.headers.get('x-kept')).toBe('yes')
    expect(response.headers.get('x-internal')).toBeNull()
    const seen = up.requests[0]!
    expect(seen.url).toBe('/items?x=1')
    expect(seen.headers['x-custom']).toBe('a')
    expect(seen.headers.host).toBe(`127.0.0.1:${up.port}`)
    expect(seen.headers['x-request-id']).toBe('req-1')
    // The overall timeout (10 s) is sooner than the inbound 999999 ms: the header says so.
    expect(seen.headers[DEADLINE_HEADER]).toBe('10000')
    await eventually(() => front.outcomes.length === 1)
    expect(front.outcomes[0]).toMatchObject({ status: 201, attempts: 1, error: undefined })
  })

  it('sends the deadline under the configured header name, replacing an inbound one', async () => {
    const up = await upstream()
    const { front } = await setup(serviceConfig([up.url]), () => 0.5, 'X-Deadline-Ms')
    const response = await fetch(`${front.url}/a`, { headers: { 'x-deadline-ms': '99999' } })
    expect(response.status).toBe(200)
    expect(up.requests[0]!.headers['x-deadline-ms']).toBe('10000')
    expect(up.requests[0]!.headers[DEADLINE_HEADER]).toBeUndefined()
    expect(() =>
      createServiceRuntime(serviceConfig([up.url]), testDeps(), { deadlineHeader: 'bad header' }),
    ).toThrow(/createServiceRuntime\.deadlineHeader/)
  })

  it("rewrites an inbound grpc-timeout to the time left, never passing the caller's on", async () => {
    const up = await upstream()
    const { front, clock } = await setup(serviceConfig([up.url]))
    // A caller asking for 99999999 hours: the overall timeout (10 s) is what the upstream gets.
    const long = await fetch(`${front.url}/a`, { headers: { 'grpc-timeout': '99999999H' } })
    expect(long.status).toBe(200)
    expect(up.requests[0]!.headers['grpc-timeout']).toBe('10000m')
    // Reduced by the time spent, as the deadline header is.
    up.script.push({ kind: 'respond', status: 503, headers: { 'retry-after': '1' } })
    const pending = fetch(`${front.url}/b`, {
      headers: { [DEADLINE_HEADER]: '5000', 'grpc-timeout': '5S' },
    })
    await up.waitForRequests(2)
    expect(up.requests[1]!.headers['grpc-timeout']).toBe('5000m')
    await timerWithin(clock, 1_000)
    await clock.advance(1_000)
    expect((await pending).status).toBe(200)
    expect(up.requests[2]!.headers['grpc-timeout']).toBe('4000m')
    expect(up.requests[2]!.headers[DEADLINE_HEADER]).toBe('4000')
    // No grpc-timeout in, none out.
    await fetch(`${front.url}/c`)
    expect(up.requests[3]!.headers['grpc-timeout']).toBeUndefined()
  })

  it('passes the inbound Host when rewriteHost is off, and forwards the body', async () => {
    const up = await upstream()
    const { front } = await setup(serviceConfig([up.url], { rewriteHost: false }))
    const response = await fetch(`${front.url}/x`, {
      method: 'PUT',
      body: 'payload',
      headers: { host: 'orders.example' },
    })
    expect(response.status).toBe(200)
    await response.text()
    expect(up.requests[0]).toMatchObject({ method: 'PUT', body: 'payload' })
    expect(up.requests[0]!.headers.host).toBe(new URL(front.url).host)
  })

  it('destroys the client connection when the upstream resets mid-body (Content-Length and chunked)', async () => {
    for (const chunked of [false, true]) {
      const up = await upstream({ fallback: { kind: 'reset-mid-body', chunked } })
      const { front } = await setup(serviceConfig([up.url]))
      const result = await new Promise<{
        status: number
        error: string | undefined
        bytes: number
      }>((resolve) => {
        const req = httpRequest(`${front.url}/big`, (res) => {
          let bytes = 0
          res.on('data', (chunk: Buffer) => {
            bytes += chunk.length
          })
          res.on('end', () => resolve({ status: res.statusCode ?? 0, error: undefined, bytes }))
          res.on('error', (error) =>
            resolve({ status: res.statusCode ?? 0, error: error.message, bytes }),
          )
        })
        req.end()
      })
      expect(result.status).toBe(200)
      // Never a clean end: the client sees the connection break after the partial body.
      expect(result.error).toBeDefined()
      expect(result.bytes).toBeLessThan(1000)
      await eventually(() => front.outcomes.length === 1)
      expect(front.outcomes[0]).toMatchObject({ status: 200, error: 'UPSTREAM_RESET' })
    }
  })

  it('applies backpressure: a client that stops reading stops the upstream, and gets every byte later', async () => {
    const total = 64 * 1024 * 1024
    const up = await upstream({ fallback: { kind: 'stream', bytes: total } })
    const { front } = await setup(serviceConfig([up.url]))
    const download = pausedDownload(`${front.url}/big`)
    await eventually(() => download.started())
    // Wait until the upstream has stopped writing (the buffers on the way are full).
    let last = -1
    await eventually(async () => {
      const now = up.streamed
      const settled = now === last && now > 0
      last = now
      await new Promise((resolve) => setTimeout(resolve, 150))
      return settled
    }, 20_000)
    expect(up.streamed).toBeLessThan(total / 2)
    expect(await download.finish()).toBe(total)
  })

  it('does not time out the upstream while a slow client holds the stream back (readMs on the clock)', async () => {
    const total = 64 * 1024 * 1024
    const up = await upstream({ fallback: { kind: 'stream', bytes: total } })
    const { clock, service, front } = await setup(
      serviceConfig([up.url], {
        timeouts: { connectMs: 1_000, readMs: 2_000, overallMs: 600_000 },
        breaker: { failureThreshold: 1, cooldownMs: 60_000, halfOpenProbes: 1 },
      }),
    )
    const download = pausedDownload(`${front.url}/big`)
    // The client reads nothing: the proxy's writes fill up and it pauses the upstream.
    await eventually(() => front.responses[0]?.writableNeedDrain === true, 20_000)
    // Longer than readMs without an upstream chunk, but only because the client is slow.
    await clock.advance(5_000)
    expect(await download.finish()).toBe(total)
    expect(front.outcomes[0]).toMatchObject({ status: 200, error: undefined })
    expect(service.state().breaker).toBe('closed')
  })

  it('exchange() buffers the response up to the cap and marks it truncated', async () => {
    const up = await upstream({ fallback: { kind: 'respond', body: 'abcdefghij' } })
    const { service } = await setup(serviceConfig([up.url]))
    const whole = await service.exchange(forwardRequest(), 100)
    expect(whole).toMatchObject({ status: 200, truncated: false })
    expect(whole.body.toString()).toBe('abcdefghij')
    expect(whole.headers['content-type']).toBe('text/plain')
    const cut = await service.exchange(forwardRequest(), 4)
    expect(cut.body.toString()).toBe('abcd')
    expect(cut.truncated).toBe(true)
  })

  it("exchange() rejects an answer cut mid-body with UPSTREAM_RESET and status 502, not the cut answer's 200", async () => {
    const up = await upstream({ fallback: { kind: 'reset-mid-body' } })
    const { service } = await setup(serviceConfig([up.url], { retry: undefined }))
    const error = await service.exchange(forwardRequest(), 100).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(UpstreamError)
    expect(error).toMatchObject({ code: 'UPSTREAM_RESET', status: 502, retryable: true })
  })

  it('exchange() with a cap of 0 resolves with the head and an empty, truncated body (it rejected a 200 as UPSTREAM_RESET)', async () => {
    const up = await upstream({ fallback: { kind: 'respond', body: 'abcdefghij' } })
    const { service } = await setup(serviceConfig([up.url]))
    const head = await service.exchange(forwardRequest(), 0)
    expect(head).toMatchObject({ status: 200, truncated: true })
    expect(head.body.length).toBe(0)
    expect(head.headers['content-type']).toBe('text/plain')
  })
})

describe('forward: failures and retries', () => {
  it('answers 502 UPSTREAM_CONNECT_FAILED as problem+json when every attempt is refused', async () => {
    const refused = await refusedUrl()
    const { front, clock } = await setup(serviceConfig([refused]))
    const pending = fetch(`${front.url}/a`)
    // Two retries, each after backoff on the manual clock (random 0.5: 50 ms, then 100 ms).
    await timerWithin(clock, 50)
    await clock.advance(50)
    await timerWithin(clock, 100)
    await clock.advance(100)
    const response = await pending
    expect(response.status).toBe(502)
    expect(response.headers.get('content-type')).toBe('application/problem+json')
    expect(await response.json()).toMatchObject({
      status: 502,
      code: 'UPSTREAM_CONNECT_FAILED',
      service: 'orders',
    })
    await eventually(() => front.outcomes.length === 1)
    expect(front.outcomes[0]).toMatchObject({ attempts: 3, error: 'UPSTREAM_CONNECT_FAILED' })
  })

  it('retries a reset before the response on the next endpoint', async () => {
    const bad = await upstream({ fallback: { kind: 'reset' } })
    const good = await upstream()
    const { front, clock } = await setup(serviceConfig([bad.url, good.url]))
    const pending = fetch(`${front.url}/a`)
    await timerWithin(clock, 50)
    await clock.advance(50)
    const response = await pending
    expect(response.status).toBe(200)
    expect(await response.text()).toBe('ok /a')
    expect(bad.requests).toHaveLength(1)
    expect(good.requests).toHaveLength(1)
  })

  it('times out a hanging upstream after readMs on the clock: 504 UPSTREAM_TIMEOUT', async () => {
    const up = await upstream({ fallback: { kind: 'hang' } })
    const { front, clock } = await setup(serviceConfig([up.url], { retry: undefined }))
    let answered = false
    const pending = fetch(`${front.url}/slow`).then((r) => {
      answered = true
      return r
    })
    await up.waitForRequests(1)
    await clock.advance(1_999)
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(answered).toBe(false)
    await clock.advance(1)
    const response = await pending
    expect(response.status).toBe(504)
    expect(((await response.json()) as { code: string }).code).toBe('UPSTREAM_TIMEOUT')
  })

  it('serves slow headers that arrive within readMs', async () => {
    const up = await upstream({ fallback: { kind: 'hold' } })
    const { front, clock } = await setup(serviceConfig([up.url]))
    const pending = fetch(`${front.url}/slow`)
    await up.waitForRequests(1)
    await clock.advance(1_900)
    up.release()
    const response = await pending
    expect(response.status).toBe(200)
    expect(await response.text()).toBe('ok /slow')
  })

  it('honours Retry-After on 503 and passes on the deadline reduced by the time spent', async () => {
    const up = await upstream()
    up.script.push({ kind: 'respond', status: 503, headers: { 'retry-after': '1' } })
    const { front, clock } = await setup(serviceConfig([up.url]))
    const pending = fetch(`${front.url}/a`, { headers: { [DEADLINE_HEADER]: '5000' } })
    await up.waitForRequests(1)
    expect(up.requests[0]!.headers[DEADLINE_HEADER]).toBe('5000')
    await timerWithin(clock, 1_000)
    await clock.advance(999)
    expect(up.requests).toHaveLength(1)
    await clock.advance(1)
    const response = await pending
    expect(response.status).toBe(200)
    expect(up.requests).toHaveLength(2)
    expect(up.requests[1]!.headers[DEADLINE_HEADER]).toBe('4000')
  })

  it('does not retry when Retry-After reaches past the deadline: the 503 goes to the client', async () => {
    const up = await upstream()
    up.script.push({ kind: 'respond', status: 503, headers: { 'retry-after': '30' }, body: 'busy' })
    const { front } = await setup(serviceConfig([up.url]))
    const response = await fetch(`${front.url}/a`)
    expect(response.status).toBe(503)
    expect(await response.text()).toBe('busy')
    expect(up.requests).toHaveLength(1)
  })

  it('answers 502 to a response with a transfer coding besides chunked, never its coded bytes as the body', async () => {
    // The pool de-chunks but decodes no gzip, and Transfer-Encoding is hop-by-hop: passed on
    // without it, the client would take the compressed bytes for the body (nginx answers 502
    // too: "upstream sent unknown Transfer-Encoding").
    const server = createServer((req, res) => {
      res.writeHead(200, { 'transfer-encoding': req.url === '/gzip' ? 'gzip, chunked' : 'Chunked' })
      res.end('not really gzip')
    })
    const port = await listenOnLoopback(server)
    cleanups.push(() => new Promise((resolve) => server.close(resolve)))
    const { front } = await setup(serviceConfig([`http://127.0.0.1:${port}`], { retry: undefined }))
    const response = await fetch(`${front.url}/gzip`)
    expect(response.status).toBe(502)
    expect(response.headers.get('content-type')).toBe('application/problem+json')
    expect(await response.json()).toMatchObject({ status: 502, code: 'UPSTREAM_RESPONSE_INVALID' })
    // Plain chunked still streams through.
    const plain = await fetch(`${front.url}/plain`)
    expect(plain.status).toBe(200)
    expect(await plain.text()).toBe('not really gzip')
  })

  it('passes a 500 through without retrying it', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 500, body: 'boom' } })
    const { front } = await setup(serviceConfig([up.url]))
    const response = await fetch(`${front.url}/a`)
    expect(response.status).toBe(500)
    expect(await response.text()).toBe('boom')
    expect(up.requests).toHaveLength(1)
  })

  it('retries POST only with an Idempotency-Key, and adds one when addIdempotencyKey', async () => {
    const plain = await upstream({ fallback: { kind: 'respond', status: 503 } })
    const { front } = await setup(serviceConfig([plain.url]))
    expect((await fetch(`${front.url}/pay`, { method: 'POST', body: 'x' })).status).toBe(503)
    expect(plain.requests).toHaveLength(1)

    const keyed = await upstream()
    keyed.script.push({ kind: 'respond', status: 503 })
    const one = await setup(serviceConfig([keyed.url]))
    const pending = fetch(`${one.front.url}/pay`, {
      method: 'POST',
      body: 'x',
      headers: { 'idempotency-key': 'k-1' },
    })
    await timerWithin(one.clock, 50)
    await one.clock.advance(50)
    expect((await pending).status).toBe(200)
    expect(keyed.requests.map((r) => r.headers['idempotency-key'])).toEqual(['k-1', 'k-1'])

    await expectOneAddedKey({})
  })

  it('does not count an empty Idempotency-Key as a key: no retry, and addIdempotencyKey replaces it', async () => {
    // An empty key names no operation: an upstream that skips deduplication without a usable
    // key would run a retried POST twice.
    const plain = await upstream({ fallback: { kind: 'respond', status: 503 } })
    const { front } = await setup(serviceConfig([plain.url]))
    for (const key of ['', '   ']) {
      const response = await fetch(`${front.url}/pay`, {
        method: 'POST',
        body: 'x',
        headers: { 'idempotency-key': key },
      })
      expect(response.status).toBe(503)
    }
    expect(plain.requests).toHaveLength(2)

    await expectOneAddedKey({ 'idempotency-key': '' })
  })

  it('stops retrying when the retry budget is spent', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 503 } })
    const base = serviceConfig([up.url])
    const { front } = await setup({
      ...base,
      retry: { ...base.retry!, budgetRatio: 0, budgetMinPerSecond: 0 },
    })
    const response = await fetch(`${front.url}/a`)
    expect(response.status).toBe(503)
    expect(up.requests).toHaveLength(1)
  })

  it('gives the retry budget its token back when the client leaves during the backoff', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 503 } })
    const { front, clock, service } = await setup(serviceConfig([up.url]))
    const client = new AbortController()
    const before = service.state().retryBudgetLeft as number
    const pending = fetch(`${front.url}/a`, { signal: client.signal }).catch(() => 'aborted')
    // The first attempt got its 503 and the retry waits, its token taken (a timer alone is not
    // enough: the connect timeout, 1 s away, is one too, before the 503 is in).
    await eventually(() => (service.state().retryBudgetLeft as number) < before)
    await timerWithin(clock, 1_000)
    const whileWaiting = service.state().retryBudgetLeft as number
    client.abort()
    expect(await pending).toBe('aborted')
    await eventually(() => service.state().bulkhead.running === 0)
    // No retry was made: the token the wait took is back.
    expect(service.state().retryBudgetLeft).toBe(whileWaiting + 1)
    expect(up.requests).toHaveLength(1)
  })

  it('answers 504 DEADLINE_EXCEEDED at once for a spent inbound deadline', async () => {
    const up = await upstream()
    const { front } = await setup(serviceConfig([up.url]))
    const response = await fetch(`${front.url}/a`, { headers: { [DEADLINE_HEADER]: '0' } })
    expect(response.status).toBe(504)
    expect(((await response.json()) as { code: string }).code).toBe('DEADLINE_EXCEEDED')
    expect(up.requests).toHaveLength(0)
  })
})

describe('forward: breaker and bulkhead', () => {
  it('opens after consecutive failures, fails fast, then closes after a good probe', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 502 } })
    const { front, clock, service } = await setup(
      serviceConfig([up.url], {
        retry: undefined,
        breaker: { failureThreshold: 2, cooldownMs: 5_000, halfOpenProbes: 1 },
      }),
    )
    expect((await fetch(`${front.url}/a`)).status).toBe(502)
    expect((await fetch(`${front.url}/a`)).status).toBe(502)
    expect(service.state().breaker).toBe('open')
    const fast = await fetch(`${front.url}/a`)
    expect(fast.status).toBe(503)
    expect(((await fast.json()) as { code: string }).code).toBe('BROKEN_CIRCUIT')
    expect(up.requests).toHaveLength(2)
    await clock.advance(5_000)
    up.fallback = { kind: 'respond' }
    expect((await fetch(`${front.url}/a`)).status).toBe(200)
    expect(service.state().breaker).toBe('closed')
  })

  it('answers BROKEN_CIRCUIT with Retry-After: the cooldown left on the clock, in whole seconds rounded up', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 502 } })
    const { front, clock } = await setup(
      serviceConfig([up.url], {
        retry: undefined,
        breaker: { failureThreshold: 1, cooldownMs: 5_000, halfOpenProbes: 1 },
      }),
    )
    expect((await fetch(`${front.url}/a`)).status).toBe(502)
    const opened = await fetch(`${front.url}/a`)
    expect(opened.status).toBe(503)
    expect(opened.headers.get('retry-after')).toBe('5')
    expect(opened.headers.get('content-type')).toBe('application/problem+json')
    expect(await opened.json()).toMatchObject({
      status: 503,
      code: 'BROKEN_CIRCUIT',
      service: 'orders',
    })
    await clock.advance(3_500)
    expect((await fetch(`${front.url}/a`)).headers.get('retry-after')).toBe('2')
    await clock.advance(1_499)
    // 1 ms left: never 0, which a client would take as "retry now".
    expect((await fetch(`${front.url}/a`)).headers.get('retry-after')).toBe('1')
    expect(up.requests).toHaveLength(1)
  })

  it('answers BROKEN_CIRCUIT with Retry-After 1 while half-open with its probe slot taken', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 502 } })
    const { front, clock, service } = await setup(
      serviceConfig([up.url], {
        retry: undefined,
        breaker: { failureThreshold: 1, cooldownMs: 5_000, halfOpenProbes: 1 },
      }),
    )
    expect((await fetch(`${front.url}/a`)).status).toBe(502)
    await clock.advance(5_000)
    up.fallback = { kind: 'hold' }
    const probe = fetch(`${front.url}/probe`)
    await up.waitForRequests(2)
    expect(service.state().breaker).toBe('half-open')
    const refused = await fetch(`${front.url}/a`)
    expect(refused.status).toBe(503)
    expect(refused.headers.get('retry-after')).toBe('1')
    up.release()
    expect((await probe).status).toBe(200)
  })

  it('exchange() rejects with UpstreamError whose retryable flag follows the policies: an open circuit is not retryable', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 502 } })
    const { service } = await setup(
      serviceConfig([up.url], {
        retry: undefined,
        breaker: { failureThreshold: 1, cooldownMs: 5_000, halfOpenProbes: 1 },
      }),
    )
    // A 502 answer is the upstream's own: exchange() resolves with it.
    expect((await service.exchange(forwardRequest(), 100)).status).toBe(502)
    const error = await service.exchange(forwardRequest(), 100).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(UpstreamError)
    expect(error).toMatchObject({ code: 'BROKEN_CIRCUIT', status: 503, retryable: false })
    expect(classifyFailure(error)).not.toBe('transient')
  })

  it('exchange() errors the policies would not retry are not retryable: a full bulkhead, a caller that left', async () => {
    const up = await upstream({ fallback: { kind: 'hold' } })
    const { service } = await setup(
      serviceConfig([up.url], {
        bulkhead: { maxConcurrent: 1, maxQueue: 0, connectionsPerEndpoint: 1 },
      }),
    )
    const held = service.exchange(forwardRequest(), 100)
    await up.waitForRequests(1)
    const full = await service.exchange(forwardRequest(), 100).catch((e: unknown) => e)
    expect(full).toMatchObject({ code: 'BULKHEAD_FULL', status: 503, retryable: false })
    up.release()
    expect((await held).status).toBe(200)
    const gone = await service
      .exchange(forwardRequest({ signal: AbortSignal.abort() }), 100)
      .catch((e: unknown) => e)
    expect(gone).toMatchObject({ code: 'ABORTED', status: 499, retryable: false })
    expect((gone as Error).message).toBe('The caller went away before service orders answered.')
    expect(classifyFailure(gone)).toBe('permanent')
    // What a later attempt may well get through stays retryable.
    await service.close()
    const closed = await service.exchange(forwardRequest(), 100).catch((e: unknown) => e)
    expect(closed).toMatchObject({ code: 'UPSTREAM_NO_ENDPOINTS', retryable: true })
  })

  it('isolate() fails every call with ISOLATED_CIRCUIT until reset()', async () => {
    const up = await upstream()
    const { front, service } = await setup(serviceConfig([up.url], { breaker: undefined }))
    expect(service.state().breaker).toBe('disabled')
    service.isolate()
    const refused = await fetch(`${front.url}/a`)
    expect(refused.status).toBe(503)
    expect(((await refused.json()) as { code: string }).code).toBe('ISOLATED_CIRCUIT')
    expect(service.state().breaker).toBe('isolated')
    service.reset()
    expect((await fetch(`${front.url}/a`)).status).toBe(200)
  })

  it('queues beyond maxConcurrent, refuses beyond maxQueue, and hands slots on in order', async () => {
    const up = await upstream({ fallback: { kind: 'hold' } })
    const { front, service } = await setup(
      serviceConfig([up.url], {
        bulkhead: { maxConcurrent: 1, maxQueue: 1, connectionsPerEndpoint: 4 },
      }),
    )
    const first = fetch(`${front.url}/1`)
    await up.waitForRequests(1)
    const second = fetch(`${front.url}/2`)
    await eventually(() => service.state().bulkhead.queued === 1)
    const third = await fetch(`${front.url}/3`)
    expect(third.status).toBe(503)
    expect(((await third.json()) as { code: string }).code).toBe('BULKHEAD_FULL')
    expect(service.state().bulkhead).toEqual({ running: 1, queued: 1, max: 1 })
    up.release()
    expect((await first).status).toBe(200)
    await up.waitForRequests(2)
    up.release()
    expect(await (await second).text()).toBe('ok /2')
    await eventually(() => service.state().bulkhead.running === 0)
  })
})

describe('observability', () => {
  it('registers request, latency, retry, breaker, bulkhead and ejection metrics', async () => {
    const up = await upstream()
    up.script.push({ kind: 'respond', status: 503 })
    const { front, clock, deps } = await setup(
      serviceConfig([up.url], {
        breaker: { failureThreshold: 5, cooldownMs: 1_000, halfOpenProbes: 1 },
      }),
    )
    const pending = fetch(`${front.url}/a`)
    await timerWithin(clock, 50)
    await clock.advance(50)
    expect((await pending).status).toBe(200)
    await eventually(() => front.outcomes.length === 1)
    const text = await deps.metrics.render()
    expect(text).toContain(
      'breakwater_proxy_upstream_requests_total{service="orders",status="200"} 1',
    )
    expect(text).toContain('breakwater_proxy_upstream_retries_total{service="orders"} 1')
    expect(text).toContain(
      'breakwater_proxy_upstream_request_duration_seconds_count{service="orders"} 1',
    )
    expect(text).toContain(
      'breakwater_proxy_upstream_breaker_state{service="orders",state="closed"} 1',
    )
    expect(text).toContain('breakwater_proxy_upstream_bulkhead_running{service="orders"} 0')
    expect(text).toContain('breakwater_proxy_upstream_endpoints_ejected{service="orders"} 0')
  })
})

describe('websocket refusals', () => {
  it('counts a handshake the open breaker refuses (503, Retry-After) in the upstream request metric, as an HTTP request', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 502 } })
    const { service, deps } = await setup(
      serviceConfig([up.url], {
        retry: undefined,
        breaker: { failureThreshold: 1, cooldownMs: 2_500, halfOpenProbes: 1 },
      }),
    )
    expect((await service.exchange(forwardRequest(), 10)).status).toBe(502)
    const { client, written } = recordingClient(cleanups)
    const outcome = await service.tunnel(
      { target: '/chat', headers: {}, host: 'front', requestId: 'ws-1', idleTimeoutMs: 1_000 },
      client,
      Buffer.alloc(0),
    )
    expect(outcome).toMatchObject({ status: 503, error: 'BROKEN_CIRCUIT' })
    const answer = Buffer.concat(written).toString('latin1')
    expect(answer).toMatch(/^HTTP\/1\.1 503 /)
    expect(answer).toContain('retry-after: 3\r\n')
    client.destroy()
    const text = await deps.metrics.render()
    expect(text).toContain(
      'breakwater_proxy_upstream_requests_total{service="orders",status="502"} 1',
    )
    expect(text).toContain(
      'breakwater_proxy_upstream_requests_total{service="orders",status="503"} 1',
    )
  })
})

describe('deadlines and clients that leave', () => {
  it('ends retries at the overall deadline: 504 DEADLINE_EXCEEDED', async () => {
    const up = await upstream({ fallback: { kind: 'hang' } })
    const { front, clock } = await setup(serviceConfig([up.url]))
    const pending = fetch(`${front.url}/a`, { headers: { [DEADLINE_HEADER]: '3000' } })
    await up.waitForRequests(1)
    // Attempt 1 times out at readMs (2 s); the retry starts 50 ms later with 950 ms left.
    await clock.advance(2_000)
    await timerWithin(clock, 50)
    await clock.advance(50)
    await up.waitForRequests(2)
    expect(up.requests[1]!.headers[DEADLINE_HEADER]).toBe('950')
    await clock.advance(949)
    expect(front.outcomes).toHaveLength(0)
    await clock.advance(1)
    const response = await pending
    expect(response.status).toBe(504)
    expect(((await response.json()) as { code: string }).code).toBe('DEADLINE_EXCEEDED')
  })

  it('a queued call that reaches its deadline is answered 504 and leaves the queue', async () => {
    const up = await upstream({ fallback: { kind: 'hold' } })
    const { front, clock, service } = await setup(
      serviceConfig([up.url], {
        bulkhead: { maxConcurrent: 1, maxQueue: 4, connectionsPerEndpoint: 2 },
      }),
    )
    const first = fetch(`${front.url}/1`)
    await up.waitForRequests(1)
    const queued = fetch(`${front.url}/2`, { headers: { [DEADLINE_HEADER]: '500' } })
    await eventually(() => service.state().bulkhead.queued === 1)
    await clock.advance(500)
    expect((await queued).status).toBe(504)
    expect(service.state().bulkhead.queued).toBe(0)
    up.release()
    expect((await first).status).toBe(200)
    expect(up.requests).toHaveLength(1)
  })

  it('aborts the upstream request when the client goes away, without counting it against the breaker', async () => {
    const up = await upstream({ fallback: { kind: 'hang' } })
    const { front, service } = await setup(
      serviceConfig([up.url], {
        breaker: { failureThreshold: 1, cooldownMs: 1_000, halfOpenProbes: 1 },
        bulkhead: { maxConcurrent: 1, maxQueue: 1, connectionsPerEndpoint: 2 },
      }),
    )
    const closed = new Promise<void>((resolve) =>
      up.server.once('connection', (socket) => socket.once('close', () => resolve())),
    )
    const controller = new AbortController()
    const pending = fetch(`${front.url}/a`, { signal: controller.signal }).catch(() => 'aborted')
    await up.waitForRequests(1)
    // A second client waits in the queue and leaves too: its place is freed at once.
    const second = new AbortController()
    const queued = fetch(`${front.url}/b`, { signal: second.signal }).catch(() => 'aborted')
    await eventually(() => service.state().bulkhead.queued === 1)
    second.abort()
    await eventually(() => service.state().bulkhead.queued === 0)
    controller.abort()
    expect(await pending).toBe('aborted')
    expect(await queued).toBe('aborted')
    await closed
    await eventually(() => front.outcomes.length === 2)
    expect(front.outcomes.map((o) => o.error)).toEqual(['ABORTED', 'ABORTED'])
    expect(service.state()).toMatchObject({
      breaker: 'closed',
      bulkhead: { running: 0, queued: 0 },
    })
  })
})

describe('connect timeout', () => {
  it('times out a TLS handshake that never completes after connectMs on the clock: 504', async () => {
    // A TCP server that accepts and never speaks: an https endpoint there never finishes
    // connecting.
    const { createServer } = await import('node:net')
    const sockets: import('node:net').Socket[] = []
    const silent = createServer((socket) => sockets.push(socket))
    const port = await listenOnLoopback(silent)
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          for (const socket of sockets) socket.destroy()
          silent.close(() => resolve())
        }),
    )
    const { service, clock } = await setup(
      serviceConfig([`https://127.0.0.1:${port}`], {
        retry: undefined,
        timeouts: { connectMs: 5_000, readMs: 1_000, overallMs: 10_000 },
      }),
    )
    const pending = service.exchange(forwardRequest(), 10)
    await eventually(() => sockets.length === 1)
    await clock.advance(4_999)
    let settled = false
    void pending.catch(() => {
      settled = true
    })
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(settled).toBe(false)
    await clock.advance(1)
    await expect(pending).rejects.toMatchObject({ code: 'UPSTREAM_TIMEOUT', status: 504 })
  })

  it('close() stops discovery timers and closes the pools', async () => {
    const up = await upstream()
    const { service, clock } = await setup(serviceConfig([up.url]))
    expect((await service.exchange(forwardRequest(), 10)).status).toBe(200)
    await service.close()
    expect(clock.pendingTimers).toBe(0)
    await expect(service.exchange(forwardRequest(), 10)).rejects.toMatchObject({ status: 503 })
  })
})
