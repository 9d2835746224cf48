// Records written before `replayHeaders` refused hop-by-hop and invalid names (or by another
// tool) may hold headers that no replay must send. A real SQLite store, the record written into
// it directly, replayed by a real node:http server and through the core alone (as the Fastify
// and Hono adapters use it).
import { createServer } from 'node:http'
import { connect } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  defaultFingerprint,
  type IdempotencyRequest,
  idempotencyTable,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { sqliteDb, type TestDb } from './databases.js'
import { type Listening, listenServer } from './servers.js'

const body = '{"amount":5}'
const recordedBody = Buffer.from('{"id":"ch_1","note":"caf\u00e9 \u2615"}\n')

// What an old version recorded: the content headers the route replays, and next to them names
// that today's replayHeaders check refuses.
const storedHeaders = {
  'content-type': 'application/json; charset=utf-8',
  location: '/charges/ch_1',
  link: ['</a>; rel="a"', '</b>; rel="b"'],
  'x-odd-but-valid': '  spaced\tvalue\u00e9 ',
  connection: 'close',
  'keep-alive': 'timeout=1',
  'proxy-connection': 'close',
  'transfer-encoding': 'chunked',
  te: 'trailers',
  trailer: 'x-checksum',
  upgrade: 'websocket',
  'content-length': '999',
  Connection: 'close',
  'bad name': 'x',
  'x-colon:': 'x',
  'caf\u00e9': 'x',
  '': 'x',
  // Values no response can carry (a line break would also split the response).
  'x-split': 'a\r\nset-cookie: stolen=1',
  'x-euro': '\u20ac',
  vary: ['accept', 'accept-language\n', 'origin'],
}

// The headers a replay sends: the valid, end-to-end ones, exactly as stored.
const replayable = {
  'content-type': 'application/json; charset=utf-8',
  location: '/charges/ch_1',
  link: ['</a>; rel="a"', '</b>; rel="b"'],
  'x-odd-but-valid': '  spaced\tvalue\u00e9 ',
  vary: ['accept', 'origin'],
}

function requestFor(key: string): IdempotencyRequest {
  return {
    method: 'POST',
    route: '/charges',
    body: Buffer.from(body),
    header: (name) => (name === 'idempotency-key' ? key : undefined),
  }
}

describe('replaying a stored record with headers the replayHeaders check refuses', () => {
  let testDb: TestDb
  let server: Listening
  let runs = 0
  const errors: unknown[] = []

  beforeAll(async () => {
    testDb = await sqliteDb.open('idem_stored_headers')
    const idempotency = createIdempotency({ store: testDb.db })
    server = await listenServer(
      createServer(
        idempotentHandler({ idempotency, onError: (e) => errors.push(e) }, (_req, res) => {
          runs++
          res.writeHead(201).end('ran again')
        }),
      ),
    )
  })
  afterAll(async () => {
    await server?.close()
    await testDb?.close()
  })

  async function storeLegacyRecord(key: string): Promise<void> {
    const now = Date.now()
    await testDb.db.execute(
      `INSERT INTO ${idempotencyTable} (scope, idem_key, fingerprint, state, lease_token,
         lease_expires_at, attempt, response_status, response_headers, response_body,
         created_at, updated_at, expires_at)
       VALUES ($1, $2, $3, 'completed', 'old-token', NULL, 1, 201, $4, $5, $6, $6, $7)`,
      [
        'anonymous',
        key,
        defaultFingerprint(requestFor(key)),
        JSON.stringify(storedHeaders),
        recordedBody,
        now,
        now + 3_600_000,
      ],
    )
  }

  it('sends the end-to-end headers byte for byte and none of the others over node:http', async () => {
    await storeLegacyRecord('legacy-http')
    const raw = await rawExchange(
      server.url,
      'POST /charges HTTP/1.1\r\nHost: x\r\nIdempotency-Key: legacy-http\r\n' +
        `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    )
    expect(errors).toEqual([])
    expect(runs).toBe(0)
    const split = raw.indexOf('\r\n\r\n')
    const head = raw.subarray(0, split).toString('latin1').split('\r\n')
    expect(head[0]).toBe('HTTP/1.1 201 Created')
    const lines = head.slice(1)
    // Byte for byte: the value's bytes as stored (latin1 is node's encoding of header values).
    expect(lines).toEqual(
      expect.arrayContaining([
        'content-type: application/json; charset=utf-8',
        'location: /charges/ch_1',
        'link: </a>; rel="a"',
        'link: </b>; rel="b"',
        'x-odd-but-valid:   spaced\tvalue\u00e9 ',
        'vary: accept',
        'vary: origin',
        'idempotent-replayed: true',
        `content-length: ${recordedBody.length}`,
      ]),
    )
    const names = lines.map((line) => line.slice(0, line.indexOf(':')).toLowerCase())
    for (const refused of ['proxy-connection', 'transfer-encoding', 'te']) {
      expect(names).not.toContain(refused)
    }
    for (const refused of ['trailer', 'upgrade', 'bad name', 'x-colon', 'caf\u00e9', 'x-split']) {
      expect(names).not.toContain(refused)
    }
    // node adds its own Connection and Keep-Alive headers; the stored ones are not sent.
    expect(lines.filter((line) => /^connection:/i.test(line))).toEqual(['Connection: keep-alive'])
    expect(lines.filter((line) => /^keep-alive:/i.test(line))).toEqual(['Keep-Alive: timeout=5'])
    expect(names.filter((name) => name === 'content-length')).toHaveLength(1)
    expect(names).not.toContain('set-cookie')
    expect(names).not.toContain('x-euro')
    expect(raw.subarray(split + 4).equals(recordedBody)).toBe(true)
  })

  it('hands adapters a replay without them', async () => {
    await storeLegacyRecord('legacy-core')
    const idempotency = createIdempotency({ store: testDb.db })
    const begun = await idempotency.begin(requestFor('legacy-core'))
    expect(begun.kind).toBe('respond')
    if (begun.kind !== 'respond') return
    expect(begun.replayed).toBe(true)
    expect(begun.response.status).toBe(201)
    expect(begun.response.headers).toEqual({ ...replayable, 'idempotent-replayed': 'true' })
    expect(Buffer.from(begun.response.body).equals(recordedBody)).toBe(true)
  })
})

// One request on its own connection, the response read as raw bytes (the HTTP client would
// merge and normalise headers).
function rawExchange(url: string, request: string): Promise<Buffer> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port) }, () => socket.write(request))
    const chunks: Buffer[] = []
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk)
      const all = Buffer.concat(chunks)
      const split = all.indexOf('\r\n\r\n')
      if (split === -1) return
      const length = /\r\ncontent-length: (\d+)/i.exec(all.subarray(0, split).toString('latin1'))
      if (length !== null && all.length >= split + 4 + Number(length[1])) {
        socket.destroy()
        resolve(all)
      }
    })
    socket.on('error', reject)
    socket.on('close', () => resolve(Buffer.concat(chunks)))
  })
}
