// Saga ids are one namespace across every definition. A start with an id an instance of another
// saga held resolved with `created: false`, as for a repeated start of the same saga, so the
// new saga never ran, and worker.run() reported the other saga's state as its outcome. And
// worker.run() given another definition object of a registered name and version ran the
// registered one's steps. Found by exploratory testing.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  SagaStateConflictError,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('saga ids across definitions on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_id_namespace')
  })
  afterAll(async () => {
    await t?.close()
  })

  const ran: string[] = []
  const define = (name: string, version: number, steps: readonly string[]) =>
    defineSaga({
      name,
      version,
      steps: steps.map((step) => ({
        name: step,
        action: async ({ sagaId }: { readonly sagaId: string }) => {
          ran.push(`${name}@${version}:${step}:${sagaId}`)
          return { [step]: version }
        },
      })),
    })
  const names = () => {
    const suffix = randomUUID().slice(0, 8)
    return { order: `order-${suffix}`, ship: `ship-${suffix}` }
  }

  it('startSaga refuses an id an instance of another saga holds, naming it', async () => {
    const { order, ship } = names()
    const orderSaga = define(order, 1, ['a'])
    const shipSaga = define(ship, 1, ['b'])
    const id = `o-${randomUUID()}`
    expect(await startSaga(t.db, orderSaga, null, { id })).toEqual({ id, created: true })
    const refused = await startSaga(t.db, shipSaga, null, { id }).catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(SagaStateConflictError)
    expect(refused).toMatchObject({ code: 'SAGA_STATE_CONFLICT', sagaId: id, status: 'running' })
    expect((refused as Error).message).toContain(`"${order}" version 1`)
    expect((refused as Error).message).toContain(`"${ship}"`)
    expect(await getSaga(t.db, id)).toMatchObject({ name: order, version: 1 })
    // The same saga again is still the idempotent start.
    expect(await startSaga(t.db, orderSaga, null, { id })).toEqual({ id, created: false })
  })

  it('a start under another version of the same saga is that saga: created false', async () => {
    const { order } = names()
    const id = `o-${randomUUID()}`
    await startSaga(t.db, define(order, 1, ['a']), null, { id })
    expect(await startSaga(t.db, define(order, 2, ['a', 'b']), null, { id })).toEqual({
      id,
      created: false,
    })
    expect(await getSaga(t.db, id)).toMatchObject({ name: order, version: 1 })
  })

  it('refuses inside the caller transaction, which then rolls back', async () => {
    const { order, ship } = names()
    const id = `o-${randomUUID()}`
    await startSaga(t.db, define(order, 1, ['a']), null, { id })
    const other = `o-${randomUUID()}`
    const refused = await t.db
      .transaction(async (tx) => {
        await startSaga(tx, define(order, 1, ['a']), null, { id: other })
        await startSaga(tx, define(ship, 1, ['b']), null, { id })
      })
      .catch((e: unknown) => e)
    expect(refused).toMatchObject({ code: 'SAGA_STATE_CONFLICT' })
    expect(await getSaga(t.db, other)).toBeUndefined()
  })

  it("worker.run refuses an id another saga's instance holds, running nothing", async () => {
    const { order, ship } = names()
    const orderSaga = define(order, 1, ['a'])
    const shipSaga = define(ship, 1, ['b'])
    const id = `o-${randomUUID()}`
    await startSaga(t.db, orderSaga, null, { id })
    const worker = createSagaWorker({ db: t.db, sagas: [shipSaga], clock: new ManualClock(0) })
    try {
      const refused = await worker.run(shipSaga, null, { id }).catch((e: unknown) => e)
      expect(refused).toBeInstanceOf(SagaStateConflictError)
      expect((refused as Error).message).toContain(`"${order}" version 1`)
      // The same saga's id is still reported as it stands.
      const own = `s-${randomUUID()}`
      await worker.run(shipSaga, null, { id: own })
      expect(await worker.run(shipSaga, null, { id: own })).toMatchObject({
        id: own,
        created: false,
        status: 'completed',
        context: { b: 1 },
      })
    } finally {
      await worker.stop()
    }
    expect(ran.filter((r) => r.endsWith(`:${id}`))).toEqual([])
    expect(await getSaga(t.db, id)).toMatchObject({ name: order, status: 'running' })
  })

  it('worker.run refuses a definition that is not the registered object of its name and version', async () => {
    const { order } = names()
    const registered = define(order, 1, ['a', 'b'])
    const other = define(order, 1, ['x', 'y', 'z'])
    const worker = createSagaWorker({ db: t.db, sagas: [registered], clock: new ManualClock(0) })
    const id = `o-${randomUUID()}`
    try {
      const refused = await worker.run(other, null, { id }).catch((e: unknown) => e)
      expect(refused).toMatchObject({ code: 'INVALID_OPTION' })
      expect((refused as Error).message).toMatch(/^definition: /)
      expect((refused as Error).message).toContain(`${order}@1`)
    } finally {
      await worker.stop()
    }
    expect(await getSaga(t.db, id)).toBeUndefined()
    expect(ran.filter((r) => r.endsWith(`:${id}`))).toEqual([])
  })
})
