import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createWebhookPublisher,
  type OutgoingMessage,
  type Publisher,
  signWebhookPayload,
  verifyWebhookSignature,
  WEBHOOK_SIGNATURE_HEADER,
  WebhookError,
} from '../../src/brokers/index.js'
import { InvalidOptionError } from '../../src/core/errors.js'
import { classifyFailure } from '../../src/policies/classify.js'
import { withDeadline } from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/manual-clock.js'
import { listenOnLoopback } from '../support/loopback.js'

const secret = 'whsec_test_0123456789abcdef'
const start = Date.UTC(2024, 4, 1, 12, 0, 0)

/** What the receiver saw of one request. */
interface Seen {
  readonly n: number
  readonly headers: IncomingHttpHeaders
  readonly body: string
  readonly verified: ReturnType<typeof verifyWebhookSignature>
}

/** How the receiver answers a request; `hang` never answers. */
type Answer = { status: number; headers?: Record<string, string> } | 'hang'

/**
 * A real HTTP receiver that verifies every request's signature with verifyWebhookSignature
 * (answering 401 to a bad one before consulting `answer`).
 */
async function receiver(clock: ManualClock, answer: (seen: Seen) => Answer | Promise<Answer>) {
  const seen: Seen[] = []
  const waiters: Array<() => void> = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      const verified = verifyWebhookSignature(secret, req.headers[WEBHOOK_SIGNATURE_HEADER], body, {
        clock,
      })
      const entry = { n: seen.length + 1, headers: req.headers, body, verified }
      seen.push(entry)
      for (const wake of waiters.splice(0)) wake()
      if (!verified.ok) {
        res.writeHead(401).end(`bad signature: ${verified.reason}`)
        return
      }
      void Promise.resolve(answer(entry)).then((a) => {
        if (a === 'hang') return
        res.writeHead(a.status, a.headers).end(a.status < 300 ? 'ok' : `status ${a.status}`)
      })
    })
  })
  const port = await listenOnLoopback(server)
  const handle = {
    url: `http://127.0.0.1:${port}/hooks/orders`,
    seen,
    async waitFor(count: number): Promise<void> {
      while (seen.length < count) await new Promise<void>((resolve) => waiters.push(resolve))
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
  cleanup.push(handle.close)
  return handle
}

const cleanup: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn()
})

function publisherFor(options: Parameters<typeof createWebhookPublisher>[0]): Publisher {
  const publisher = createWebhookPublisher(options)
  cleanup.push(() => publisher.close())
  return publisher
}

/**
 * Settles `work`, moving the manual clock only through short timers (retry backoff); the
 * attempt timeout (far away) fires only when a test advances to it. Real time passes only
 * while real I/O is in flight.
 */
async function drive<T>(clock: ManualClock, work: Promise<T>, maxStepMs = 1_000): Promise<T> {
  let settled = false
  const result = work.finally(() => {
    settled = true
  })
  result.catch(() => {})
  while (!settled) {
    const next = clock.nextTimerAt()
    if (next !== undefined && next - clock.now() <= maxStepMs)
      await clock.advance(next - clock.now())
    else await new Promise((resolve) => setTimeout(resolve, 1))
  }
  return result
}

function message(
  id: string,
  key: string,
  payload: string | Uint8Array = `{"n":"${id}"}`,
): OutgoingMessage {
  return { id, topic: 'orders', key, payload, headers: { 'event-type': 'order-placed' } }
}

