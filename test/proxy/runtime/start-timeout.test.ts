// A start that hangs on something outside the proxy (a database port that accepts and never
// answers, a migration lock another session holds) used to leave startProxy pending for ever:
// an orchestrator saw neither a ready proxy nor a failed one. `startTimeoutMs` bounds it; the
// start then fails with PROXY_START_TIMEOUT naming what it was still waiting for, and lets go
// of what it had opened.

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { ProxyStartError, parseProxyConfig, startProxy } from '../../../src/proxy/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { type SilentServer, startSilentServer } from '../../support/silent-server.js'
import { until } from '../../support/until.js'
import { createStoreDatabase, type StoreDatabase } from '../support/migration-lock.js'
import { type NamedUpstream, outcome, startNamedUpstream } from './helpers.js'

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
  let db: StoreDatabase

  beforeAll(async () => {
    db = await createStoreDatabase('start_timeout')
  })
  afterAll(async () => {
    await db.drop()
  })

  it('fails with PROXY_START_TIMEOUT, and the open it gave up on lets go of the database at once', async () => {
    const lock = await db.holdMigrationLock()
    try {
      const clock = new ManualClock(0)
      const state = outcome(
        startProxy({
          config: gatewayWithStore(db.fileUrl, 'startTimeoutMs: 5000\n'),
          clock,
          logger: quiet,
          watch: false,
        }),
      )
      await until(
        async () => state().done || (await lock.proxyWaits()),
        'the proxy to wait for the migration lock',
      )
      expect(state()).toEqual({ done: false })
      await clock.advance(5_000)
      await until(() => state().done, 'the start to fail')
      expect(state().error).toMatchObject({
        code: 'PROXY_START_TIMEOUT',
        setting: 'idempotency.url',
      })
      // The open given up on is cancelled: its session, queued on the lock, ends while the lock
      // is still held (it used to stay until the lock was let go, keeping the process alive).
      await until(
        async () => (await lock.proxySessions()) === 0,
        "the proxy's sessions to end with the lock still held",
        5_000,
      )
    } finally {
      await lock.close()
    }
  }, 30_000)
})
