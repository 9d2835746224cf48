// Express and Fastify fingerprint the body their parser produced, not its bytes. A JSON string
// (the body `"abc"`) and JSON `null` used to be hashed as the raw text `abc` and as nothing, so
// they collided with a text/plain `abc`, with the JSON object whose text is the string's
// content, and with an empty body. Records stored that way by earlier versions must still
// replay. Real servers over real SQLite and PostgreSQL.
import { createHash } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import express from 'express'
import Fastify from 'fastify'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  defaultFingerprint,
  expressIdempotency,
  fastifyIdempotency,
  type Idempotency,
  idempotencyTable,
} from '../../src/idempotency/index.js'
import { dbTargets, type TestDb } from './databases.js'
import { agent, type Listening, listenServer } from './servers.js'

interface AdapterTarget {
  readonly name: string
  start(idempotency: Idempotency, ran: () => number): Promise<Server>
}

const adapters: AdapterTarget[] = [
  {
    name: 'express',
    async start(idempotency, ran) {
      const app = express()
      // strict: false lets the parser produce strings and null, as Fastify's does.
      app.use(express.json({ strict: false }))
      app.use(express.text())
      app.use(expressIdempotency(idempotency))
      app.post('/echo', (_req, res) => {
        res.status(201).type('text/plain').send(`run ${ran()}`)
      })
      return createServer(app)
    },
  },
  {
    name: 'fastify',
    async start(idempotency, ran) {
      const app = Fastify()
      await app.register(fastifyIdempotency(idempotency))
      app.post('/echo', async (_request, reply) =>
        reply.code(201).type('text/plain').send(`run ${ran()}`),
      )
      await app.ready()
      return app.server
    },
  },
]

const sha256 = (data: Uint8Array | string) => createHash('sha256').update(data).digest('hex')

/** The fingerprint breakwater before this change stored: `v1:` over the bytes it hashed. */
const v1Fingerprint = (route: string, hashed: string) =>
  `v1:${sha256(`POST\n${route}\n${sha256(Buffer.from(hashed))}`)}`

async function post(
  url: string,
  key: string,
  body: string | undefined,
  contentType: string | undefined,
): Promise<{ status: number; text: string }> {
  const headers: Record<string, string> = { 'idempotency-key': key }
  if (contentType !== undefined) headers['content-type'] = contentType
  const response = await request(`${url}/echo`, {
    method: 'POST',
    headers,
    body: body ?? null,
    dispatcher: agent,
  })
  return { status: response.statusCode, text: await response.body.text() }
}

const cases = dbTargets.flatMap((db) => adapters.map((adapter) => ({ db, adapter })))

describe.each(cases)(
  '$adapter.name fingerprint of a parsed body, on $db.dialect',
  ({ db, adapter }) => {
    let testDb: TestDb
    let server: Listening
    let runs = 0

    beforeAll(async () => {
      testDb = await db.open(`idem_parsed_fp_${adapter.name}`)
      const idempotency = createIdempotency({ store: testDb.db })
      server = await listenServer(await adapter.start(idempotency, () => ++runs))
    })
    afterAll(async () => {
      await server?.close()
      await testDb?.close()
    })

    async function storedFingerprint(key: string): Promise<string | undefined> {
      const rows = await testDb.db.query<{ fingerprint: string }>(
        `SELECT fingerprint FROM ${idempotencyTable} WHERE idem_key = $1`,
        [key],
      )
      return rows[0]?.fingerprint
    }

    async function storeEarlierRecord(key: string, fingerprint: string): Promise<void> {
      const now = Date.now()
      await testDb.db.execute(
        `INSERT INTO ${idempotencyTable} (scope, idem_key, fingerprint, state, lease_token,
         lease_expires_at, attempt, response_status, response_headers, response_body,
         created_at, updated_at, expires_at)
       VALUES ('anonymous', $1, $2, 'completed', 'old-token', NULL, 1, 201, $3, $4, $5, $5, $6)`,
        [
          key,
          fingerprint,
          JSON.stringify({ 'content-type': 'text/plain' }),
          Buffer.from('stored earlier'),
          now,
          now + 3_600_000,
        ],
      )
    }

    it('tells a JSON string apart from the same text sent as text/plain', async () => {
      const first = await post(server.url, `${adapter.name}-str-text`, '"abc"', 'application/json')
      expect(first.status).toBe(201)
      const second = await post(server.url, `${adapter.name}-str-text`, 'abc', 'text/plain')
      expect(second.status).toBe(422)
      // And the other way round.
      expect((await post(server.url, `${adapter.name}-text-str`, 'abc', 'text/plain')).status).toBe(
        201,
      )
      expect(
        (await post(server.url, `${adapter.name}-text-str`, '"abc"', 'application/json')).status,
      ).toBe(422)
    })

    it('tells a JSON string apart from the JSON object its text spells', async () => {
      const key = `${adapter.name}-obj-str`
      expect((await post(server.url, key, '{"a":1}', 'application/json')).status).toBe(201)
      const string = await post(server.url, key, JSON.stringify('{"a":1}'), 'application/json')
      expect(string.status).toBe(422)
    })

    it('tells JSON null apart from a request without a body', async () => {
      const key = `${adapter.name}-null`
      expect((await post(server.url, key, 'null', 'application/json')).status).toBe(201)
      expect((await post(server.url, key, undefined, undefined)).status).toBe(422)
      const replay = await post(server.url, key, 'null', 'application/json')
      expect(replay.status).toBe(201)
    })

    it('hashes a JSON string as the JSON text node:http and Hono hash', async () => {
      const key = `${adapter.name}-same-digest`
      const first = await post(server.url, key, '"abc"', 'application/json')
      const replay = await post(server.url, key, '"abc"', 'application/json')
      expect(replay).toEqual(first)
      const raw = defaultFingerprint({
        method: 'POST',
        route: '/echo',
        body: Buffer.from('"abc"'),
        header: () => undefined,
      })
      const stored = await storedFingerprint(key)
      // Another version tag (parsed bodies are hashed another way than before), the same digest.
      expect(stored?.slice(stored.indexOf(':'))).toBe(raw.slice(raw.indexOf(':')))
    })

    it('still replays records an earlier version stored, each for its own request only', async () => {
      // A JSON string, stored as its raw text.
      await storeEarlierRecord(`${adapter.name}-old-str`, v1Fingerprint('/echo', 'abc'))
      const str = await post(server.url, `${adapter.name}-old-str`, '"abc"', 'application/json')
      expect(str).toEqual({ status: 201, text: 'stored earlier' })
      // A JSON object, stored as its canonical JSON.
      await storeEarlierRecord(`${adapter.name}-old-obj`, v1Fingerprint('/echo', '{"a":1,"b":2}'))
      const obj = await post(
        server.url,
        `${adapter.name}-old-obj`,
        '{"b":2,"a":1}',
        'application/json',
      )
      expect(obj).toEqual({ status: 201, text: 'stored earlier' })
      // JSON null, stored as nothing.
      await storeEarlierRecord(`${adapter.name}-old-null`, v1Fingerprint('/echo', ''))
      const nul = await post(server.url, `${adapter.name}-old-null`, 'null', 'application/json')
      expect(nul).toEqual({ status: 201, text: 'stored earlier' })
      // Another request with an earlier record's key is still refused.
      const other = await post(server.url, `${adapter.name}-old-obj`, '{"a":2}', 'application/json')
      expect(other.status).toBe(422)
    })
  },
)