describe('webhook publisher', () => {
  it('POSTs each message as signed JSON that the receiver verifies', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 204 }))
    const publisher = publisherFor({ url: hook.url, secret, clock })
    await drive(
      clock,
      publisher.publish([
        message('e1', 'order-1'),
        message('e2', 'order-2', 'plain text, not JSON'),
        message('e3', 'order-3', new Uint8Array([0xff, 0x00, 0x01])),
      ]),
    )
    expect(hook.seen).toHaveLength(3)
    const byId = new Map(hook.seen.map((s) => [JSON.parse(s.body).id as string, s]))
    for (const s of hook.seen) {
      expect(s.verified).toEqual({ ok: true, timestampMs: Math.floor(start / 1000) * 1000 })
      expect(s.headers['content-type']).toBe('application/json')
      expect(s.headers[WEBHOOK_SIGNATURE_HEADER]).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/)
    }
    const e1 = byId.get('e1')!
    expect(JSON.parse(e1.body)).toEqual({
      id: 'e1',
      topic: 'orders',
      key: 'order-1',
      headers: { 'event-type': 'order-placed' },
      payload: { n: 'e1' },
    })
    expect(e1.headers['breakwater-message-id']).toBe('e1')
    expect(e1.headers['idempotency-key']).toBe('e1')
    expect(Buffer.from(JSON.parse(byId.get('e2')!.body).payloadBase64, 'base64').toString()).toBe(
      'plain text, not JSON',
    )
    expect([...Buffer.from(JSON.parse(byId.get('e3')!.body).payloadBase64, 'base64')]).toEqual([
      0xff, 0x00, 0x01,
    ])
  })

  it('sends a whole batch in one request, in order, when batch is on', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 200 }))
    const publisher = publisherFor({ url: hook.url, secret, clock, batch: true })
    const batch = [message('b1', 'k'), message('b2', 'k'), message('b3', 'other')]
    await drive(clock, publisher.publish(batch))
    expect(hook.seen).toHaveLength(1)
    expect(hook.seen[0]!.verified.ok).toBe(true)
    expect(hook.seen[0]!.headers['idempotency-key']).toBeUndefined()
    const body = JSON.parse(hook.seen[0]!.body) as { messages: Array<{ id: string }> }
    expect(body.messages.map((m) => m.id)).toEqual(['b1', 'b2', 'b3'])
  })

  it('a publisher with the wrong secret is refused by the receiver, and not retried', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 200 }))
    const publisher = publisherFor({ url: hook.url, secret: 'not-the-shared-secret-at-all', clock })
    const error = await drive(clock, publisher.publish([message('e1', 'k')])).catch((e) => e)
    expect(hook.seen).toHaveLength(1)
    expect(hook.seen[0]!.verified).toEqual({ ok: false, reason: 'mismatch' })
    expect(error).toBeInstanceOf(WebhookError)
    // The endpoint refuses the publisher's setup, not the event: a relay backs off with its
    // breaker open instead of dead-lettering every event.
    expect(error).toMatchObject({ code: 'BROKER_MISCONFIGURED', status: 401, retryable: false })
    expect(String(error.message)).not.toContain('not-the-shared-secret')
  })

  it('answers a status that says the endpoint is wrong (3xx, 401, 403, 404, 405, 407) with a non-retryable BROKER_MISCONFIGURED after one attempt', async () => {
    for (const status of [301, 302, 307, 308, 401, 403, 404, 405, 407]) {
      const clock = new ManualClock(start)
      const hook = await receiver(clock, () => ({
        status,
        headers: status < 400 ? { location: 'http://127.0.0.1:1/elsewhere' } : {},
      }))
      const publisher = publisherFor({
        url: hook.url,
        secret,
        clock,
        retry: { maxAttempts: 5, baseDelayMs: 10 },
      })
      const error = await drive(clock, publisher.publish([message('e1', 'k')])).catch((e) => e)
      const label = `status ${status}: ${String(error)}`
      // Within the call too: every attempt would meet the same answer.
      expect(hook.seen, label).toHaveLength(1)
      expect(error, label).toBeInstanceOf(WebhookError)
      expect(error, label).toMatchObject({
        code: 'BROKER_MISCONFIGURED',
        status,
        retryable: false,
      })
      expect(error.message, label).toContain(`answered ${status}`)
      expect(error.message, label).toContain('check the webhook URL and its access')
      expect(error.message, label).not.toContain('/hooks/orders')
    }
  })

  it('retries a 503 (each attempt signed afresh) until the receiver accepts', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, (s) => (s.n <= 2 ? { status: 503 } : { status: 200 }))
    const publisher = publisherFor({
      url: hook.url,
      secret,
      clock,
      retry: { maxAttempts: 3, baseDelayMs: 1_000, maxDelayMs: 1_000, jitter: 'none' },
    })
    await drive(clock, publisher.publish([message('e1', 'k')]), 2_000)
    expect(hook.seen.map((s) => s.verified.ok)).toEqual([true, true, true])
    // The backoff moved the clock, and every attempt carries its own timestamp.
    const stamps = hook.seen.map((s) => (s.verified.ok ? s.verified.timestampMs : 0))
    expect(stamps[2]! - stamps[0]!).toBeGreaterThanOrEqual(2_000)
    expect(new Set(hook.seen.map((s) => s.headers['idempotency-key']))).toEqual(new Set(['e1']))
  })

  it('gives up after maxAttempts 5xx answers with a retryable BROKER_UNAVAILABLE', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 500 }))
    const publisher = publisherFor({
      url: hook.url,
      secret,
      clock,
      retry: { maxAttempts: 2, baseDelayMs: 10 },
    })
    const error = await drive(clock, publisher.publish([message('e1', 'k')])).catch((e) => e)
    expect(hook.seen).toHaveLength(2)
    expect(error).toMatchObject({ code: 'BROKER_UNAVAILABLE', status: 500, retryable: true })
    expect(classifyFailure(error)).toBe('transient')
  })

  it('does not retry a 400: the message is rejected (BROKER_REJECTED, not retryable)', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 400 }))
    const publisher = publisherFor({ url: hook.url, secret, clock })
    const error = await drive(clock, publisher.publish([message('poison', 'k')])).catch((e) => e)
    expect(hook.seen).toHaveLength(1)
    expect(error).toBeInstanceOf(WebhookError)
    expect(error).toMatchObject({ code: 'BROKER_REJECTED', status: 400, retryable: false })
    expect(error.message).toContain('answered 400')
    // The receiver's path could hold a secret (Slack-style URLs): messages name only the origin.
    expect(error.message).not.toContain('/hooks/orders')
  })

  it('retries an attempt that timed out', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, (s) => (s.n === 1 ? 'hang' : { status: 200 }))
    const publisher = publisherFor({
      url: hook.url,
      secret,
      clock,
      attemptTimeoutMs: 5_000,
      retry: { maxAttempts: 2, baseDelayMs: 10 },
    })
    const publishing = publisher.publish([message('e1', 'k')])
    await hook.waitFor(1)
    await clock.advance(5_000)
    await drive(clock, publishing)
    expect(hook.seen).toHaveLength(2)
    expect(hook.seen.every((s) => s.verified.ok)).toBe(true)
  })

  it('keeps order per key and stops a key at its first failure, other keys going on', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, async (s) => {
      const body = JSON.parse(s.body) as { id: string }
      // Some processing time on the receiver, so keys really interleave.
      await new Promise((resolve) => setTimeout(resolve, Number(body.id.slice(-1)) % 3))
      return body.id === 'a2' ? { status: 422 } : { status: 200 }
    })
    const publisher = publisherFor({ url: hook.url, secret, clock, concurrency: 3 })
    const batch: OutgoingMessage[] = []
    for (let i = 0; i < 5; i++)
      for (const key of ['a', 'b', 'c']) batch.push(message(`${key}${i}`, key))
    const error = await drive(clock, publisher.publish(batch)).catch((e) => e)
    expect(error).toMatchObject({ code: 'BROKER_REJECTED', status: 422 })
    const ids = hook.seen.map((s) => (JSON.parse(s.body) as { id: string }).id)
    expect(ids.filter((id) => id.startsWith('a'))).toEqual(['a0', 'a1', 'a2'])
    expect(ids.filter((id) => id.startsWith('b'))).toEqual(['b0', 'b1', 'b2', 'b3', 'b4'])
    expect(ids.filter((id) => id.startsWith('c'))).toEqual(['c0', 'c1', 'c2', 'c3', 'c4'])
  })

  it('refuses a message id that cannot be an HTTP header value (BROKER_REJECTED, not retried)', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 200 }))
    const publisher = publisherFor({ url: hook.url, secret, clock })
    for (const id of ['заказ-7', 'line\nbreak', 'nul\0']) {
      const error = await drive(clock, publisher.publish([message(id, 'k')])).catch((e) => e)
      expect(error).toBeInstanceOf(WebhookError)
      expect(error).toMatchObject({ code: 'BROKER_REJECTED', retryable: false })
    }
    expect(hook.seen).toHaveLength(0)
    // A Latin-1 id is a valid header value and goes out.
    await drive(clock, publisher.publish([message('café-7', 'k')]))
    expect(hook.seen).toHaveLength(1)
  })

  it('refuses a batch holding a message it cannot send before sending any of it', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 200 }))
    const publisher = publisherFor({ url: hook.url, secret, clock })
    // The id cannot be a header; a lone surrogate in a payload string has no UTF-8 form (it
    // would arrive as U+FFFD).
    for (const bad of [message('заказ-7', 'b'), message('s', 'b', '{"a":"\ud800"}')]) {
      const error = await drive(clock, publisher.publish([message('ok-1', 'a'), bad])).catch(
        (e) => e,
      )
      expect(error).toBeInstanceOf(WebhookError)
      expect(error).toMatchObject({ code: 'BROKER_REJECTED', retryable: false })
      expect(error.message).toMatch(/messages\[1\]/)
    }
    expect(hook.seen).toHaveLength(0)
  })

  it('refuses a message with a field of the wrong type (BROKER_REJECTED naming it) instead of sending JSON the receiver reads differently, or invalid JSON', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 200 }))
    for (const batch of [false, true]) {
      const publisher = publisherFor({ url: hook.url, secret, clock, batch })
      const good = message('ok-1', 'a')
      const bad: Array<[string, unknown]> = [
        ['id', { ...good, id: 7 }],
        ['key', { ...good, key: undefined }],
        ['topic', { ...good, topic: null }],
        ['headers', { ...good, headers: { h: 1 } }],
        ['headers', { ...good, headers: 'h' }],
        ['payload', { ...good, payload: { a: 1 } }],
        ['message', null],
      ]
      for (const [field, message] of bad) {
        const error = await drive(
          clock,
          publisher.publish([good, message as OutgoingMessage]),
        ).catch((e) => e)
        expect(error, `${field}: ${String(error)}`).toBeInstanceOf(WebhookError)
        expect(error).toMatchObject({ code: 'BROKER_REJECTED', retryable: false })
        expect(error.message).toMatch(/messages\[1\]/)
      }
    }
    expect(hook.seen).toHaveLength(0)
  })

  it('refuses bad options without echoing secrets', () => {
    expect(() => createWebhookPublisher({ url: 'http://127.0.0.1:1/x', secret: 'short' })).toThrow(
      InvalidOptionError,
    )
    try {
      createWebhookPublisher({ url: 'http://127.0.0.1:1/x', secret: 'short' })
    } catch (error) {
      expect(String(error)).not.toContain('short')
    }
    expect(() =>
      createWebhookPublisher({ url: 'https://user:hunter2-pw@example.com/x', secret }),
    ).toThrow(/without credentials/)
    try {
      createWebhookPublisher({ url: 'https://user:hunter2-pw@example.com/x', secret })
    } catch (error) {
      expect(String(error)).not.toContain('hunter2')
    }
    expect(() => createWebhookPublisher({ url: 'ftp://example.com/x', secret })).toThrow(/http/)
    // Port 0 parses, but nothing listens there: every delivery would fail to connect.
    expect(() => createWebhookPublisher({ url: 'http://127.0.0.1:0/x', secret })).toThrow(
      /webhook\.url.*port is from 1 to 65535/,
    )
    expect(() =>
      createWebhookPublisher({
        url: 'http://example.com/x',
        secret,
        headers: { 'Content-Type': 'x' },
      }),
    ).toThrow(/headers.Content-Type/)
    // A value undici would refuse at every request is refused here, at construction.
    for (const value of ['ключ', 'tab\tand\x01control', 'line\nbreak']) {
      expect(() =>
        createWebhookPublisher({
          url: 'http://example.com/x',
          secret,
          headers: { 'x-api-key': value },
        }),
      ).toThrow(/headers.x-api-key/)
    }
  })

  it('names a bad retry setting by its path, webhook.retry.<name>, as its other options', () => {
    // They were refused by the retry policy inside, as retry.maxAttempts: not the path the
    // caller wrote (webhook.retry.maxAttempts), which a null or misspelt one already gave.
    const cases: Array<[string, unknown]> = [
      ['maxAttempts', 0],
      ['maxAttempts', Number.NaN],
      ['baseDelayMs', -1],
      ['maxDelayMs', Number.POSITIVE_INFINITY],
      ['factor', '2'],
      ['jitter', 'full-ish'],
      ['random', 5],
      ['maxRetryAfterMs', -5],
    ]
    for (const [name, value] of cases) {
      let error: unknown
      try {
        createWebhookPublisher({
          url: 'http://127.0.0.1:1/x',
          secret,
          retry: { [name]: value } as never,
        })
      } catch (caught) {
        error = caught
      }
      expect(error, name).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option, name).toBe(`webhook.retry.${name}`)
      expect((error as Error).message, name).toMatch(new RegExp(`^webhook\\.retry\\.${name}: `))
    }
  })
})

