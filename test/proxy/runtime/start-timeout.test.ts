// A start that hangs on something outside the proxy (a database port that accepts and never
// answers, a migration lock another session holds) used to leave startProxy pending for ever:
// an orchestrator saw neither a ready proxy nor a failed one. `startTimeoutMs` bounds it; the
// start then fails with PROXY_START_TIMEOUT naming what it was still waiting for, and lets go
// of what it had opened.

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { ProxyStartError, parseProxyConfig, startProxy } from '../../../src/proxy/index.js'
import { createPostgresDriver } from '../../../src/stores/postgres.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { holdOpenTransaction } from '../../support/held-transaction.js'
import { createTestDatabase, type TestDatabase } from '../../support/postgres.js'
import { until } from '../../support/until.js'
import { type SilentServer, startSilentServer } from '../support/silent-server.js'
import { type NamedUpstream, startNamedUpstream } from './helpers.js'

const quiet = createJsonLogger({ level: 'silent' })
let upstream: NamedUpstream

beforeAll(async () => {
  upstream = await startNamedUpstream('a')
})
afterAll(async () => {
  await upstream.close()
})

const gatewayWithStore = (url: string, extra = '') =>
  `services: { a: { endpoints: [${upstream.url}] } }
listeners:
  - name: gw
    role: gateway
    port: 0
    routes: [{ name: r, match: { prefix: / }, targets: [{ service: a }], idempotency: {} }]
idempotency: { url: "${url}" }
${extra}`

/** Settles to the promise's outcome, so a test can look at it without awaiting it yet. */
function outcome<T>(promise: Promise<T>): () => { done: boolean; value?: T; error?: unknown } {
  const state: { done: boolean; value?: T; error?: unknown } = { done: false }
  promise.then(
    (value) => Object.assign(state, { done: true, value }),
    (error: unknown) => Object.assign(state, { done: true, error }),
  )
  return () => state
}

describe('startTimeoutMs in the config', () => {
  it('defaults to 60000 and refuses 0 and non-integers, naming the key', () => {
    const base = `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`
    expect(parseProxyConfig(base, 'proxy.yaml').startTimeoutMs).toBe(60_000)
    expect(parseProxyConfig(`${base}startTimeoutMs: 1500\n`, 'proxy.yaml').startTimeoutMs).toBe(
      1500,
    )
    for (const bad of ['0', '1.5', '"10s"', '-1'])
      expect(() => parseProxyConfig(`${base}startTimeoutMs: ${bad}\n`, 'proxy.yaml')).toThrow(
        /startTimeoutMs: expected integer in \[1, \d+\]/,
      )
  })
})

describe('a start that hangs on its idempotency store', () => {
  let silent: SilentServer

  beforeAll(async () => {
    silent = await startSilentServer()
  })
  afterAll(async () => {
    await silent.close()
  })

  it('fails with PROXY_START_TIMEOUT naming idempotency.url once startTimeoutMs has passed', async () => {
    const port = silent.port
    const clock = new ManualClock(0)
    const before = silent.accepted()
    const started = startProxy({
      config: gatewayWithStore(`postgres://app@127.0.0.1:${port}/app`, 'startTimeoutMs: 2000\n'),
      clock,
      logger: quiet,
      watch: false,
    })
    const state = outcome(started)
    await until(() => silent.accepted() > before || state().done, 'the store to connect')
    expect(state()).toEqual({ done: false })
    await clock.advance(1_999)
    await new Promise((resolve) => setImmediate(resolve))
    expect(state().done).toBe(false)
    await clock.advance(1)
    await until(() => state().done, 'the start to fail')
    const error = state().error
    expect(error).toBeInstanceOf(ProxyStartError)
    expect(error).toMatchObject({ code: 'PROXY_START_TIMEOUT', setting: 'idempotency.url' })
    const message = (error as Error).message
    expect(message).toContain('startTimeoutMs (2000 ms)')
    expect(message).toContain(`idempotency.url: opening postgres://app@127.0.0.1:${port}/app`)
  })
})

describe('a start that waits on the migration lock another session holds (PostgreSQL)', () => {
  let db: TestDatabase
  /** The URL as the file holds it: its password, as secrets are, goes through PGPASSWORD. */
  let fileUrl: string
  const pgPassword = process.env.PGPASSWORD

  beforeAll(async () => {
    db = await createTestDatabase('start_timeout')
    const url = new URL(db.url)
    if (url.password !== '') process.env.PGPASSWORD = decodeURIComponent(url.password)
    url.password = ''
    fileUrl = url.toString()
  })
  afterAll(async () => {
    if (pgPassword === undefined) delete process.env.PGPASSWORD
    else process.env.PGPASSWORD = pgPassword
    await db.drop()
  })

  it('fails with PROXY_START_TIMEOUT, and its store lets go of the database once it can', async () => {
    const other = await createPostgresDriver({
      connectionString: db.url,
      applicationName: 'holder',
    })
    // The lock every migration run takes first (runMigrations), held as a hung
    // `breakwater migrate` would hold it.
    const held = await holdOpenTransaction(other, (tx) =>
      tx.query('SELECT pg_advisory_xact_lock(7121410496880042356)'),
    )
    const sessions = async (): Promise<number> => {
      const rows = await other.query<{ n: string }>(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'breakwater'",
      )
      return Number(rows[0]?.n)
    }
    try {
      const clock = new ManualClock(0)
      const state = outcome(
        startProxy({
          config: gatewayWithStore(fileUrl, 'startTimeoutMs: 5000\n'),
          clock,
          logger: quiet,
          watch: false,
        }),
      )
      await until(async () => {
        if (state().done) return true
        const rows = await other.query(
          "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'breakwater' AND wait_event_type = 'Lock'",
        )
        return rows.length > 0
      }, 'the proxy to wait for the migration lock')
      expect(state()).toEqual({ done: false })
      await clock.advance(5_000)
      await until(() => state().done, 'the start to fail')
      expect(state().error).toMatchObject({
        code: 'PROXY_START_TIMEOUT',
        setting: 'idempotency.url',
      })
      // The migration it gave up on is still queued on the lock; once that goes, the store it
      // opened is closed rather than left connected (sooner than the pool's 10 s idle timeout
      // would drop its connection).
      await held.commit()
      await until(async () => (await sessions()) === 0, "the proxy's sessions to end", 5_000)
    } finally {
      await held.commit().catch(() => {})
      await other.close()
    }
  }, 30_000)
})
