// A request whose body the listener itself answers and cuts: node's request timer (408
// TIMEOUT) or its parser failing on the body (a bad chunk size: 400 REQUEST_INVALID). The
// client is sent that answer, and the access log line and the request metrics must say so; they
// said 499 ABORTED, as for a client that went away, since the read saw its stream aborted
// either way. A client that leaves by itself is still 499 (ambassador-client-left.test.ts,
// test/proxy/gateway/access-log-bytes.test.ts).
import { afterEach, describe, expect, it } from 'vitest'
import type { ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { until } from '../../support/until.js'
import { route } from '../gateway/fixtures.js'
import {
  type CapturedLog,
  defaultLimits,
  expectBodyCutCounted,
  listenRole,
  sendRaw,
} from './harness.js'

// Short timers, so that node's request timer fires while the test waits for the answer.
const shortTimers = { ...defaultLimits, headersTimeoutMs: 100, requestTimeoutMs: 200 }
const routes = [route('orders', '/orders', [{ service: 'orders', weight: 1 }])]

const servers: ListenerServer[] = []
afterEach(async () => {
  for (const server of servers.splice(0)) await server.close()
})

async function listen(role: 'ambassador' | 'gateway', limits = defaultLimits) {
  const running = await listenRole(role, routes, { limits })
  servers.push(running.server)
  return running
}

/** Sends `request` and returns everything the proxy wrote before it closed the connection. */
async function exchange(port: number, request: string): Promise<string> {
  const { received, closed } = sendRaw(port, request)
  await closed
  return received()
}

async function accessLine(log: CapturedLog): Promise<Record<string, unknown>> {
  const lines = () => log.lines().filter((line) => line.msg === 'access')
  await until(() => lines().length > 0, 'the access line')
  expect(lines()).toHaveLength(1)
  return lines()[0]!
}

const stalled = (path: string) => `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab` // 2 of 10 bytes

describe.each(['ambassador', 'gateway'] as const)('%s', (role) => {
  it('logs and counts a body that stalls past requestTimeoutMs as the 408 TIMEOUT it was answered', async () => {
    const running = await listen(role, shortTimers)
    const { port, log } = running
    const received = await exchange(port, stalled('/orders/items'))
    expect(received).toMatch(/^HTTP\/1\.1 408 /)
    expect(received).toContain('"code":"TIMEOUT"')
    const line = await accessLine(log)
    expect(line).toMatchObject({
      status: 408,
      error: 'TIMEOUT',
      method: 'POST',
      path: '/orders/items',
      bytesIn: 2,
    })
    expect(line.bytesOut).toBe(Buffer.byteLength(received, 'latin1'))
    await expectBodyCutCounted(role, running, 408)
  })

  it('logs a chunked body the parser refuses as the 400 REQUEST_INVALID it was answered', async () => {
    const { port, log, orders } = await listen(role)
    const received = await exchange(
      port,
      'POST /orders/items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\n',
    )
    expect(received).toMatch(/^HTTP\/1\.1 400 /)
    expect(await accessLine(log)).toMatchObject({
      status: 400,
      error: 'REQUEST_INVALID',
      path: '/orders/items',
      bytesIn: 2,
    })
    expect(orders.forwarded).toHaveLength(0)
  })
})
