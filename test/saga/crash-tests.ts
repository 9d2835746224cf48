// Crash test: order sagas run by worker PROCESSES that are SIGKILLed at every named crash point
// (each step boundary, after a step's remote call but before its result is recorded, the same
// for compensations) and at random moments, on real SQLite and PostgreSQL. Judged from the
// databases: every saga ends completed or compensated, each remote effect exists exactly once,
// each completed step's compensation ran exactly once. The same checker catches a broken
// worker that sends a fresh idempotency key per attempt.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { HttpClient } from '../../src/http/index.js'
import type { SagaDefinition } from '../../src/saga/index.js'
import { createOrderSaga, type OrderInput } from '../fixtures/saga/order-saga.js'
import {
  migrateOrderServices,
  type OrderServices,
  startOrderServices,
} from '../fixtures/saga/order-services.js'
import { scaled } from '../support/scale.js'
import {
  checkOrderSagas,
  orderCrashPoints,
  runWithCrashes,
  type StartedOrder,
  startOrders,
} from './crash-harness.js'
import type { DbTarget, TestDb } from './databases.js'

const sagaCount = scaled(1_000, 100)

/** Defines the crash tests for one database engine (one file per engine, so they run in parallel). */
export function crashTests(target: DbTarget): void {
  describe(`saga crash test on ${target.dialect}`, () => {
    let sagaDb: TestDb
    let servicesDb: TestDb
    let services: OrderServices
    let client: HttpClient
    let saga: SagaDefinition<OrderInput, unknown>

    beforeAll(async () => {
      sagaDb = await target.open('saga_crash')
      servicesDb = await target.openEmpty('saga_crash_services')
      await migrateOrderServices(servicesDb.db)
      // A little latency in every call, so that random kills land inside steps.
      services = await startOrderServices(servicesDb.db, { maxDelayMs: 4 })
      ;({ saga, client } = createOrderSaga({ urls: services.urls }))
    })
    afterAll(async () => {
      await client?.close()
      await services?.close()
      await servicesDb?.close()
      await sagaDb?.close()
    })

    const env = () => ({
      SAGA_DB_URL: sagaDb.url,
      SAGA_SERVICES: JSON.stringify(services.urls),
      SAGA_LEASE_MS: '300',
      SAGA_POLL_MS: '20',
      SAGA_CONCURRENCY: '4',
    })

    it(
      `${sagaCount} sagas survive SIGKILLs at every crash point and at random`,
      async () => {
        const sagas: StartedOrder[] = await startOrders(sagaDb.db, saga, sagaCount)
        const report = await runWithCrashes({
          db: sagaDb.db,
          saga,
          sagas,
          env: env(),
          points: orderCrashPoints,
          randomKills: scaled(60, 8),
          workers: 4,
          // A cap, not a target: much of a run is worker start-up, which a loaded machine
          // stretches (80 s was reached under load 12-17 at the default scale).
          deadlineMs: scaled(600_000, 180_000),
        })
        expect([...report.covered].sort()).toEqual([...orderCrashPoints].sort())
        expect(report.randomKills).toBeGreaterThanOrEqual(scaled(60, 8))
        const violations = await checkOrderSagas(sagaDb.db, servicesDb.db, sagas)
        expect(violations).toEqual([])
        // Both outcomes happened, and crashes really forced takeovers.
        const statuses = await sagaDb.db.query<{ status: string; n: number | string }>(
          'SELECT status, COUNT(*) AS n FROM breakwater_sagas GROUP BY status ORDER BY status',
        )
        expect(statuses.map((s) => s.status)).toEqual(['compensated', 'completed'])
        const takeovers = await sagaDb.db.query<{ n: number | string }>(
          "SELECT COUNT(*) AS n FROM breakwater_saga_events WHERE kind = 'lease-expired'",
        )
        expect(Number(takeovers[0]!.n)).toBeGreaterThanOrEqual(orderCrashPoints.length)
      },
      scaled(900_000, 240_000),
    )

    it('the checker catches a worker that sends a fresh idempotency key per attempt', async () => {
      // The broken worker is killed after charge's remote call; the saga's next run charges
      // again under a fresh key, which the checker must report. On an overloaded machine that
      // next run can instead give up on charge (its attempts spent on timeouts) and compensate
      // a step of unknown outcome, which is correct and leaves one charge. A CI run under load
      // once saw no double charge, most likely for that reason (not reproduced). So the scenario runs again, on fresh sagas, up to three times, and every run's
      // violations are in the failure message.
      const seen: string[][] = []
      for (let run = 0; run < 3; run++) {
        const sagas = await startOrders(sagaDb.db, saga, 6, 500_000 + run * 1_000)
        await runWithCrashes({
          db: sagaDb.db,
          saga,
          sagas,
          env: { ...env(), SAGA_BROKEN_KEYS: '1' },
          points: ['saga:after-step-action:charge'],
          randomKills: 0,
          workers: 2,
          deadlineMs: 60_000,
        })
        const violations = await checkOrderSagas(sagaDb.db, servicesDb.db, sagas)
        seen.push(violations)
        if (violations.some((v) => /2 charge effect\(s\)/.test(v))) break
      }
      expect(seen.flat(), JSON.stringify(seen)).toEqual(
        expect.arrayContaining([expect.stringMatching(/2 charge effect\(s\)/)]),
      )
    }, 240_000)
  })
}
