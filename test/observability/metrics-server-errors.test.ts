// onError is the caller's code: if it throws, a scrape still gets its answer and the process
// is not brought down by an unhandled rejection.
import { describe, expect, it } from 'vitest'
import { createMetricsRegistry, startMetricsServer } from '../../src/observability/index.js'
import { get, serversClosedAfterEach } from './metrics-http.js'

const servers = serversClosedAfterEach()

describe('metrics server: an onError that throws', () => {
  it('still answers 503 and 500, and no rejection escapes', async () => {
    const escaped: unknown[] = []
    const onRejection = (reason: unknown) => escaped.push(reason)
    process.on('unhandledRejection', onRejection)
    try {
      const registry = createMetricsRegistry()
      registry.render = () => Promise.reject(new Error('render failed'))
      const reported: unknown[] = []
      const server = await startMetricsServer({
        port: 0,
        registry,
        health: () => {
          throw new Error('health failed')
        },
        onError: (error) => {
          reported.push(error)
          throw new Error('onError failed')
        },
      })
      servers.push(server)
      expect(await get(`${server.url}/healthz`)).toEqual({ status: 503, body: 'unhealthy\n' })
      expect(await get(`${server.url}/metrics`)).toEqual({
        status: 500,
        body: 'metrics unavailable\n',
      })
      // A turn for a rejection left unhandled to be reported.
      await new Promise((resolve) => setImmediate(resolve))
      expect(reported.map((e) => (e as Error).message)).toEqual(['health failed', 'render failed'])
      expect(escaped).toEqual([])
    } finally {
      process.off('unhandledRejection', onRejection)
    }
  })
})
