import { describe, expect, it } from 'vitest'
import { mergeRoutes } from '../../../src/proxy/admin/backend.js'
import type { RouteState } from '../../../src/proxy/contracts.js'
import { ShadowStats } from '../../../src/proxy/inbound/shadow.js'

// A route's state as a worker reports it (the runtime's shadow snapshot, as JSON crosses IPC).
function workerRoute(stats: ShadowStats): RouteState {
  return {
    name: 'orders',
    targets: [{ service: 'legacy', weight: 1 }],
    overridden: false,
    requestsByService: { legacy: 1 },
    shadow: JSON.parse(JSON.stringify(stats.snapshot())),
    retryAffinity: undefined,
  }
}

describe('mergeRoutes (GET /admin/routes with workers)', () => {
  it('sums every shadow count of the workers and joins the noise they learned', () => {
    const a = new ShadowStats(20)
    a.record(undefined)
    a.skipped = 2
    a.errors = 1
    a.learn([{ path: '/createdAt', primary: 1, shadow: 2 }])
    const b = new ShadowStats(20)
    b.record(undefined)
    b.record(undefined)
    b.skipped = 5
    b.errors = 3
    b.learn([{ path: '/id', primary: 1, shadow: 2 }])
    const [merged] = mergeRoutes([
      { pid: 1, routes: [workerRoute(a)] },
      { pid: 2, routes: [workerRoute(b)] },
    ])
    expect(merged?.shadow).toEqual({
      compared: 3,
      mismatches: 0,
      examples: [],
      skipped: 7,
      errors: 4,
      noise: ['/createdAt', '/id'],
    })
    expect(merged?.requestsByService).toEqual({ legacy: 2 })
  })
})
