// `problemTypeBase` took any string: 'problems/' (relative), 'https://example.com/problems'
// (no trailing slash: types came out as .../problemsidempotency-key-missing), 'urn:...', '' or
// text with spaces went out as the `type` of every problem+json answer. It must now be an
// absolute http or https URL ending in '/' (the names become its last path segment) or '#'
// (they become its fragment); anything else is refused when the protocol is made, naming the
// option and what is wrong. The adapters take no base of their own: they render the one of
// the Idempotency they are given, so this one check covers all of them.
import { createAdaptorServer } from '@hono/node-server'
import express from 'express'
import Fastify from 'fastify'
import { Hono } from 'hono'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  expressIdempotency,
  fastifyIdempotency,
  honoIdempotency,
  type Idempotency,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { type Listening, listen, listenServer, send } from './servers.js'

const withBase = (problemTypeBase: unknown) =>
  createIdempotency({
    store: createMemoryIdempotencyStore(),
    problemTypeBase: problemTypeBase as string,
  })

/** The error `createIdempotency` throws for `problemTypeBase`, or undefined. */
function refusal(problemTypeBase: unknown): InvalidOptionError | undefined {
  try {
    withBase(problemTypeBase)
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidOptionError)
    return error as InvalidOptionError
  }
  return undefined
}

/** The `type` of the 400 problem a keyless POST gets from `idempotency`'s own rendering. */
async function missingKeyType(idempotency: Idempotency): Promise<string> {
  const begun = await idempotency.begin({
    method: 'POST',
    route: '/pay',
    header: () => undefined,
    body: new Uint8Array(0),
  })
  if (begun.kind !== 'respond') throw new Error(`expected respond, got ${begun.kind}`)
  return (JSON.parse(Buffer.from(begun.response.body).toString('utf8')) as { type: string }).type
}

describe('the problemTypeBase option', () => {
  it.each([
    ['problems/', /absolute http or https URL/],
    ['/problems/', /absolute http or https URL/],
    ['//example.com/problems/', /absolute http or https URL/],
    ['', /absolute http or https URL/],
    ['ftp://example.com/problems/', /absolute http or https URL/],
    ['urn:example:problems:', /absolute http or https URL/],
    ['tag:example.com,2024:problems/', /absolute http or https URL/],
    ['https:/example.com/problems/', /absolute http or https URL/],
    ['https:///problems/', /absolute http or https URL/],
    ['https://example.com/problems', /ending in '\/' or '#'/],
    ['https://example.com', /ending in '\/' or '#'/],
    ['https://example.com/problems/?v=1/', /without a query/],
    ['https://example.com/problems?type=', /without a query/],
    ['https://example.com/errors#x/', /'#' only as its last character/],
    ['https://exa mple.com/problems/', /URI characters/],
    ['https://example.com/pröblems/', /URI characters/],
    ['https://example.com/"problems"/', /URI characters/],
    ['https://example.com/%zz/', /URI characters/],
    ['https://example.com/problems/\n', /URI characters/],
  ])('refuses %j, naming the option and saying what is wrong', (base, reason) => {
    const error = refusal(base)
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'problemTypeBase', value: base })
    expect(error?.message).toMatch(/^problemTypeBase: /)
    expect(error?.message).toMatch(reason)
  })

  it.each([7, null, ['https://example.com/'], { href: 'https://example.com/' }])(
    'refuses %j, which is not a string',
    (base) => {
      expect(refusal(base)).toMatchObject({ code: 'INVALID_OPTION', option: 'problemTypeBase' })
    },
  )

  it.each([
    'https://breakwater.dev/problems/',
    'https://example.com/',
    'https://api.example.com/v1/problems/',
    'http://localhost:8080/errors/',
    'HTTPS://Example.COM/Problems/',
    'https://example.com/docs/errors#',
    'https://example.com/%7Eteam/problems/',
  ])('takes %j; the type is the base followed by the name', async (base) => {
    expect(refusal(base)).toBeUndefined()
    expect(await missingKeyType(withBase(base))).toBe(`${base}idempotency-key-missing`)
  })

  it('left out, is https://breakwater.dev/problems/', async () => {
    expect(await missingKeyType(withBase(undefined))).toBe(
      'https://breakwater.dev/problems/idempotency-key-missing',
    )
  })
})

describe('every adapter renders the one checked base', () => {
  const base = 'https://api.example.com/problems/'
  const expected = `${base}idempotency-key-missing`
  let listening: Listening | undefined
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it('takes no base of its own: problemTypeBase is an unknown adapter option', () => {
    const idempotency = withBase(base)
    const extra = { problemTypeBase: 'problems/' } as never
    const h = () => {}
    for (const make of [
      () => idempotentHandler({ idempotency, ...(extra as object) } as never, h),
      () => expressIdempotency(idempotency, extra),
      () => fastifyIdempotency(idempotency, extra),
      () => honoIdempotency(idempotency, extra),
    ]) {
      expect(make).toThrow(expect.objectContaining({ code: 'INVALID_OPTION' }))
    }
  })

  it('node:http', async () => {
    listening = await listen(idempotentHandler({ idempotency: withBase(base) }, () => {}))
    const reply = await send(`${listening.url}/pay`, { body: '{}' })
    expect(reply.status).toBe(400)
    expect(JSON.parse(reply.text).type).toBe(expected)
  })

  it('Express', async () => {
    const app = express()
    app.post('/pay', express.json(), expressIdempotency(withBase(base)), (_req, res) => {
      res.status(201).end()
    })
    listening = await listen(app)
    const reply = await send(`${listening.url}/pay`, { body: '{}' })
    expect(reply.status).toBe(400)
    expect(JSON.parse(reply.text).type).toBe(expected)
  })

  it('Fastify', async () => {
    const app = Fastify()
    await app.register(fastifyIdempotency(withBase(base)))
    app.post('/pay', async (_request, reply) => reply.code(201).send({}))
    try {
      const reply = await app.inject({
        method: 'POST',
        url: '/pay',
        payload: {},
      })
      expect(reply.statusCode).toBe(400)
      expect(reply.json().type).toBe(expected)
    } finally {
      await app.close()
    }
  })

  it('Hono', async () => {
    const app = new Hono()
    app.post('/pay', honoIdempotency(withBase(base)), (c) => c.json({}, 201))
    listening = await listenServer(createAdaptorServer({ fetch: app.fetch }) as never)
    const reply = await send(`${listening.url}/pay`, { body: '{}' })
    expect(reply.status).toBe(400)
    expect(JSON.parse(reply.text).type).toBe(expected)
  })
})
