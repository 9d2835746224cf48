// A reload that hangs on something outside the proxy (a new idempotency.url whose database port
// accepts and never answers, a migration lock another session holds) used to hold the reload
// queue for ever: every reload asked for after it (SIGHUP, admin, file change) waited behind
// it, and so did close(). The new config's `startTimeoutMs` now bounds a reload's start as it
// bounds the first one: past it the reload is refused naming what it waited for, the running
// config stays, what the reload had opened is closed, the store it was opening is cancelled
// (its session waiting on the lock ends at once; so does one close() finds), and the reloads
// behind it go on.

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { ConfigInvalidError, startProxy } from '../../../src/proxy/index.js'
import { type ProxyInternals, startProxyRuntime } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { type SilentServer, startSilentServer } from '../../support/silent-server.js'
import { until } from '../../support/until.js'
import { createStoreDatabase, type StoreDatabase } from '../support/migration-lock.js'
import { http, type NamedUpstream, outcome, startNamedUpstream } from './helpers.js'

const quiet = createJsonLogger({ level: 'silent' })
let upstream: NamedUpstream

beforeAll(async () => {
  upstream = await startNamedUpstream('a')
})
afterAll(async () => {
  await upstream.close()
})

/** A gateway whose route needs the idempotency store at `url` (memory when none). */
const gateway = (url: string | undefined, extra = '') =>
  `services: { a: { endpoints: [${upstream.url}] } }
listeners:
  - name: gw
    role: gateway
    port: 0
    routes: [{ name: r, match: { prefix: / }, targets: [{ service: a }], idempotency: {} }]
${url === undefined ? '' : `idempotency: { url: "${url}" }\n`}${extra}`

describe('a reload that hangs on its new idempotency store', () => {
  let silent: SilentServer
  let proxy: ProxyInternals | undefined

  beforeAll(async () => {
    silent = await startSilentServer()
  })
  afterAll(async () => {
    await proxy?.close(0)
    await silent.close()
  })

  it('is refused after the new startTimeoutMs naming idempotency.url; the old config serves and later reloads apply', async () => {
    const clock = new ManualClock(0)
    proxy = await startProxyRuntime({
      config: gateway(undefined, 'startTimeoutMs: 60000\n'),
      clock,
      logger: quiet,
      watch: false,
    })
    const port = proxy.address('gw').port
    const url = `postgres://app@127.0.0.1:${silent.port}/app`
    const before = silent.accepted()
    const hung = outcome(proxy.reload(gateway(url, 'startTimeoutMs: 2000\n')))
    await until(() => silent.accepted() > before || hung().done, 'the new store to connect')
    expect(hung()).toEqual({ done: false })
    // Queued behind the hung one: it must not wait for ever.
    const next = outcome(proxy.reload(gateway(undefined, 'drainTimeoutMs: 1234\n')))
    await clock.advance(1_999)
    await new Promise((resolve) => setImmediate(resolve))
    expect(hung().done).toBe(false)
    expect(next().done).toBe(false)
    await clock.advance(1)
    await until(() => hung().done, 'the reload to be refused')
    const error = hung().error
    expect(error).toBeInstanceOf(ConfigInvalidError)
    const message = (error as Error).message
    expect(message).toContain('startTimeoutMs (2000 ms) passed while waiting for idempotency.url')
    expect(message).toContain(`opening ${url}`)
    // The running config still serves.
    const res = await http(port, '/still-served')
    expect(res.status).toBe(200)
    expect(res.json()).toMatchObject({ service: 'a', url: '/still-served' })
    // And the reload queued behind it applies.
    await until(() => next().done, 'the queued reload')
    expect(next()).toEqual({ done: true, value: undefined })
    expect(proxy.config().drainTimeoutMs).toBe(1234)
  })
})

describe('a reload whose new store waits on the migration lock (PostgreSQL)', () => {
  let db: StoreDatabase

  beforeAll(async () => {
    db = await createStoreDatabase('reload_timeout')
  })
  afterAll(async () => {
    await db.drop()
  })

  /** A proxy on the memory store, reloading onto `db` with the migration lock held elsewhere. */
  async function reloadOntoLockedStore(startTimeoutMs: number) {
    const lock = await db.holdMigrationLock()
    const clock = new ManualClock(0)
    const proxy = await startProxy({
      config: gateway(undefined),
      clock,
      logger: quiet,
      watch: false,
    })
    const state = outcome(proxy.reload(gateway(db.fileUrl, `startTimeoutMs: ${startTimeoutMs}\n`)))
    await until(
      async () => state().done || (await lock.proxyWaits()),
      'the reload to wait for the migration lock',
    )
    expect(state()).toEqual({ done: false })
    return { lock, clock, proxy, state }
  }

  it('is refused after startTimeoutMs, and the open it gave up on lets go of the database at once', async () => {
    const { lock, clock, proxy, state } = await reloadOntoLockedStore(5_000)
    try {
      await clock.advance(5_000)
      await until(() => state().done, 'the reload to be refused')
      expect(state().error).toBeInstanceOf(ConfigInvalidError)
      expect((state().error as Error).message).toContain(
        'startTimeoutMs (5000 ms) passed while waiting for idempotency.url',
      )
      // The running config (memory store) still takes keyed requests.
      const res = await http(proxy.address('gw').port, '/pay', {
        method: 'POST',
        headers: { 'idempotency-key': 'k-1', 'content-type': 'application/json' },
        body: '{}',
      })
      expect(res.status).toBe(200)
      // The open given up on is cancelled: its session, queued on the lock, ends while the
      // lock is still held (it used to stay until the lock was let go, and with it the
      // process after close()).
      await until(
        async () => (await lock.proxySessions()) === 0,
        "the reload's sessions to end with the lock still held",
        5_000,
      )
      // A reload after it goes through.
      await proxy.reload(gateway(undefined, 'drainTimeoutMs: 4321\n'))
    } finally {
      await lock.close()
      await proxy.close(0)
    }
  }, 30_000)

  it('is cancelled by close(), which resolves once its session has ended, without waiting for startTimeoutMs', async () => {
    const { lock, proxy, state } = await reloadOntoLockedStore(60_000)
    try {
      // No time passes on the clock: close() used to wait for the reload, and so for its bound.
      const closed = outcome(proxy.close())
      await until(() => closed().done, 'close() to end the open', 5_000)
      expect(closed()).toEqual({ done: true, value: { drain: 'complete', cut: 0, tunnels: 0 } })
      expect(await lock.proxySessions()).toBe(0)
      await until(() => state().done, 'the reload to be refused')
      expect(state().error).toBeInstanceOf(ConfigInvalidError)
    } finally {
      await lock.close()
      await proxy.close(0)
    }
  }, 30_000)
})
