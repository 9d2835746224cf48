// Idempotency-Key enforcement by the sidecar, end to end: two gateway instances (as two worker
// processes would) share one real store, a SQLite file or a PostgreSQL database, in front of a
// real app server that counts how often it runs each key.

import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'
import {
  createSidecarIdempotency,
  openProxyIdempotency,
  type ProxyIdempotencyStore,
} from '../../../src/proxy/inbound/sidecar-idempotency.js'
import { createTestDatabase } from '../../support/postgres.js'
import { createTestSqlite } from '../../support/sqlite.js'
import { route } from './fixtures.js'
import {
  type Gateway,
  gate,
  sendJson,
  startGateway,
  startUpstream,
  type Upstream,
  until,
} from './harness.js'

interface Engine {
  readonly name: string
  open(): Promise<{ url: string; drop(): Promise<void> }>
}

const engines: Engine[] = [
  {
    name: 'SQLite (better-sqlite3 file)',
    async open() {
      const file = createTestSqlite('sidecar')
      return { url: file.url, drop: async () => file.cleanup() }
    },
  },
  {
    name: 'PostgreSQL',
    async open() {
      const db = await createTestDatabase('sidecar')
      return { url: db.url, drop: () => db.drop() }
    },
  },
]

describe.each(engines)('sidecar idempotency on $name', (engine) => {
  let app: Upstream
  let gateways: Gateway[] = []
  let stores: ProxyIdempotencyStore[] = []
  let drop: () => Promise<void> = async () => {}
  const executions = new Map<string, number>()
  const gates = new Map<string, Promise<void>>()
  const failFirst = new Set<string>()

  beforeAll(async () => {
    const database = await engine.open()
    drop = database.drop
    app = await startUpstream(async (req, res) => {
      const key = String(req.headers['idempotency-key'] ?? '')
      if (req.method === 'GET') {
        sendJson(res, 200, { executions: Object.fromEntries(executions) })
        return
      }
      executions.set(key, (executions.get(key) ?? 0) + 1)
      await gates.get(key)
      if (failFirst.delete(key)) {
        sendJson(res, 503, { error: 'try again' })
        return
      }
      // Over the sidecar's 1 MiB recording cap.
      const pad = req.body.includes('"big":true') ? 'x'.repeat(2 * 1_048_576) : undefined
      sendJson(res, 201, { payment: randomUUID(), key, body: req.body, pad })
    })
    const guarded = { idempotency: { methods: ['POST'], ttlMs: 3_600_000 } }
    const routes = [
      route('payments', '/payments', [{ service: 'app', weight: 1 }], guarded),
      // Nothing listens on port 1: every connect is refused.
      route('dead', '/dead', [{ service: 'dead', weight: 1 }], guarded),
    ]
    for (let i = 0; i < 2; i++) {
      // Each gateway opens the store itself, as each worker process does.
      const store = await openProxyIdempotency(database.url)
      stores.push(store)
      gateways.push(
        await startGateway(
          { app: app.url, dead: 'http://127.0.0.1:1' },
          routes,
          createRouteTable(routes),
          {
            idempotency: createSidecarIdempotency({ idempotency: store.idempotency }),
          },
        ),
      )
    }
  })

  afterAll(async () => {
    for (const g of gateways) await g.close()
    for (const s of stores) await s.close()
    await app?.close()
    await drop()
    gateways = []
    stores = []
  })

  const post = (i: number, key: string | undefined, body: unknown) =>
    fetch(`${gateways[i % 2]!.url}/payments`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(key === undefined ? {} : { 'idempotency-key': key }),
      },
      body: JSON.stringify(body),
    })

  it('refuses a POST without a key with the capability’s 400 problem, before the app', async () => {
    const seen = app.seen.length
    const response = await post(0, undefined, { amount: 1 })
    expect(response.status).toBe(400)
    expect(response.headers.get('content-type')).toBe('application/problem+json')
    expect(await response.json()).toMatchObject({ code: 'IDEMPOTENCY_KEY_MISSING', status: 400 })
    expect(app.seen.length).toBe(seen)
  })

  it('runs concurrent duplicates once: one reaches the app, the others get 409, later ones a replay', async () => {
    const key = `pay-${randomUUID()}`
    const held = gate()
    gates.set(key, held.wait)
    const first = post(0, key, { amount: 42 })
    await until(() => executions.get(key) === 1, 'the first request to reach the app')
    const duplicates = await Promise.all(
      Array.from({ length: 6 }, (_, i) => post(i, key, { amount: 42 })),
    )
    for (const duplicate of duplicates) {
      expect(duplicate.status).toBe(409)
      expect(duplicate.headers.get('retry-after')).toBe('1')
      expect(await duplicate.json()).toMatchObject({ code: 'IDEMPOTENCY_IN_PROGRESS' })
    }
    held.open()
    const answer = await first
    expect(answer.status).toBe(201)
    const original = await answer.text()
    expect(JSON.parse(original)).toMatchObject({ key })

    // Later duplicates, through either gateway, are replays that never reach the app.
    for (let i = 0; i < 4; i++) {
      const replay = await post(i, key, { amount: 42 })
      expect(replay.status).toBe(201)
      expect(replay.headers.get('idempotent-replayed')).toBe('true')
      expect(replay.headers.get('content-type')).toBe('application/json')
      expect(await replay.text()).toBe(original)
    }
    expect(executions.get(key)).toBe(1)
  })

  it('races duplicates through two gateways with nothing held: the app runs the key exactly once', async () => {
    const key = `race-${randomUUID()}`
    const answers = await Promise.all(
      Array.from({ length: 12 }, (_, i) => post(i, key, { amount: 7 })),
    )
    const statuses = answers.map((a) => a.status)
    // 201 for the first and for replays after it finished; 409 for those that came meanwhile.
    for (const status of statuses) expect([201, 409]).toContain(status)
    expect(statuses.filter((s) => s === 201).length).toBeGreaterThanOrEqual(1)
    expect(executions.get(key)).toBe(1)
    const bodies = new Set(
      await Promise.all(answers.filter((a) => a.status === 201).map((a) => a.text())),
    )
    expect(bodies.size).toBe(1)
  })

  it('answers 422 when a key is reused for another body, without reaching the app', async () => {
    const key = `mismatch-${randomUUID()}`
    expect((await post(0, key, { amount: 1 })).status).toBe(201)
    const seen = app.seen.length
    const reused = await post(1, key, { amount: 2 })
    expect(reused.status).toBe(422)
    expect(await reused.json()).toMatchObject({ code: 'IDEMPOTENCY_MISMATCH' })
    expect(app.seen.length).toBe(seen)
    expect(executions.get(key)).toBe(1)
  })

  it('releases the key after a 5xx, so the retry reaches the app again', async () => {
    const key = `retry-${randomUUID()}`
    failFirst.add(key)
    expect((await post(0, key, { amount: 3 })).status).toBe(503)
    const retry = await post(1, key, { amount: 3 })
    expect(retry.status).toBe(201)
    expect(retry.headers.get('idempotent-replayed')).toBeNull()
    expect(executions.get(key)).toBe(2)
  })

  it('streams a response over the recording cap to the client and releases its key', async () => {
    const key = `big-${randomUUID()}`
    for (let i = 0; i < 2; i++) {
      const response = await post(i, key, { big: true })
      expect(response.status).toBe(201)
      const body = (await response.json()) as { pad: string }
      expect(body.pad).toHaveLength(2 * 1_048_576)
    }
    expect(executions.get(key)).toBe(2)
  })

  it('answers the runtime’s own 502 when the app is down, and releases the key for the retry', async () => {
    const key = `down-${randomUUID()}`
    for (let i = 0; i < 2; i++) {
      const response = await fetch(`${gateways[i]!.url}/dead`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': key },
        body: '{}',
      })
      expect(response.status).toBe(502)
      expect(response.headers.get('content-type')).toBe('application/problem+json')
      expect(((await response.json()) as { code: string }).code).not.toMatch(/^IDEMPOTENCY/)
    }
  })

  it('passes unguarded methods through', async () => {
    const response = await fetch(`${gateways[0]!.url}/payments`)
    expect(response.status).toBe(200)
  })
})
