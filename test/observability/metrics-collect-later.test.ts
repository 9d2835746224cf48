// A callback registered with onCollect after a render that found none (a scrape that came
// before the parts that refresh gauges were started, or between a reload's removal of the old
// callbacks and the addition of the new ones) must run at every later render.
import { describe, expect, it } from 'vitest'
import { createMetricsRegistry } from '../../src/observability/index.js'

describe('metrics registry: onCollect after a render without callbacks', () => {
  it('runs the callback at the next render', async () => {
    const registry = createMetricsRegistry()
    const pending = registry.gauge({ name: 'app_pending', help: 'Pending rows.' })
    expect(await registry.render()).toContain('app_pending 0')
    let calls = 0
    registry.onCollect(() => {
      calls++
      pending.set(calls)
    })
    expect(await registry.render()).toContain('app_pending 1')
    expect(await registry.render()).toContain('app_pending 2')
    expect(calls).toBe(2)
  })

  it('runs callbacks added after all earlier ones were removed', async () => {
    const registry = createMetricsRegistry()
    let calls = 0
    const remove = registry.onCollect(() => {
      calls++
    })
    await registry.render()
    remove()
    await registry.render()
    registry.onCollect(() => {
      calls++
    })
    await registry.render()
    expect(calls).toBe(2)
  })
})
