// The Express adapter answers 500 when the result cannot be recorded (a deferred write failed,
// the database is down): Express cannot render that error any more (the handler's response went
// through res.end), so the adapter must report it, as idempotentHandler does, not drop it.
import { randomUUID } from 'node:crypto'
import { createServer } from 'node:http'
import express from 'express'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  expressIdempotency,
  idempotencyContextOf,
} from '../../src/idempotency/index.js'
import { dbTargets, type TestDb } from './databases.js'
import { type Listening, listenServer, send } from './servers.js'

describe.each(dbTargets)('express: a result that cannot be recorded, on $dialect', (db) => {
  let testDb: TestDb
  let listening: Listening | undefined

  beforeAll(async () => {
    testDb = await db.open('idem_express_errors')
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it('is answered 500 and reported to onError; the key is released', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    const errors: unknown[] = []
    let runs = 0
    const app = express()
    app.use(express.json())
    app.post(
      '/',
      expressIdempotency(idempotency, { onError: (error) => errors.push(error) }),
      (req, res) => {
        runs++
        idempotencyContextOf(req)!.deferWrite('INSERT INTO no_such_table (id) VALUES ($1)', [1])
        res.status(201).json({ ok: true })
      },
    )
    listening = await listenServer(createServer(app))
    const key = randomUUID()
    expect((await send(`${listening.url}/`, { key, body: '{}' })).status).toBe(500)
    expect(errors).toHaveLength(1)
    expect(String(errors[0])).toMatch(/no_such_table/)
    expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
    expect(runs).toBe(1)
  })

  it('refuses an onError that is not a function at construction', () => {
    const idempotency = createIdempotency({ store: testDb.db })
    expect(() => expressIdempotency(idempotency, { onError: 'log' as never })).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION', option: 'onError' }),
    )
  })
})
