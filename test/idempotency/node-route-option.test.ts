// idempotentHandler's `route` option names the request target the fingerprint hashes. A route
// function that returns no string (a missing `return`, an async function) was hashed as the
// text "undefined" or "[object Promise]", the same for every request: a key reused on another
// route was replayed the first route's response instead of answered 422. Such a value now fails
// the request before anything is stored, as a bad scope does: 500, INVALID_OPTION naming route.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { afterEach, expect, it } from 'vitest'
import { createIdempotency, idempotentHandler } from '../../src/idempotency/index.js'
import { sqliteDb, type TestDb } from './databases.js'
import { type Listening, listen, send } from './servers.js'

let testDb: TestDb | undefined
let listening: Listening | undefined

afterEach(async () => {
  await listening?.close()
  listening = undefined
  await testDb?.close()
  testDb = undefined
})

it.each([
  ['undefined (a missing return)', (req: IncomingMessage) => void req.url],
  ['a promise (an async function)', async (req: IncomingMessage) => req.url ?? '/'],
])('fails a request whose route function returns %s, storing nothing', async (_name, route) => {
  testDb = await sqliteDb.open('idem_route_option')
  const errors: unknown[] = []
  let runs = 0
  listening = await listen(
    idempotentHandler(
      {
        idempotency: createIdempotency({ store: testDb.db }),
        route: route as unknown as (req: IncomingMessage) => string,
        onError: (error) => errors.push(error),
      },
      (_req, res) => {
        runs++
        res.writeHead(201).end(`made ${runs}`)
      },
    ),
  )
  const key = randomUUID()
  const charge = await send(`${listening.url}/charges`, { key, body: '{}' })
  const refund = await send(`${listening.url}/refunds`, { key, body: '{}' })
  expect([charge.status, refund.status]).toEqual([500, 500])
  expect(refund.headers['idempotent-replayed']).toBeUndefined()
  expect(runs).toBe(0)
  expect(errors).toEqual([
    expect.objectContaining({ code: 'INVALID_OPTION', option: 'route' }),
    expect.objectContaining({ code: 'INVALID_OPTION', option: 'route' }),
  ])
})