describe('webhook publisher error answers', () => {
  it('reports a 5xx whose error body drips in as the 5xx, promptly, not as an attempt timeout', async () => {
    const clock = new ManualClock(start)
    // The head at once, then one byte of the body every 200 ms (real time), never ending:
    // the 300-byte snippet would take a minute.
    const drips = new Set<NodeJS.Timeout>()
    const server = createServer((req, res) => {
      req.resume()
      req.on('end', () => {
        res.writeHead(500, { 'content-type': 'text/plain' })
        const drip = setInterval(() => res.write('x'), 200)
        drips.add(drip)
        res.on('close', () => clearInterval(drip))
      })
    })
    const port = await listenOnLoopback(server)
    cleanup.push(
      () =>
        new Promise<void>((resolve) => {
          for (const drip of drips) clearInterval(drip)
          server.closeAllConnections()
          server.close(() => resolve())
        }),
    )
    const publisher = publisherFor({
      url: `http://127.0.0.1:${port}/hooks/orders`,
      secret,
      clock,
      attemptTimeoutMs: 3_000,
      retry: false,
    })
    const began = Date.now()
    // The clock moves only through timers due within 500 ms: the attempt timeout (3 s) never
    // fires, so only the body's own bound can end the read.
    const error = await drive(clock, publisher.publish([message('e1', 'k')]), 500).catch((e) => e)
    expect(error).toBeInstanceOf(WebhookError)
    expect(error).toMatchObject({ code: 'BROKER_UNAVAILABLE', status: 500, retryable: true })
    expect(error.message).toContain('answered 500')
    expect(Date.now() - began).toBeLessThan(3_000)
  }, 10_000)

  it("says a Retry-After beyond the caller's deadline is why it stopped, and carries it", async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 429, headers: { 'retry-after': '30' } }))
    const publisher = publisherFor({ url: hook.url, secret, clock })
    const error = await drive(
      clock,
      withDeadline(5_000, () => publisher.publish([message('e1', 'k')]), { clock }),
    ).catch((e) => e)
    // No wait: the 30 s asked for could never fit in the 5 s left.
    expect(hook.seen).toHaveLength(1)
    expect(clock.now() - start).toBeLessThan(5_000)
    expect(error).toBeInstanceOf(WebhookError)
    expect(error).toMatchObject({ code: 'BROKER_UNAVAILABLE', status: 429, retryAfterMs: 30_000 })
    expect(error.message).toMatch(/answered 429/)
    expect(error.message).toMatch(/Retry-After of 30000 ms is beyond the deadline \(5000 ms left\)/)
  })

  it('does not mention the deadline when the Retry-After fits in it', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 503, headers: { 'retry-after': '1' } }))
    const publisher = publisherFor({ url: hook.url, secret, clock, retry: { maxAttempts: 2 } })
    const error = await drive(
      clock,
      withDeadline(5_000, () => publisher.publish([message('e1', 'k')]), { clock }),
      2_000,
    ).catch((e) => e)
    expect(hook.seen).toHaveLength(2)
    expect(error).toMatchObject({ status: 503, retryAfterMs: 1_000 })
    expect(error.message).not.toMatch(/deadline/)
  })
})

