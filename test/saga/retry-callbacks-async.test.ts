// A step's retry.shouldRetry is called synchronously: an async one answered a promise, which is
// truthy, so every failure was retried, the errors it meant to stop at (a 402) included, until
// maxAttempts, without a word. It is refused as a throwing shouldRetry is: the step fails at
// once and the reason names the callback. Real SQLite and PostgreSQL, ManualClock.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSagaWorker, defineSaga } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('an async retry.shouldRetry, on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_retry_async')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('fails the step at once, its reason naming the callback, instead of retrying', async () => {
    const clock = new ManualClock(1_000)
    let charges = 0
    const saga = defineSaga({
      name: `retry-async-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          action: async () => {
            charges++
            throw Object.assign(new Error('declined'), { status: 402 })
          },
          retry: {
            maxAttempts: 5,
            // Meant "never retry a 402"; as an async function it answers a promise.
            shouldRetry: (async (error: { status?: number }) => error.status !== 402) as never,
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    try {
      const outcome = await worker.run(saga, null)
      expect(charges).toBe(1)
      expect(outcome.status).toBe('compensated')
      expect(outcome.reason).toMatch(
        /^step "charge" failed: Error: declined \(not retried: its retry\.shouldRetry threw InvalidOptionError: .*not a promise/,
      )
    } finally {
      await worker.stop()
    }
  })
})
