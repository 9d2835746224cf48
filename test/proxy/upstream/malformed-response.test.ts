// An upstream response the proxy's parser refuses (obs-fold, a head past the size limit,
// conflicting framing, a transfer coding it cannot pass on) is answered 502
// UPSTREAM_RESPONSE_INVALID, whose detail says the response was malformed and why (the
// parser's code), and the reason is logged; it was answered UPSTREAM_RESET ("closed before its
// response was complete"), which sent whoever read it looking for a network fault, and the
// parser's code was logged nowhere. It counts as a failure for the circuit breaker, and it is
// retried only as a 502 answer would be: never for a POST without an Idempotency-Key.

import { describe, expect, it } from 'vitest'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { startScriptedUpstream } from '../support/raw-upstream.js'
import { type Front, serviceConfig, startFront, testDeps, useUpstreamTest } from './helpers.js'

const { cleanups } = useUpstreamTest()

async function rawUpstream(answer: string): Promise<{ url: string; requests: () => number }> {
  const up = await startScriptedUpstream(answer)
  cleanups.push(() => up.close())
  return up
}

async function front(
  url: string,
  overrides: Parameters<typeof serviceConfig>[1] = { retry: undefined },
): Promise<{ front: Front; logs: string[]; state: () => string }> {
  const clock = new ManualClock(1_000_000)
  const deps = testDeps(clock)
  const service = createServiceRuntime(serviceConfig([url], overrides), deps, {
    random: () => 0.5,
  })
  cleanups.push(() => service.close())
  const started = await startFront(service, clock)
  cleanups.push(() => started.close())
  return { front: started, logs: deps.logs, state: () => service.state().breaker }
}

const ok = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n'

describe('a malformed upstream response', () => {
  it.each([
    ['obs-fold', `${ok}X-A: 1\r\n  folded\r\n\r\nok`, 'HPE_INVALID_HEADER_TOKEN'],
    ['a 200 KB header', `${ok}X-Big: ${'a'.repeat(200_000)}\r\n\r\nok`, 'UND_ERR_HEADERS_OVERFLOW'],
    [
      'Content-Length: 3, 3',
      'HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc',
      'HPE_INVALID_CONTENT_LENGTH',
    ],
    [
      'both Transfer-Encoding and Content-Length',
      `${ok}Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n`,
      'HPE_UNEXPECTED_CONTENT_LENGTH',
    ],
    [
      'Transfer-Encoding: identity',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nConnection: close\r\n\r\nok',
      'HPE_INVALID_TRANSFER_ENCODING',
    ],
    [
      'a 101 to a request that asked for no upgrade',
      'HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n',
      'UNEXPECTED_UPGRADE',
    ],
  ])(
    '(%s) is answered 502 UPSTREAM_RESPONSE_INVALID naming the reason, and logged',
    async (_name, answer, reason) => {
      const up = await rawUpstream(answer)
      const { front: f, logs } = await front(up.url)
      const response = await fetch(`${f.url}/a`)
      expect(response.status).toBe(502)
      const problem = (await response.json()) as { code: string; detail: string }
      expect(problem.code).toBe('UPSTREAM_RESPONSE_INVALID')
      expect(problem.detail).toContain('malformed response')
      expect(problem.detail).toContain(reason)
      expect(f.outcomes[0]).toMatchObject({ status: 502, error: 'UPSTREAM_RESPONSE_INVALID' })
      const logged = logs.map((line) => JSON.parse(line) as Record<string, unknown>)
      expect(logged).toContainEqual(
        expect.objectContaining({
          msg: 'upstream response malformed',
          service: 'orders',
          reason,
          endpoint: up.url,
        }),
      )
    },
  )

  it('counts as a failure for the circuit breaker', async () => {
    const up = await rawUpstream(`${ok}X-A: 1\r\n  folded\r\n\r\nok`)
    const { front: f, state } = await front(up.url, {
      retry: undefined,
      breaker: { failureThreshold: 1, cooldownMs: 10_000, halfOpenProbes: 1 },
    })
    expect((await fetch(`${f.url}/a`)).status).toBe(502)
    expect(state()).toBe('open')
  })

  it('is not retried for a POST without an Idempotency-Key', async () => {
    const up = await rawUpstream(`${ok}X-A: 1\r\n  folded\r\n\r\nok`)
    const { front: f } = await front(up.url, {})
    const response = await fetch(`${f.url}/pay`, { method: 'POST', body: 'x' })
    expect(response.status).toBe(502)
    expect(((await response.json()) as { code: string }).code).toBe('UPSTREAM_RESPONSE_INVALID')
    expect(up.requests()).toBe(1)
  })
})