describe('webhook publisher headers option', () => {
  it('sends a User-Agent given in headers instead of replacing it with its own', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 204 }))
    const publisher = publisherFor({
      url: hook.url,
      secret,
      clock,
      headers: { 'User-Agent': 'billing-relay/2.1', 'x-api-key': 'k' },
    })
    await drive(clock, publisher.publish([message('e1', 'order-1')]))
    expect(hook.seen[0]!.headers['user-agent']).toBe('billing-relay/2.1')
    expect(hook.seen[0]!.headers['x-api-key']).toBe('k')
  })

  it('refuses two headers whose names differ only in case, instead of sending one of them', () => {
    expect(() =>
      createWebhookPublisher({
        url: 'http://example.com/x',
        secret,
        headers: { 'X-Api-Key': 'a', 'x-api-key': 'b' },
      }),
    ).toThrow(InvalidOptionError)
  })
})

// The W3C trace context went only inside the JSON body: an HTTP receiver with standard
// OpenTelemetry instrumentation, which reads the request headers, started a new trace.
describe('webhook publisher trace context', () => {
  const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
  const trace = { traceparent, tracestate: 'congo=t61rcWkgMzE', baggage: 'tenant=acme' }
  const traced = (id: string, headers: Record<string, string>): OutgoingMessage => ({
    ...message(id, id),
    headers: { 'event-type': 'order-placed', ...headers },
  })

  it('sends a message’s traceparent, tracestate and baggage as request headers too', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 204 }))
    const publisher = publisherFor({ url: hook.url, secret, clock, concurrency: 1 })
    await drive(
      clock,
      publisher.publish([
        traced('t1', trace),
        traced('t2', {}),
        // Not a W3C traceparent: not sent as a header (nor its tracestate), kept in the body.
        traced('t3', { traceparent: 'not-a-trace', tracestate: 'congo=x' }),
      ]),
    )
    const byId = new Map(hook.seen.map((s) => [JSON.parse(s.body).id as string, s]))
    expect(byId.get('t1')!.headers).toMatchObject(trace)
    expect(JSON.parse(byId.get('t1')!.body).headers).toMatchObject(trace)
    for (const id of ['t2', 't3']) {
      expect(byId.get(id)!.headers.traceparent).toBeUndefined()
      expect(byId.get(id)!.headers.tracestate).toBeUndefined()
    }
    expect(JSON.parse(byId.get('t3')!.body).headers.traceparent).toBe('not-a-trace')
  })

  it('in batch mode, sends the trace headers only when every message of the batch carries the same', async () => {
    const clock = new ManualClock(start)
    const hook = await receiver(clock, () => ({ status: 204 }))
    const publisher = publisherFor({ url: hook.url, secret, clock, batch: true })
    await drive(clock, publisher.publish([traced('b1', trace), traced('b2', trace)]))
    const other = '00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01'
    await drive(
      clock,
      publisher.publish([traced('b3', trace), traced('b4', { ...trace, traceparent: other })]),
    )
    expect(hook.seen[0]!.headers).toMatchObject(trace)
    // Two traces in one request: neither is the request's.
    expect(hook.seen[1]!.headers.traceparent).toBeUndefined()
    expect(hook.seen[1]!.headers.tracestate).toBeUndefined()
    expect(hook.seen[1]!.headers.baggage).toBe(trace.baggage)
  })
})

