// A step's retry callbacks are user code: a `shouldRetry` or `random` that throws is a bug to
// surface, as breakwater's retry() surfaces it (the call rejects with that error). In a saga a
// throwing shouldRetry was taken as "do not retry" without a word, so the saga compensated
// (for good) and its reason named only the step's error; a throwing `random` escaped the run,
// which recorded nothing: the attempt's known failure became an unknown outcome, retried only
// after the lease ran out. Real SQLite and PostgreSQL, ManualClock.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  getSagaTimeline,
  type SagaRetryOptions,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

const reset = () => Object.assign(new Error('connection reset'), { code: 'ECONNRESET' })

describe.each(dbTargets)('retry callbacks that throw, on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_retry_callbacks')
  })
  afterAll(async () => {
    await t?.close()
  })

  /** `reserve` completes; `charge` fails with a retryable error, retried by `retry`. */
  const sagaWith = (retry: SagaRetryOptions) => {
    const undone: string[] = []
    const saga = defineSaga({
      name: `retry-callbacks-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'reserve',
          action: async () => ({ reservationId: 'r1' }),
          compensation: async () => {
            undone.push('reserve')
          },
        },
        {
          name: 'charge',
          action: async () => {
            throw reset()
          },
          retry,
        },
      ],
    })
    return { saga, undone }
  }

  it.each([
    [
      'shouldRetry',
      {
        shouldRetry: () => {
          throw new Error('classifier broke')
        },
      },
    ],
    [
      'random',
      {
        random: () => {
          throw new Error('no entropy')
        },
      },
    ],
  ] as const)(
    'a step whose retry.%s throws fails at once, and its reason says so',
    async (callback, retry) => {
      const clock = new ManualClock(1_000)
      const { saga, undone } = sagaWith(retry)
      const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
      try {
        const outcome = await worker.run(saga, null)
        const message = callback === 'shouldRetry' ? 'classifier broke' : 'no entropy'
        const reason = `step "charge" failed: Error: connection reset [ECONNRESET] (not retried: its retry.${callback} threw Error: ${message})`
        expect(outcome.status).toBe('compensated')
        expect(outcome.reason).toBe(reason)
        expect(undone).toEqual(['reserve'])
        const instance = await getSaga(t.db, outcome.id)
        // A known failure: the action threw, so the step itself is not compensated.
        expect(instance!.steps[1]).toMatchObject({ status: 'failed', attempts: 1 })
        expect(instance!.steps[1]!.outcomeUnknown).toBeUndefined()
        const failed = (await getSagaTimeline(t.db, outcome.id)).filter(
          (e) => e.kind === 'step-failed',
        )
        expect(failed).toHaveLength(1)
        expect(failed[0]!.detail).toMatchObject({
          error: { message: 'connection reset', code: 'ECONNRESET' },
          final: true,
          retryError: { name: 'Error', message },
        })
      } finally {
        await worker.stop()
      }
    },
  )

  it('a compensation whose compensationRetry.shouldRetry throws parks, its reason naming it', async () => {
    const clock = new ManualClock(1_000)
    const saga = defineSaga({
      name: `retry-callbacks-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'reserve',
          action: async () => ({}),
          compensation: async () => {
            throw new Error('ledger read-only')
          },
          compensationRetry: {
            shouldRetry: () => {
              throw new Error('classifier broke')
            },
          },
        },
        {
          name: 'charge',
          action: async () => {
            throw Object.assign(new Error('declined'), { status: 402 })
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    try {
      const outcome = await worker.run(saga, null)
      expect(outcome.status).toBe('failed')
      expect(outcome.reason).toBe(
        'compensation of step "reserve" failed after 1 attempt: Error: ledger read-only (not retried: its compensationRetry.shouldRetry threw Error: classifier broke) (while compensating because step "charge" failed: Error: declined)',
      )
    } finally {
      await worker.stop()
    }
  })
})
