// The order saga (reserve inventory -> charge payment -> create shipment) against real local
// HTTP services built with the idempotency middleware, on real SQLite and PostgreSQL: a
// failure at each step gives the right compensations, in reverse order.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { HttpClient } from '../../src/http/index.js'
import {
  createSagaWorker,
  getSaga,
  getSagaTimeline,
  type SagaDefinition,
  type SagaEvent,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { createOrderSaga, type OrderInput, orderInput } from '../fixtures/saga/order-saga.js'
import {
  effectsOf,
  migrateOrderServices,
  type OrderServices,
  startOrderServices,
} from '../fixtures/saga/order-services.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('the order saga on $dialect', (target) => {
  let sagaDb: TestDb
  let servicesDb: TestDb
  let services: OrderServices
  let client: HttpClient
  let saga: SagaDefinition<
    OrderInput,
    { reservationId: string; chargeId: string; shipmentId: string }
  >

  beforeAll(async () => {
    sagaDb = await target.open('saga_order')
    servicesDb = await target.openEmpty('saga_order_services')
    await migrateOrderServices(servicesDb.db)
    services = await startOrderServices(servicesDb.db, {
      transientFailures: { 'payments /charges': 0 },
    })
    ;({ saga, client } = createOrderSaga({
      urls: services.urls,
      retry: { maxAttempts: 3, baseDelayMs: 1_000, jitter: 'none' },
    }))
  })
  afterAll(async () => {
    await client?.close()
    await services?.close()
    await servicesDb?.close()
    await sagaDb?.close()
  })

  function newWorker(clock = new ManualClock(Date.now())) {
    return createSagaWorker({ db: sagaDb.db, sagas: [saga], clock, workerId: 'w1' })
  }

  it('completes every step once when nothing fails', async () => {
    const orderId = randomUUID()
    const outcome = await newWorker().run(saga, orderInput(orderId))
    expect(outcome.status).toBe('completed')
    expect(outcome.context).toEqual({
      reservationId: `res-${orderId}`,
      chargeId: `ch-${orderId}`,
      shipmentId: `sh-${orderId}`,
    })
    expect(await effectsOf(servicesDb.db, orderId)).toEqual(['reserve', 'charge', 'ship'])
  })

  it.each([
    ['reserve', [], 'step "reserve" failed'],
    ['charge', ['reserve', 'release'], 'step "charge" failed'],
    ['ship', ['reserve', 'charge', 'refund', 'release'], 'step "ship" failed'],
  ] as const)(
    'a failure at %s compensates the completed steps in reverse order',
    async (failAt, effects, reason) => {
      const orderId = randomUUID()
      const outcome = await newWorker().run(saga, orderInput(orderId, failAt))
      expect(outcome.status).toBe('compensated')
      expect(outcome.reason).toContain(reason)
      expect(await effectsOf(servicesDb.db, orderId)).toEqual(effects)
      const instance = await getSaga(sagaDb.db, outcome.id)
      const statuses = instance!.steps.map((s) => s.status)
      const failedIndex = ['reserve', 'charge', 'ship'].indexOf(failAt)
      expect(statuses[failedIndex]).toBe('failed')
      expect(statuses.slice(0, failedIndex).every((s) => s === 'compensated')).toBe(true)
      // A business refusal (4xx) is permanent: one attempt, no retry.
      expect(instance!.steps[failedIndex]!.attempts).toBe(1)
      expect(instance!.steps[failedIndex]!.error?.status).toBeGreaterThanOrEqual(400)
      const kinds = (await getSagaTimeline(sagaDb.db, outcome.id)).map((e) =>
        e.step === undefined ? e.kind : `${e.kind}:${e.step}`,
      )
      const compensations = kinds.filter((k) => k?.startsWith('compensation-completed'))
      expect(compensations).toEqual(
        [...effects]
          .filter((e) => e === 'release' || e === 'refund')
          .map((e) =>
            e === 'refund' ? 'compensation-completed:charge' : 'compensation-completed:reserve',
          ),
      )
    },
  )

  it('retries a transient failure (503) after persisted backoff delays, then completes', async () => {
    const flaky = await startOrderServices(servicesDb.db, {
      transientFailures: { 'payments /charges': 2 },
    })
    const { saga: flakySaga, client: flakyClient } = createOrderSaga({
      urls: flaky.urls,
      version: 2,
      retry: { maxAttempts: 3, baseDelayMs: 1_000, jitter: 'none' },
    })
    try {
      const clock = new ManualClock(Date.now())
      const worker = createSagaWorker({ db: sagaDb.db, sagas: [flakySaga], clock })
      const events: SagaEvent[] = []
      worker.events.on((e) => events.push(e))
      const orderId = randomUUID()
      const first = await worker.run(flakySaga, orderInput(orderId))
      expect(first.status).toBe('running')
      const retryAt = events.find((e) => e.type === 'step-failed')?.retryAt
      expect(retryAt).toBe(clock.now() + 1_000)
      expect(await worker.poll()).toBe(0) // the retry is not due yet
      await clock.advance(1_000)
      expect(await worker.poll()).toBe(1) // attempt 2: 503 again, next delay 2 s
      expect(await worker.poll()).toBe(0)
      await clock.advance(2_000)
      expect(await worker.poll()).toBe(1)
      const instance = await getSaga(sagaDb.db, first.id)
      expect(instance!.status).toBe('completed')
      expect(instance!.steps[1]!.attempts).toBe(3)
      expect(flaky.requests.get('payments /charges')).toBe(3)
      expect(await effectsOf(servicesDb.db, orderId)).toEqual(['reserve', 'charge', 'ship'])
    } finally {
      await flakyClient.close()
      await flaky.close()
    }
  })

  it('starts in the caller’s transaction: a rollback starts nothing, a commit starts the saga', async () => {
    await sagaDb.db.execute('CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)')
    const rolledBack = randomUUID()
    await expect(
      sagaDb.db.transaction(async (tx) => {
        await tx.execute('INSERT INTO orders (id) VALUES ($1)', [rolledBack])
        await startSaga(tx, saga, orderInput(rolledBack), { id: `order-${rolledBack}` })
        throw new Error('business rule says no')
      }),
    ).rejects.toThrow('business rule says no')
    expect(await getSaga(sagaDb.db, `order-${rolledBack}`)).toBeUndefined()

    const orderId = randomUUID()
    await sagaDb.db.transaction(async (tx) => {
      await tx.execute('INSERT INTO orders (id) VALUES ($1)', [orderId])
      await startSaga(tx, saga, orderInput(orderId), { id: `order-${orderId}` })
    })
    // Starting again with the same id is a no-op (a retried "place order" request).
    expect(
      await startSaga(sagaDb.db, saga, orderInput(orderId), { id: `order-${orderId}` }),
    ).toEqual({
      id: `order-${orderId}`,
      created: false,
    })
    const worker = createSagaWorker({ db: sagaDb.db, sagas: [saga], pollIntervalMs: 10 })
    await worker.start()
    try {
      await expect
        .poll(async () => (await getSaga(sagaDb.db, `order-${orderId}`))?.status, {
          timeout: 10_000,
        })
        .toBe('completed')
    } finally {
      await worker.stop()
    }
    expect(await effectsOf(servicesDb.db, orderId)).toEqual(['reserve', 'charge', 'ship'])
  })
})
