// The outbox crash test with real processes on PostgreSQL and NATS JetStream: events enqueued by
// concurrent writers (some of their connections terminated mid-transaction), the relay process
// SIGKILLed at random moments and restarted, the NATS server SIGKILLed and restarted once, and an
// inbox-backed consumer applying every event in its own database. Judged by the queue checker
// and by both databases; see crash-harness.ts for the scenario.
import { describe, expect, it } from 'vitest'
import { scaled } from '../../support/scale.js'
import { expectSound } from './crash-expectations.js'
import { runCrashScenario } from './crash-harness.js'

const seed = Number(process.env.BREAKWATER_CRASH_SEED ?? Date.now() % 2 ** 31)

describe('outbox relay process crash test on postgres + nats', () => {
  it(
    'loses nothing, keeps per-aggregate order, duplicates at most a batch per kill, applies each event once',
    async () => {
      const report = await runCrashScenario({
        name: 'postgres+nats',
        engine: 'postgres-nats',
        events: scaled(100_000, 10_000),
        aggregates: scaled(1_000, 200),
        writers: 8,
        randomKills: scaled(20, 5),
        pointKills: scaled(5, 2),
        batchSize: 128,
        leaseMs: 1_500,
        maxActiveMs: 1_500,
        writeSpanMs: scaled(80_000, 16_000),
        writerConnectionKills: scaled(30, 8),
        restartBroker: true,
        drainTimeoutMs: scaled(300_000, 60_000),
        seed,
      })
      console.log(report.summary)
      expect(report.kills.random).toBeGreaterThanOrEqual(scaled(20, 5))
      expect(report.brokerRestarts).toBe(1)
      expectSound(report)
    },
    scaled(1_200_000, 180_000),
  )
})
