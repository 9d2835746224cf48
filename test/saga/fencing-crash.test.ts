// Two worker processes on one saga, on real SQLite and PostgreSQL: worker A is paused with
// SIGSTOP inside a step (after its remote call), worker B takes the saga over past A's lease
// and finishes it, then A is resumed with SIGCONT and its step goes on. A's writes are refused
// by the lease token (fencing): it reports the loss, the saga keeps B's outcome, and the
// remote effect exists once (B repeated the call with the same idempotency key).
//
// Nothing here races real time. A's hold in the step ends on SIGUSR2, not after a duration (a
// 1.5 s hold ended before the SIGSTOP under load). A's lease is far longer than the test may
// run (a 400 ms lease ran out under load before the SIGSTOP, and A took its own saga over), and
// B's clock runs further ahead than that lease: B sees A's lease run out as soon as it starts,
// as a worker on a skewed host would.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { HttpClient } from '../../src/http/index.js'
import { getSaga, getSagaTimeline, type SagaDefinition, startSaga } from '../../src/saga/index.js'
import { createOrderSaga, type OrderInput, orderInput } from '../fixtures/saga/order-saga.js'
import {
  effectsOf,
  migrateOrderServices,
  type OrderServices,
  startOrderServices,
} from '../fixtures/saga/order-services.js'
import { until } from '../support/until.js'
import { spawnWorker, stopWorkers, type WorkerProcess } from './crash-harness.js'
import { dbTargets, type TestDb } from './databases.js'

/** A's lease: longer than the test's timeout, so it cannot run out while A is meant to hold it. */
const leaseMsA = 600_000
/** How far B's clock runs ahead: past all of A's lease. */
const aheadMsB = 2 * leaseMsA

/**
 * Polls until `check` holds. No deadline of its own: the test's timeout bounds the wait, so a
 * loaded machine is slower, never wrong.
 */
const whenever = (what: string, check: () => Promise<boolean> | boolean) =>
  until(check, what, Number.POSITIVE_INFINITY, 20)

describe.each(dbTargets)('fencing of a paused worker on $dialect', (target) => {
  let sagaDb: TestDb
  let servicesDb: TestDb
  let services: OrderServices
  let client: HttpClient
  let saga: SagaDefinition<OrderInput, unknown>
  const workers: WorkerProcess[] = []

  beforeAll(async () => {
    sagaDb = await target.open('saga_fence')
    servicesDb = await target.openEmpty('saga_fence_services')
    await migrateOrderServices(servicesDb.db)
    services = await startOrderServices(servicesDb.db)
    ;({ saga, client } = createOrderSaga({ urls: services.urls }))
  })
  afterAll(async () => {
    for (const w of workers) if (w.child.signalCode === null) w.child.kill('SIGCONT')
    await stopWorkers(workers)
    await client?.close()
    await services?.close()
    await servicesDb?.close()
    await sagaDb?.close()
  })

  it('refuses the stale worker’s writes after SIGSTOP past its lease and SIGCONT', async () => {
    const orderId = randomUUID()
    const { id } = await startSaga(sagaDb.db, saga, orderInput(orderId))
    const env = {
      SAGA_DB_URL: sagaDb.url,
      SAGA_SERVICES: JSON.stringify(services.urls),
      SAGA_LEASE_MS: String(leaseMsA),
      SAGA_POLL_MS: '20',
    }
    // A claims the saga at once, then polls no more: on SQLite a SIGSTOP that lands while A
    // holds the write lock (a claim every 20 ms, slower under load) leaves B no way to write
    // until SIGCONT, and the test hung (fresh-clone CI, sqlite, 60 s timeout).
    const a = spawnWorker({
      ...env,
      SAGA_WORKER_ID: 'A',
      SAGA_HOLD: 'charge',
      SAGA_POLL_MS: String(leaseMsA),
    })
    workers.push(a)
    // A is inside "charge": the payment went through, its result is not recorded yet (A holds
    // there until SIGUSR2).
    await whenever('A to charge', async () =>
      (await effectsOf(servicesDb.db, orderId)).includes('charge'),
    )
    a.child.kill('SIGSTOP')
    const held = await getSaga(sagaDb.db, id)
    expect(held).toMatchObject({ leaseOwner: 'A', stepIndex: 1 })

    const b = spawnWorker({ ...env, SAGA_WORKER_ID: 'B', SAGA_CLOCK_AHEAD_MS: String(aheadMsB) })
    workers.push(b)
    await whenever(
      'B to finish the saga',
      async () => (await getSaga(sagaDb.db, id))?.status === 'completed',
    )
    const finished = await getSaga(sagaDb.db, id)
    expect(finished!.leaseToken).toBeGreaterThan(held!.leaseToken)

    a.child.kill('SIGCONT')
    a.child.kill('SIGUSR2') // A's charge call returns; A goes on to record it
    await whenever('A to notice', () => a.lines.some((l) => l.type === 'lease-lost'))
    const lost = a.lines.find((l) => l.type === 'lease-lost')!
    expect(lost).toMatchObject({ sagaId: id, worker: 'A' })
    expect(['write-refused', 'renewal-refused']).toContain(lost.reason)
    expect(a.child.exitCode).toBeNull() // A is alive and well, just no longer in charge
    // Give A every chance to write something after all: a graceful stop waits for its runs.
    a.child.kill('SIGTERM')
    expect(await a.exited).toEqual({ code: 0, signal: null })
    expect(a.lines.at(-1)).toEqual({ type: 'stopped' })

    expect(await getSaga(sagaDb.db, id)).toEqual(finished)
    const timeline = await getSagaTimeline(sagaDb.db, id)
    const takeover = timeline.findIndex((e) => e.kind === 'lease-expired')
    expect(timeline[takeover]).toMatchObject({ worker: 'B', detail: { previousOwner: 'A' } })
    expect(timeline.slice(takeover).every((e) => e.worker === 'B')).toBe(true)
    expect(timeline.slice(0, takeover).map((e) => `${e.kind}:${e.step}:${e.worker}`)).toEqual([
      'step-completed:reserve:A',
    ])
    // B repeated the charge with the step's idempotency key: the service replayed the recorded
    // answer without running its handler again, so there is no second charge.
    expect(b.lines).toContainEqual(
      expect.objectContaining({ type: 'step-started', step: 'charge', attempt: 2 }),
    )
    expect(services.requests.get('payments /charges')).toBe(1)
    expect(await effectsOf(servicesDb.db, orderId)).toEqual(['reserve', 'charge', 'ship'])
    // Two worker processes start and one saga runs: 1.5 s alone, 8-12 s at load 14 (measured).
  }, 60_000)
})
