// A recorded 401, 405, 407 or 416 replayed without the header RFC 9110 requires with it
// (WWW-Authenticate, Allow, Proxy-Authenticate, Content-Range) is a response HTTP forbids: a
// client could no longer learn how to authenticate or which methods the resource allows. Those
// statuses are recorded by default (4xx), so the default replayHeaders keeps their headers.
// node:http servers on real SQLite and PostgreSQL, requests over real sockets.
import { randomUUID } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { createIdempotency, idempotentHandler } from '../../src/idempotency/index.js'
import { dbTargets } from './databases.js'
import { listen, send } from './servers.js'
import { useServerSuite } from './suite.js'

// Each status with the header RFC 9110 requires (or, for 416, recommends) beside it.
const answers: Record<string, { status: number; header: string; value: string }> = {
  '/unauthorized': { status: 401, header: 'www-authenticate', value: 'Bearer realm="api"' },
  '/not-allowed': { status: 405, header: 'allow', value: 'GET, PUT' },
  '/proxy-auth': { status: 407, header: 'proxy-authenticate', value: 'Basic realm="proxy"' },
  '/range': { status: 416, header: 'content-range', value: 'bytes */100' },
}

describe.each(dbTargets)(
  'replayed statuses keep the headers HTTP requires on $dialect',
  (target) => {
    const suite = useServerSuite(target, 'idem_status_headers', false)

    it.each(Object.keys(answers))('replays %s with its required header', async (path) => {
      const answer = answers[path]!
      const idempotency = createIdempotency({ store: suite.db })
      let runs = 0
      const server = suite.keep(
        await listen(
          idempotentHandler({ idempotency }, (_req, res) => {
            runs++
            res
              .writeHead(answer.status, {
                'content-type': 'application/json',
                [answer.header]: answer.value,
              })
              .end('{"error":"refused"}')
          }),
        ),
      )
      const key = randomUUID()
      const first = await send(`${server.url}${path}`, { key, body: '{}' })
      expect(first.status).toBe(answer.status)
      expect(first.headers[answer.header]).toBe(answer.value)
      const replay = await send(`${server.url}${path}`, { key, body: '{}' })
      expect(replay.headers['idempotent-replayed']).toBe('true')
      expect(replay.status).toBe(answer.status)
      expect(replay.headers[answer.header]).toBe(answer.value)
      expect(replay.text).toBe('{"error":"refused"}')
      expect(runs).toBe(1)
    })
  },
)
