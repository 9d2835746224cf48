// Fastify 5 lets a handler answer with a fetch Response (status, headers and body in one
// object). The plugin records and replays what is sent: the Response's status, headers and body
// bytes, not the reply's defaults and the text "[object Response]".
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import { afterEach, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  fastifyIdempotency,
} from '../../src/idempotency/index.js'
import { type Listening, listenServer, send } from './servers.js'

let listening: Listening | undefined

afterEach(async () => {
  await listening?.close()
  listening = undefined
})

it('records and replays a fetch Response returned by the handler', async () => {
  const idempotency = createIdempotency({ store: createMemoryIdempotencyStore() })
  const app = Fastify()
  await app.register(fastifyIdempotency(idempotency))
  let runs = 0
  app.post('/charges', async () => {
    runs++
    return new Response(JSON.stringify({ charged: runs }), {
      status: 201,
      headers: { 'content-type': 'application/json', location: '/charges/1' },
    })
  })
  await app.ready()
  listening = await listenServer(app.server)
  const key = randomUUID()
  const first = await send(`${listening.url}/charges`, { key, body: '{"a":1}' })
  expect(first.status).toBe(201)
  expect(first.text).toBe('{"charged":1}')
  expect(first.headers.location).toBe('/charges/1')
  const replay = await send(`${listening.url}/charges`, { key, body: '{"a":1}' })
  expect(replay.status).toBe(201)
  expect(replay.text).toBe('{"charged":1}')
  expect(replay.headers['content-type']).toBe('application/json')
  expect(replay.headers.location).toBe('/charges/1')
  expect(replay.headers['idempotent-replayed']).toBe('true')
  expect(runs).toBe(1)
})

// A recorded response without a body or a Content-Type (a redirect) was replayed as a Buffer
// payload, for which Fastify adds `content-type: application/octet-stream`: the replay carried
// a header the first response did not have.
it('replays a response without body or Content-Type without adding one', async () => {
  const idempotency = createIdempotency({ store: createMemoryIdempotencyStore() })
  const app = Fastify()
  await app.register(fastifyIdempotency(idempotency))
  let runs = 0
  app.post('/charges', async (_request, reply) => {
    runs++
    return reply.redirect('/charges/1', 303)
  })
  await app.ready()
  listening = await listenServer(app.server)
  const key = randomUUID()
  const first = await send(`${listening.url}/charges`, { key, body: '{"a":1}' })
  const replay = await send(`${listening.url}/charges`, { key, body: '{"a":1}' })
  expect(first.headers['content-type']).toBeUndefined()
  expect(replay.headers['idempotent-replayed']).toBe('true')
  expect([replay.status, replay.headers.location]).toEqual([303, '/charges/1'])
  expect(replay.headers['content-type']).toBeUndefined()
  expect(replay.headers['content-length']).toBe('0')
  expect(runs).toBe(1)
})
