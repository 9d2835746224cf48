// An onCollect callback that never settles (a stats query to a database that stopped
// answering) must not take every later scrape down with it: a render waits for the callbacks
// at most collectTimeoutMs, then renders the values as they are.
import { describe, expect, it } from 'vitest'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { createMetricsRegistry } from '../../src/observability/index.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { parsePrometheusText, sampleValue } from './prometheus-text.js'

function settles<T>(promise: Promise<T>): {
  readonly done: () => boolean
  readonly value: Promise<T>
} {
  let done = false
  const value = promise.finally(() => {
    done = true
  })
  return { done: () => done, value }
}

describe('metrics registry: a collect callback that does not settle', () => {
  it('renders after collectTimeoutMs, reports a TIMEOUT, and does not pile up calls', async () => {
    const clock = new ManualClock()
    const errors: unknown[] = []
    const registry = createMetricsRegistry({
      clock,
      collectTimeoutMs: 1_000,
      onCollectError: (e) => errors.push(e),
    })
    const pending = registry.gauge({ name: 'app_pending', help: 'Pending rows.' })
    const fresh = registry.gauge({ name: 'app_fresh', help: 'Set by a quick callback.' })
    let slowCalls = 0
    let release: () => void = () => {}
    registry.onCollect(() => {
      slowCalls++
      return new Promise<void>((resolve) => {
        release = () => {
          pending.set(7)
          resolve()
        }
      })
    })
    let quickCalls = 0
    registry.onCollect(() => {
      quickCalls++
      fresh.set(quickCalls)
    })

    const first = settles(registry.render())
    await clock.advance(999)
    expect(first.done()).toBe(false)
    await clock.advance(1)
    expect(first.done()).toBe(true)
    expect(sampleValue(parsePrometheusText(await first.value), 'app_fresh')).toBe(1)
    expect(errors).toHaveLength(1)
    expect(BreakwaterError.is(errors[0]) && errors[0].code).toBe('TIMEOUT')

    // The slow callback is still running: the next render waits for that run, not a new one,
    // while the quick callback runs afresh.
    const second = settles(registry.render())
    await clock.advance(1_000)
    expect(second.done()).toBe(true)
    expect(slowCalls).toBe(1)
    expect(quickCalls).toBe(2)

    // Once it settles, the next render calls it again, and no timer is left behind.
    release()
    await flushJobs()
    const third = registry.render()
    expect(slowCalls).toBe(2)
    release()
    expect(sampleValue(parsePrometheusText(await third), 'app_pending')).toBe(7)
    expect(clock.pendingTimers).toBe(0)
    expect(errors).toHaveLength(2)
  })

  it('calls a callback that throws at once again at the next render', async () => {
    const clock = new ManualClock()
    const errors: unknown[] = []
    const registry = createMetricsRegistry({ clock, onCollectError: (e) => errors.push(e) })
    let calls = 0
    registry.onCollect(() => {
      calls++
      throw new Error('stats query failed')
    })
    await registry.render()
    await registry.render()
    expect(calls).toBe(2)
    expect(errors).toHaveLength(2)
    expect(clock.pendingTimers).toBe(0)
  })

  it('refuses a collectTimeoutMs that is not a positive integer', () => {
    for (const collectTimeoutMs of [0, -1, 1.5, Number.NaN, '5'])
      expect(
        () => createMetricsRegistry({ collectTimeoutMs } as never),
        String(collectTimeoutMs),
      ).toThrow(InvalidOptionError)
  })
})
