// A request still sending its body when the drain's time is up (close(drainMs), drainTimeoutMs
// on SIGTERM) is cut by the proxy, not by its client: docs/proxy.md (Graceful drain) says its
// access log line is `status: 503, error: "DRAIN_TIMEOUT"`, 503 in the request metrics, as
// for a request cut while its upstream answers (test/proxy/runtime/drain-cut.test.ts). The
// body read handed it on as 499 ABORTED, a client that left, since it saw its stream aborted
// either way and read only the listener's own answer mark (body-answered-by-listener.test.ts).
import type { IncomingMessage } from 'node:http'
import { afterEach, describe, expect, it } from 'vitest'
import type { ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { until } from '../../support/until.js'
import { route } from '../gateway/fixtures.js'
import { expectBodyCutCounted, listenRole, sendRaw } from './harness.js'

const routes = [route('orders', '/orders', [{ service: 'orders', weight: 1 }])]

const servers: ListenerServer[] = []
afterEach(async () => {
  for (const server of servers.splice(0)) await server.close(0)
})

describe.each(['ambassador', 'gateway'] as const)('%s', (role) => {
  it('logs and counts a body cut by the drain timeout as 503 DRAIN_TIMEOUT, not 499 ABORTED', async () => {
    const clock = new ManualClock(1_000_000)
    const running = await listenRole(role, routes, { clock })
    const { server, port, log } = running
    servers.push(server)

    // Counts the body bytes the proxy's read got (its own 'data' listener sees the same chunks).
    let bodyBytes = 0
    server.server.on('request', (req: IncomingMessage) => {
      req.on('data', (chunk: Buffer) => {
        bodyBytes += chunk.length
      })
    })
    // 2 of the 10 bytes announced; the rest never comes.
    const client = sendRaw(
      port,
      'POST /orders/items HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab',
    )
    await until(() => bodyBytes === 2, 'the first body bytes read by the proxy')

    const closing = server.close(1_500)
    await clock.advance(1_499)
    expect(log.lines().filter((line) => line.msg === 'access')).toEqual([])
    await clock.advance(1)
    await closing
    await client.closed
    expect(client.received()).toBe('')
    expect(server.cutRequests).toBe(1)

    const access = log.lines().filter((line) => line.msg === 'access')
    expect(access).toHaveLength(1)
    expect(access[0]).toMatchObject({
      status: 503,
      error: 'DRAIN_TIMEOUT',
      method: 'POST',
      path: '/orders/items',
      bytesIn: 2,
    })
    await expectBodyCutCounted(role, running, 503)
  })
})
