// The admin API's 502 PARTIALLY_APPLIED answer is a well-formed problem: its title is the
// status's reason phrase, and it names the workers on each side.
import { afterEach, describe, expect, it } from 'vitest'
import { systemClock } from '../../../src/core/clock.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { type AdminBackend, PartiallyAppliedError } from '../../../src/proxy/admin/backend.js'
import { type AdminServer, startAdminServer } from '../../../src/proxy/admin/server.js'
import { captureLog, http } from '../runtime/helpers.js'

const token = 'admin-token-0123456789abcdef'
let admin: AdminServer | undefined
afterEach(async () => {
  await admin?.close()
  admin = undefined
})

describe('admin API partial answers', () => {
  it('answers 502 Bad Gateway with PARTIALLY_APPLIED', async () => {
    const backend = {
      ready: () => true,
      listenersDown: () => [],
      services: async () => [{ pid: 1, services: [{ name: 'orders' }] }],
      config: async () => ({ services: new Map([['orders', {}]]) }),
      isolate: async () => {
        throw new PartiallyAppliedError('isolate', [1], [{ pid: 2, error: 'no answer' }])
      },
    } as unknown as AdminBackend
    admin = await startAdminServer({
      config: { host: '127.0.0.1', port: 0, token: { env: 'T' } },
      backend,
      deps: {
        clock: systemClock,
        logger: createJsonLogger({ output: captureLog() }),
        metrics: createMetricsRegistry(),
      },
      env: { T: token },
    })
    const res = await http(admin.address().port, '/admin/services/orders/isolate', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    })
    expect(res.status).toBe(502)
    expect(res.json()).toMatchObject({
      title: 'Bad Gateway',
      status: 502,
      code: 'PARTIALLY_APPLIED',
      appliedBy: [1],
      notAppliedBy: [{ pid: 2, error: 'no answer' }],
    })
  })
})
