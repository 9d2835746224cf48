// Requests still in flight when the drain time is up are cut by the proxy itself: their access
// log lines say so (DRAIN_TIMEOUT, not the client's ABORTED), and the stop line says the drain
// was cut and how many requests were (found by exploratory testing: both read as a clean stop).
import { request } from 'node:http'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type ProxyInternals, startProxyRuntime } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { captureLog, eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let upstream: NamedUpstream
let proxy: ProxyInternals | undefined

beforeEach(async () => {
  upstream = await startNamedUpstream('a', { hold: () => true })
})

afterEach(async () => {
  upstream.release()
  await proxy?.close(0)
  proxy = undefined
  await upstream.close()
})

const config = (url: string): string => `
services: { a: { endpoints: [${url}] } }
listeners:
  - { name: out, role: ambassador, port: 0 }
  - { name: in, role: gateway, port: 0, routes: [{ name: r, targets: [{ service: a }] }] }
drainTimeoutMs: 1500
`

async function startWithHeld() {
  const clock = new ManualClock(1_000_000)
  const log = captureLog()
  proxy = await startProxyRuntime({
    config: config(upstream.url),
    logger: createJsonLogger({ output: log, clock }),
    clock,
  })
  const gateway = proxy.address('in').port
  const ambassador = proxy.address('out').port
  const settled = (p: Promise<{ status: number }>) =>
    p.then(
      (res) => res.status,
      () => 'cut',
    )
  const clients = [
    settled(http(gateway, '/x')),
    settled(http(ambassador, '/a/y')),
    // Chunked: outside the fast path's subset, so node:http serves this one.
    settled(
      http(ambassador, '/a/z', {
        method: 'POST',
        headers: { 'transfer-encoding': 'chunked' },
        body: 'z',
      }),
    ),
  ]
  await eventually(() => upstream.seen.length === 3, 'the three requests upstream')
  return { clock, log, clients }
}

describe('a drain cut by drainTimeoutMs', () => {
  it('logs the requests it cut as DRAIN_TIMEOUT and the stop as drain "cut" at warn', async () => {
    const { clock, log, clients } = await startWithHeld()
    const running = proxy as ProxyInternals
    const closing = running.close()
    await clock.advance(1_499)
    expect(log.lines().filter((l) => l.msg === 'access')).toEqual([])
    await clock.advance(1)
    expect(await closing).toEqual({ drain: 'cut', cut: 3, tunnels: 0 })
    proxy = undefined
    expect(await Promise.all(clients)).toEqual(['cut', 'cut', 'cut'])
    const access = log.lines().filter((l) => l.msg === 'access')
    expect(access).toHaveLength(3)
    for (const line of access) expect(line).toMatchObject({ status: 503, error: 'DRAIN_TIMEOUT' })
    const stopped = log.lines().find((l) => l.msg === 'proxy stopped')
    expect(stopped).toMatchObject({ level: 'warn', drain: 'cut', cut: 3, drainTimeoutMs: 1500 })
  })

  it('a drain that finishes in time stays "complete"', async () => {
    const { log, clients } = await startWithHeld()
    const running = proxy as ProxyInternals
    const closing = running.close()
    upstream.release()
    expect(await closing).toEqual({ drain: 'complete', cut: 0, tunnels: 0 })
    proxy = undefined
    expect(await Promise.all(clients)).toEqual([200, 200, 200])
    const stopped = log.lines().find((l) => l.msg === 'proxy stopped')
    expect(stopped).toMatchObject({ level: 'info', drain: 'complete' })
    expect(stopped).not.toHaveProperty('cut')
  })

  it('a client that leaves during the drain is still ABORTED (499), and not counted as cut', async () => {
    const { clock, log, clients } = await startWithHeld()
    const running = proxy as ProxyInternals
    const leaving = request({
      host: '127.0.0.1',
      port: running.address('out').port,
      path: '/a/gone',
      agent: false,
    })
    leaving.on('error', () => {})
    leaving.end()
    await eventually(() => upstream.seen.length === 4, 'the fourth request upstream')
    const closing = running.close()
    leaving.destroy()
    await eventually(
      () => log.lines().some((l) => l.msg === 'access' && l.error === 'ABORTED'),
      'the access line of the client that left',
    )
    await clock.advance(1_500)
    expect(await closing).toEqual({ drain: 'cut', cut: 3, tunnels: 0 })
    proxy = undefined
    await Promise.all(clients)
    const access = log.lines().filter((l) => l.msg === 'access')
    expect(access.map((l) => l.error).sort()).toEqual([
      'ABORTED',
      'DRAIN_TIMEOUT',
      'DRAIN_TIMEOUT',
      'DRAIN_TIMEOUT',
    ])
    expect(access.find((l) => l.error === 'ABORTED')).toMatchObject({
      status: 499,
      path: '/a/gone',
    })
  })
})
