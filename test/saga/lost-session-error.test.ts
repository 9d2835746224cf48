// A saga step's transaction whose session the server ends (pg_terminate_backend from a second
// connection) while its atCommit work runs outside SQL: the state write after it fails with
// pg's bare "Client has encountered a connection error and is not queryable". The worker's
// `error` event carries only the error's name, message and code (no cause), so it said the
// connection failed and nothing of why (57P01, "terminating connection due to administrator
// command"); the driver now names the server's reason in the message.
import { randomUUID } from 'node:crypto'
import pg from 'pg'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createSagaWorker, defineSaga, type SagaEvent } from '../../src/saga/index.js'
import { terminateSessionOf } from '../support/terminated-session.js'
import { until } from '../support/until.js'
import { postgresDb, type TestDb } from './databases.js'

let t: TestDb
let admin: pg.Client
beforeAll(async () => {
  t = await postgresDb.open('saga_lost_session_error')
  admin = new pg.Client({ connectionString: t.url })
  await admin.connect()
})
afterAll(async () => {
  await admin?.end()
  await t?.close()
})

it("names the server's reason in the error event of a run whose session was ended", async () => {
  let terminate = true
  const saga = defineSaga({
    name: `lost-${randomUUID().slice(0, 8)}`,
    version: 1,
    steps: [
      {
        name: 'write',
        action: async (ctx) => {
          ctx.atCommit(async (tx) => {
            if (!terminate) return
            terminate = false
            await terminateSessionOf(tx, admin)
          })
        },
      },
    ],
  })
  const events: SagaEvent[] = []
  const worker = createSagaWorker({ db: t.db, sagas: [saga], listen: false })
  worker.events.on((e) => events.push(e))
  await worker.start()
  try {
    void worker.run(saga, {}).catch(() => {})
    await until(() => events.some((e) => e.type === 'error'), 'the error event')
  } finally {
    await worker.stop()
  }
  const error = events.find((e) => e.type === 'error')
  expect(error).toMatchObject({ phase: 'run', step: 'write' })
  const { message } = (error as { error: { message: string } }).error
  expect(message).toMatch(/not queryable/)
  expect(message).toContain('terminating connection due to administrator command (SQLSTATE 57P01)')
})
