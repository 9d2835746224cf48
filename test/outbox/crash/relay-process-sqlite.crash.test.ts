// The outbox crash test with real processes on SQLite and the SQL queue (the embedded broker,
// stored in the producer's database file): concurrent writer loops, the relay process SIGKILLed
// at random moments and restarted, an inbox-backed consumer applying every event in a separate
// SQLite database. Judged by the queue checker and by both databases; see crash-harness.ts.
import { describe, expect, it } from 'vitest'
import { scaled } from '../../support/scale.js'
import { expectSound } from './crash-expectations.js'
import { runCrashScenario } from './crash-harness.js'

const seed = Number(process.env.BREAKWATER_CRASH_SEED ?? Date.now() % 2 ** 31)

describe('outbox relay process crash test on sqlite + sql queue', () => {
  it(
    'loses nothing, keeps per-aggregate order, duplicates at most a batch per kill, applies each event once',
    async () => {
      const report = await runCrashScenario({
        name: 'sqlite+sql-queue',
        engine: 'sqlite-sql-queue',
        events: scaled(20_000, 3_000),
        aggregates: scaled(200, 50),
        writers: 4,
        randomKills: scaled(10, 5),
        pointKills: scaled(3, 1),
        batchSize: 64,
        leaseMs: 1_500,
        maxActiveMs: 1_500,
        writeSpanMs: scaled(60_000, 25_000),
        writerConnectionKills: 0,
        restartBroker: false,
        drainTimeoutMs: scaled(180_000, 60_000),
        seed,
      })
      console.log(report.summary)
      expect(report.kills.random).toBeGreaterThanOrEqual(scaled(10, 5))
      expectSound(report)
    },
    scaled(900_000, 150_000),
  )
})
