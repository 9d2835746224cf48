// Fastify: what a keyed request's handler does to its reply while the response is on its way
// through onSend hooks registered after the plugin's, which are still running.
// 1. A stale handler (its lease ran out, the plugin answered the 409) that wakes up and calls
//    reply.code(201) before its (dropped) send: the 409 held by the later hook must still go
//    out as a 409.
// 2. An async handler that calls reply.send() without returning the reply: Fastify sends the
//    promise's `undefined` too when the first send has not finished (the plugin's onSend is
//    async), and that second, empty response used to go out first (`content-length: 0`, no
//    body) while the real one was recorded and only replayed.
import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyReply } from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  fastifyIdempotency,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type Gate, gate } from '../support/gate.js'
import { type Listening, listenServer, type Reply, send } from './servers.js'

let listening: Listening | undefined

afterEach(async () => {
  await listening?.close()
  listening = undefined
})

/**
 * A keyed POST whose handler stalls past its lease, so the plugin answers the 409, which an
 * onSend hook registered after the plugin holds; the stale handler then wakes, runs `stale` on
 * its reply (before the hook lets the 409 go) and sends `body`. Resolves with what the client
 * got.
 */
async function lateHookHolds409(
  stale: (reply: FastifyReply) => void,
  body: unknown,
): Promise<Reply> {
  const clock = new ManualClock(Date.now())
  const idempotency = createIdempotency({
    store: createMemoryIdempotencyStore(),
    clock,
    leaseMs: 10_000,
  })
  const app = Fastify()
  await app.register(fastifyIdempotency(idempotency))
  const held = gate()
  const entered = gate()
  // Registered after the plugin: it holds the plugin's 409 after the plugin's onSend.
  app.addHook('onSend', async (_request, _reply, payload) => {
    entered.open()
    await held.promise
    return payload
  })
  const started = gate()
  const stall: Gate = gate()
  const woke = gate()
  app.post('/charges', async (_request, reply) => {
    started.open()
    await stall.promise
    stale(reply)
    woke.open()
    return reply.send(body)
  })
  await app.ready()
  listening = await listenServer(app.server)
  const first = send(`${listening.url}/charges`, { key: randomUUID(), body: '{"a":1}' })
  await started.promise
  await clock.advance(10_000)
  // The plugin answered the 409; the later hook holds it.
  await entered.promise
  stall.open()
  await woke.promise
  held.open()
  return first
}

describe('fastify adapter, onSend hooks after the plugin', () => {
  it("keeps the lease-lost 409's status when the stale handler sets another meanwhile", async () => {
    const answer = await lateHookHolds409((reply) => reply.code(201), { ok: true })
    expect(answer.status).toBe(409)
    expect(JSON.parse(answer.text)).toMatchObject({ code: 'IDEMPOTENCY_IN_PROGRESS' })
  })

  it("keeps the lease-lost 409's headers when the stale handler changes them meanwhile", async () => {
    const answer = await lateHookHolds409((reply) => {
      reply.header('x-stale', '1')
      reply.headers({ 'x-stale-too': '2' })
      reply.type('text/html')
      reply.removeHeader('retry-after')
      reply.trailer('x-trailer', () => 'late')
    }, '<p>stale</p>')
    expect(answer.status).toBe(409)
    expect(answer.headers['content-type']).toBe('application/problem+json')
    expect(answer.headers['retry-after']).toBeDefined()
    expect(answer.headers['content-length']).toBe(String(answer.body.length))
    for (const name of ['x-stale', 'x-stale-too', 'trailer', 'transfer-encoding']) {
      expect(answer.headers[name]).toBeUndefined()
    }
    expect(JSON.parse(answer.text)).toMatchObject({ code: 'IDEMPOTENCY_IN_PROGRESS' })
  })

  it('sends the body of a handler that calls reply.send() without returning the reply', async () => {
    const idempotency = createIdempotency({ store: createMemoryIdempotencyStore() })
    const app = Fastify()
    await app.register(fastifyIdempotency(idempotency))
    app.post('/charges', async (_request, reply) => {
      reply.code(201).send({ ok: true })
    })
    await app.ready()
    listening = await listenServer(app.server)
    const key = randomUUID()
    const first = await send(`${listening.url}/charges`, { key, body: '{"a":1}' })
    expect(first.status).toBe(201)
    expect(first.text).toBe('{"ok":true}')
    const replay = await send(`${listening.url}/charges`, { key, body: '{"a":1}' })
    expect(replay.text).toBe('{"ok":true}')
  })
})
