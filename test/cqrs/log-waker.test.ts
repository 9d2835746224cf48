// The waker a projector or subscription waits on between reads. A notification that arrives
// while the loop is reading (not waiting) must not be lost: PostgreSQL sends NOTIFY at commit,
// so the next wait returns at once for another read instead of sleeping until a timed re-check.
import { describe, expect, it } from 'vitest'
import type { EventStoreImpl } from '../../src/cqrs/event-store.js'
import { LogWaker } from '../../src/cqrs/follower.js'
import type { SqlNotification } from '../../src/stores/index.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'

function fakeStore() {
  const handlers: Array<(n: SqlNotification) => void> = []
  const store = {
    db: {
      dialect: 'postgres',
      listen: async (_channel: string, handler: (n: SqlNotification) => void) => {
        handlers.push(handler)
        return async () => {}
      },
      query: async () => [{ position: 0 }],
    },
  } as unknown as EventStoreImpl
  const notify = (payload: string) =>
    handlers[0]!({ channel: 'breakwater_events', payload, reconnected: false })
  return { store, notify }
}

describe('LogWaker', () => {
  it('returns at once from the wait after a notification that came while the loop was reading', async () => {
    const { store, notify } = fakeStore()
    // The clock never moves: only a notification can end a wait.
    const waker = new LogWaker(store, new ManualClock(0), 60_000)
    await waker.start()
    // The loop read up to position 1; position 2 commits and notifies before the loop waits.
    notify('2')
    let woke = false
    const waiting = waker.wait(1, new AbortController().signal).then(() => {
      woke = true
    })
    await flushJobs()
    expect(woke).toBe(true)
    await waiting
    // Consumed: the next wait sleeps until a notification wakes it.
    woke = false
    const next = waker.wait(2, new AbortController().signal).then(() => {
      woke = true
    })
    await flushJobs()
    expect(woke).toBe(false)
    notify('3')
    await next
    expect(woke).toBe(true)
    await waker.close()
  })
})
