// A Fastify content-type parser may leave the body unparsed for the handler to stream from
// request.raw (a multipart parser does): request.body is then undefined though the request has
// a body. Fingerprinted as empty, a key reused with another upload was replayed the first
// upload's response instead of answered 422. Such a keyed request is refused as the node:http
// and Express adapters refuse a body they cannot read: 500, IDEMPOTENCY_BODY_UNAVAILABLE to
// Fastify's error handling, nothing run or stored.
import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import { afterEach, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  fastifyIdempotency,
  type IdempotencyOptions,
} from '../../src/idempotency/index.js'
import { type Listening, listenServer, send } from './servers.js'

let listening: Listening | undefined

afterEach(async () => {
  await listening?.close()
  listening = undefined
})

// An upload route whose parser leaves the stream to the handler, as @fastify/multipart's does,
// or (`passStream`) hands the payload stream on as request.body.
async function uploads(
  options: Partial<IdempotencyOptions> = {},
  passStream = false,
): Promise<{ app: FastifyInstance; runs: () => number; errors: unknown[] }> {
  const app = Fastify()
  app.addContentTypeParser('application/octet-stream', (_request, payload, done) =>
    passStream ? done(null, payload) : done(null),
  )
  await app.register(
    fastifyIdempotency(createIdempotency({ store: createMemoryIdempotencyStore(), ...options })),
  )
  const errors: unknown[] = []
  app.setErrorHandler((error, _request, reply) => {
    errors.push(error)
    void reply.code(500).send({ failed: true })
  })
  let runs = 0
  app.post('/uploads', async (request) => {
    runs++
    const chunks: Buffer[] = []
    const stream = (request.body ?? request.raw) as AsyncIterable<Buffer>
    for await (const chunk of stream) chunks.push(chunk)
    return { stored: Buffer.concat(chunks).toString() }
  })
  await app.ready()
  await listening?.close()
  listening = await listenServer(app.server)
  return { app, runs: () => runs, errors }
}

const upload = (key: string | undefined, body: string | undefined) =>
  send(`${listening!.url}/uploads`, {
    ...(key === undefined ? {} : { key }),
    ...(body === undefined ? {} : { body }),
    headers: { 'content-type': 'application/octet-stream' },
  })

it('refuses a keyed request whose body the parser left unparsed, running nothing', async () => {
  const { runs, errors } = await uploads()
  const key = randomUUID()
  const first = await upload(key, 'first file')
  const second = await upload(key, 'another file')
  expect([first.status, second.status]).toEqual([500, 500])
  expect(second.headers['idempotent-replayed']).toBeUndefined()
  expect(runs()).toBe(0)
  expect(errors).toEqual([
    expect.objectContaining({ code: 'IDEMPOTENCY_BODY_UNAVAILABLE' }),
    expect.objectContaining({ code: 'IDEMPOTENCY_BODY_UNAVAILABLE' }),
  ])
})

it('still runs such a request without a key when keys are optional, and one without a body', async () => {
  const { runs, errors } = await uploads({ required: false })
  const unkeyed = await upload(undefined, 'a file')
  expect(unkeyed.status).toBe(200)
  expect(unkeyed.text).toBe('{"stored":"a file"}')
  const key = randomUUID()
  const empty = await upload(key, undefined)
  expect(empty.status).toBe(200)
  expect((await upload(key, undefined)).headers['idempotent-replayed']).toBe('true')
  expect(runs()).toBe(2)
  expect(errors).toEqual([])
})

it('still runs it when the fingerprint does not read the body', async () => {
  const { runs } = await uploads({ fingerprint: (request) => `${request.method} ${request.route}` })
  const key = randomUUID()
  expect((await upload(key, 'a file')).text).toBe('{"stored":"a file"}')
  expect((await upload(key, 'a file')).headers['idempotent-replayed']).toBe('true')
  expect(runs()).toBe(1)
})

// Fastify's other idiom for a raw body: the parser hands the payload stream on as request.body.
// Hashed as JSON, the stream's object graph (circular through its socket) failed every keyed
// request with a bare RangeError (Maximum call stack size exceeded).
it('refuses a keyed request whose parser handed on the payload stream as request.body', async () => {
  const { runs, errors } = await uploads({}, true)
  const response = await upload(randomUUID(), 'a file')
  expect(response.status).toBe(500)
  expect(runs()).toBe(0)
  expect(errors).toEqual([expect.objectContaining({ code: 'IDEMPOTENCY_BODY_UNAVAILABLE' })])
  // Without a key (keys optional) the handler still reads that stream.
  const { runs: unkeyedRuns } = await uploads({ required: false }, true)
  expect((await upload(undefined, 'a file')).text).toBe('{"stored":"a file"}')
  expect(unkeyedRuns()).toBe(1)
})
