// Access log lines of request bodies and responses, found by exploratory testing: a gateway
// line never had bytesOut for a completed response (node:http detaches `res.socket` when the
// response finishes, before the line is written), and a client that aborted mid-upload was
// logged and counted as a 400 REQUEST_BODY_INCOMPLETE, answered to nobody, instead of 499
// ABORTED. Also: a body with a Content-Length arrives whole and byte-exact at the upstream.
import { connect } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'
import { route } from './fixtures.js'
import {
  type Gateway,
  sendJson,
  startGateway,
  startUpstream,
  type Upstream,
  until,
} from './harness.js'

const started: { close(): Promise<void> }[] = []
afterEach(async () => {
  for (const each of started.splice(0).reverse()) await each.close()
})

async function setup(): Promise<{
  gateway: Gateway
  upstream: Upstream
  metrics: ReturnType<typeof createMetricsRegistry>
}> {
  const upstream = await startUpstream((req, res) => {
    sendJson(res, 200, {
      length: req.body.length,
      sum: [...req.body].filter((c) => c === 'b').length,
    })
  })
  started.push(upstream)
  const routes = [route('files', '/files', [{ service: 'store', weight: 1 }])]
  const metrics = createMetricsRegistry()
  const gateway = await startGateway(
    { store: upstream.url },
    routes,
    createRouteTable(routes),
    {},
    metrics,
  )
  started.push(gateway)
  return { gateway, upstream, metrics }
}

function accessLines(gateway: Gateway): Record<string, unknown>[] {
  return gateway
    .logText()
    .split('\n')
    .filter((line) => line.includes('"msg":"access"'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
}

describe('gateway access log', () => {
  it('counts the bytes of a completed response (bytesOut) and of the body read (bytesIn)', async () => {
    const { gateway, upstream } = await setup()
    const body = `${'a'.repeat(300_000)}${'b'.repeat(200_000)}`
    const response = await fetch(`${gateway.url}/files/x`, { method: 'PUT', body })
    const text = await response.text()
    expect(response.status).toBe(200)
    expect(JSON.parse(text)).toEqual({ length: 500_000, sum: 200_000 })
    expect(upstream.seen[0]?.body).toBe(body)
    await until(() => accessLines(gateway).length === 1, 'the access line')
    const line = accessLines(gateway)[0]!
    expect(line).toMatchObject({ status: 200, route: 'files', bytesIn: 500_000 })
    // The head and the body of the response.
    expect(line.bytesOut).toBeGreaterThan(text.length)
  })

  it('logs and counts a client that leaves mid-upload as 499 ABORTED', async () => {
    const { gateway, upstream, metrics } = await setup()
    const port = Number(new URL(gateway.url).port)
    const socket = connect(port, '127.0.0.1')
    socket.on('error', () => {})
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.write(
      `PUT /files/y HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n${'a'.repeat(1_000)}`,
    )
    await new Promise((resolve) => setTimeout(resolve, 50))
    socket.destroy()
    await until(() => accessLines(gateway).length === 1, 'the access line')
    expect(accessLines(gateway)[0]).toMatchObject({
      status: 499,
      error: 'ABORTED',
      route: 'files',
      method: 'PUT',
      path: '/files/y',
      bytesIn: 1_000,
    })
    expect(gateway.logText()).not.toContain('REQUEST_BODY_INCOMPLETE')
    expect(upstream.seen).toHaveLength(0)
    expect(await metrics.render()).toContain(
      'breakwater_proxy_route_requests_total{listener="gateway",route="files",service="",status="499"} 1',
    )
  })
})
