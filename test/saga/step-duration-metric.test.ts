// The OpenTelemetry histogram of saga step run times is in seconds (unit `s`, buckets in
// seconds), as OpenTelemetry's semantic conventions and Prometheus' want durations, and as the
// relay's and the proxy's duration metrics are. It was recorded in milliseconds (unit `ms`): an
// exporter to Prometheus named it `..._milliseconds`, and a dashboard shared with the other
// breakwater latencies read a 1.5 s step as 1500 s. Real SQLite, time on a ManualClock.
import { metrics } from '@opentelemetry/api'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSagaWorker, defineSaga, startSaga } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { recordingMeter } from '../support/recording-meter.js'
import { sqliteDb, type TestDb } from './databases.js'

const recording = recordingMeter()

describe('the saga step duration histogram', () => {
  let t: TestDb

  beforeAll(async () => {
    // Before any worker: the instruments are created on first use.
    metrics.disable()
    expect(metrics.setGlobalMeterProvider({ getMeter: () => recording.meter })).toBe(true)
    t = await sqliteDb.open('saga_step_duration_metric')
  })
  afterAll(async () => {
    metrics.disable()
    await t?.close()
  })

  it('records actions and compensations in seconds, with buckets in seconds', async () => {
    const clock = new ManualClock(1_700_000_000_000)
    const saga = defineSaga({
      name: 'metered',
      version: 1,
      steps: [
        {
          name: 'slow',
          action: async () => {
            await clock.advance(1_500)
            return { slow: true }
          },
          compensation: async () => {
            await clock.advance(250)
          },
        },
        {
          name: 'fails',
          action: async () => {
            await clock.advance(20)
            throw new Error('no')
          },
          retry: { maxAttempts: 1 },
        },
      ],
    })
    await startSaga(t.db, saga, null, { clock })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    expect(await worker.poll()).toBe(1)
    await worker.stop()

    const histogram = recording.created.find((c) => c.name === 'breakwater.saga.step.duration')
    expect(histogram?.kind).toBe('histogram')
    expect(histogram?.options?.unit).toBe('s')
    const buckets = histogram?.options?.advice?.explicitBucketBoundaries
    // Seconds: from milliseconds up to minutes (a step may call a slow service), not the SDK's
    // default buckets, which are made for milliseconds (0 to 10 000).
    expect(buckets?.[0]).toBeLessThan(0.01)
    expect(buckets?.at(-1)).toBeGreaterThanOrEqual(60)
    expect(buckets).toEqual([...buckets!].sort((a, b) => a - b))
    expect(recording.values('breakwater.saga.step.duration')).toEqual([1.5, 0.02, 0.25])
  })
})
