// A subscription or projector left running when its driver is closed under it: a closed driver
// stays closed, so retrying cannot help. Each reports STORE_CLOSED once to onError and ends its
// loop (no timer left on its clock); stop() then resolves at once. It used to report
// STORE_CLOSED at every backoff, for ever, until stopped.
import { describe, expect, it } from 'vitest'
import { createEventStore, createProjector, defineProjection } from '../../src/cqrs/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, useTestDb } from './databases.js'

const poll = { timeout: 10_000, interval: 2 }

/** The codes of `errors` (the breakwater ones carry a `code`). */
function codes(errors: readonly unknown[]): unknown[] {
  return errors.map((error) => (error as { code?: unknown }).code)
}

/**
 * Closes `driver` under a running follower (caught up, waiting on `clock` for its next poll of
 * `pollIntervalMs`), lets the poll read from it, then advances `clock` past many retry delays
 * (each at most `maxDelayMs`), as a process left running for a while would; expects one
 * STORE_CLOSED reported in `errors` and no timer left on `clock` (the loop has ended).
 */
async function closeUnder(
  driver: SqlDriver,
  clock: ManualClock,
  errors: readonly unknown[],
  pollIntervalMs: number,
  maxDelayMs: number,
): Promise<void> {
  await driver.close()
  await expect
    .poll(async () => {
      await clock.advance(pollIntervalMs)
      return errors.length
    }, poll)
    .toBeGreaterThan(0)
  for (let i = 0; i < 20; i++) await clock.advance(maxDelayMs)
  expect(codes(errors)).toEqual(['STORE_CLOSED'])
  expect(clock.pendingTimers).toBe(0)
}

describe.each(dbTargets)('a follower whose driver is closed on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_closed_driver')

  it('a subscription reports STORE_CLOSED once and ends', async () => {
    const own = await t.connect()
    const store = createEventStore(own)
    await store.append('closed-sub', [{ type: 'n', data: 1 }])
    const clock = new ManualClock(Date.now())
    const errors: unknown[] = []
    const subscription = store.subscribe(() => {}, {
      name: 'closed-sub',
      pollIntervalMs: 1000,
      retryBaseDelayMs: 100,
      retryMaxDelayMs: 100,
      clock,
      onError: (error) => errors.push(error),
    })
    await expect.poll(() => subscription.live, poll).toBe(true)
    await closeUnder(own, clock, errors, 1000, 100)
    await subscription.stop()
    expect(codes(errors)).toEqual(['STORE_CLOSED'])
  })

  it('a projector reports STORE_CLOSED once and ends', async () => {
    const own = await t.connect()
    const store = createEventStore(own)
    const clock = new ManualClock(Date.now())
    const errors: unknown[] = []
    const applied: unknown[] = []
    const projector = createProjector(
      store,
      defineProjection({
        name: 'closed_projection',
        eventTypes: ['p'],
        tables: { closed_projection: (table) => [`CREATE TABLE ${table} (n INTEGER)`] },
        apply: (event) => {
          applied.push(event.data)
        },
      }),
      {
        pollIntervalMs: 1000,
        retryBaseDelayMs: 100,
        retryMaxDelayMs: 100,
        clock,
        onError: (error) => errors.push(error),
      },
    )
    await store.append('closed-projection', [{ type: 'p', data: 1 }])
    projector.start()
    await expect.poll(() => applied, poll).toEqual([1])
    // Caught up and waiting for the next poll.
    await expect.poll(() => clock.pendingTimers, poll).toBe(1)
    await closeUnder(own, clock, errors, 1000, 100)
    await projector.stop()
    expect(codes(errors)).toEqual(['STORE_CLOSED'])
  })
})
