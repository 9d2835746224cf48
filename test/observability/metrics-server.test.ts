import { describe, expect, it } from 'vitest'
import { createMetricsRegistry, startMetricsServer } from '../../src/observability/index.js'
import { send, serversClosedAfterEach } from './metrics-http.js'
import { parsePrometheusText, sampleValue } from './prometheus-text.js'

const servers = serversClosedAfterEach()

async function start(
  options: Omit<Parameters<typeof startMetricsServer>[0], 'port'> & { port?: number },
) {
  const server = await startMetricsServer({ port: 0, ...options })
  servers.push(server)
  return server
}

describe('startMetricsServer', () => {
  it('serves /metrics in the text format on loopback by default', async () => {
    const registry = createMetricsRegistry()
    const hits = registry.counter({ name: 'hits_total', help: 'Hits.' })
    hits.inc(3)
    const server = await start({ registry })
    expect(server.host).toBe('127.0.0.1')
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`)
    const res = await send(`${server.url}/metrics`)
    expect(res.status).toBe(200)
    expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8')
    expect(sampleValue(parsePrometheusText(res.body), 'hits_total')).toBe(3)
    hits.inc()
    expect(
      sampleValue(parsePrometheusText((await send(`${server.url}/metrics`)).body), 'hits_total'),
    ).toBe(4)
    const head = await send(`${server.url}/metrics`, 'HEAD')
    expect(head.status).toBe(200)
    expect(head.body).toBe('')
  })

  it('answers /healthz from the health check, 404 elsewhere and 405 for other methods', async () => {
    let healthy = true
    const errors: unknown[] = []
    const server = await start({
      registry: createMetricsRegistry(),
      health: () => {
        if (healthy === undefined) throw new Error('cannot tell')
        return healthy
      },
      onError: (e) => errors.push(e),
    })
    expect(await send(`${server.url}/healthz`)).toMatchObject({ status: 200, body: 'ok\n' })
    healthy = false
    expect(await send(`${server.url}/healthz`)).toMatchObject({ status: 503, body: 'unhealthy\n' })
    healthy = undefined as unknown as boolean
    expect((await send(`${server.url}/healthz`)).status).toBe(503)
    expect(errors).toHaveLength(1)
    expect((await send(`${server.url}/`)).status).toBe(404)
    expect((await send(`${server.url}/metrics/../secret`)).status).toBe(404)
    const post = await send(`${server.url}/metrics`, 'POST')
    expect(post.status).toBe(405)
    expect(post.headers.allow).toBe('GET, HEAD')
  })

  it('answers 500 when rendering fails, and rejects a port that is taken', async () => {
    const errors: unknown[] = []
    const server = await start({
      registry: {
        ...createMetricsRegistry(),
        contentType: 'text/plain',
        render: () => Promise.reject(new Error('registry broken')),
      },
      onError: (e) => errors.push(e),
    })
    expect((await send(`${server.url}/metrics`)).status).toBe(500)
    expect(errors).toHaveLength(1)
    await expect(
      startMetricsServer({ port: server.port, registry: createMetricsRegistry() }),
    ).rejects.toMatchObject({ code: 'EADDRINUSE' })
    await expect(
      startMetricsServer({ port: 70_000, registry: createMetricsRegistry() }),
    ).rejects.toThrow(/metricsServer.port/)
  })

  it('stops listening on close()', async () => {
    const server = await startMetricsServer({ port: 0, registry: createMetricsRegistry() })
    await server.close()
    await expect(send(`${server.url}/metrics`)).rejects.toMatchObject({ code: 'ECONNREFUSED' })
  })
})