describe('verifyWebhookSignature', () => {
  const body = '{"id":"e1","payload":{"total":12}}'

  it('accepts a good signature within the tolerance and refuses tampering, other secrets, replays', () => {
    const clock = new ManualClock(start)
    const header = signWebhookPayload(secret, body, clock.now())
    expect(verifyWebhookSignature(secret, header, body, { clock })).toEqual({
      ok: true,
      timestampMs: start,
    })
    expect(verifyWebhookSignature(secret, header, Buffer.from(body), { clock }).ok).toBe(true)
    expect(verifyWebhookSignature(secret, header, body.replace('12', '13'), { clock })).toEqual({
      ok: false,
      reason: 'mismatch',
    })
    expect(verifyWebhookSignature('another-secret-of-16+', header, body, { clock })).toEqual({
      ok: false,
      reason: 'mismatch',
    })
    // A different timestamp with the same v1 does not verify (t is signed).
    const shifted = header.replace(/t=(\d+)/, (_m, t: string) => `t=${Number(t) + 1}`)
    expect(verifyWebhookSignature(secret, shifted, body, { clock }).ok).toBe(false)
  })

  it('refuses timestamps outside the tolerance, either way', async () => {
    const clock = new ManualClock(start)
    const header = signWebhookPayload(secret, body, start)
    await clock.advance(300_000)
    expect(verifyWebhookSignature(secret, header, body, { clock }).ok).toBe(true)
    await clock.advance(1_000)
    expect(verifyWebhookSignature(secret, header, body, { clock })).toEqual({
      ok: false,
      reason: 'stale',
    })
    const future = signWebhookPayload(secret, body, clock.now() + 61_000)
    expect(verifyWebhookSignature(secret, future, body, { clock, toleranceMs: 60_000 })).toEqual({
      ok: false,
      reason: 'stale',
    })
  })

  it('accepts any matching v1 and any of several secrets (rotation); refuses malformed headers', () => {
    const clock = new ManualClock(start)
    const oldSecret = 'old-secret-0123456789'
    const header = signWebhookPayload(oldSecret, body, start)
    expect(verifyWebhookSignature([secret, oldSecret], header, body, { clock }).ok).toBe(true)
    const v1 = signWebhookPayload(secret, body, start).split(',')[1]
    const two = `${header},${v1}`
    expect(verifyWebhookSignature(secret, two, body, { clock }).ok).toBe(true)
    // Unknown schemes are ignored, so senders can add a v2 before receivers know it.
    expect(verifyWebhookSignature(oldSecret, `${header},v2=whatever`, body, { clock }).ok).toBe(
      true,
    )
    for (const bad of [
      't=abc,v1=00',
      `v1=${'0'.repeat(64)}`,
      `t=1,t=2,${v1}`,
      'garbage',
      `t=${start / 1000}`,
    ])
      expect(verifyWebhookSignature(secret, bad, body, { clock })).toEqual({
        ok: false,
        reason: 'malformed',
      })
    expect(verifyWebhookSignature(secret, undefined, body, { clock })).toEqual({
      ok: false,
      reason: 'missing',
    })
  })
})
