// The running proxy sweeps its idempotency store: records of a route past their ttlMs are
// deleted while it runs (they piled up for good before), every shortest ttlMs (within 1 s and
// 60 s). One sweeper per open store: a reload neither starts a second one nor leaves the old
// one running, and close() leaves no timer. Real SQLite; time is driven by a ManualClock.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { openDatabase } from '../../../src/stores/index.js'
import { ManualClock } from '../../../src/testing/index.js'
import { createTestSqlite, type TestSqlite } from '../../support/sqlite.js'
import { captureLog, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let upstream: NamedUpstream
let proxy: RunningProxy | undefined
const files: TestSqlite[] = []

beforeEach(async () => {
  upstream = await startNamedUpstream('app')
})

afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  await upstream.close()
  for (const file of files.splice(0)) file.cleanup()
})

const sqlite = (): TestSqlite => {
  const file = createTestSqlite('proxy-runtime-sweep')
  files.push(file)
  return file
}

const yaml = (
  url: string,
  ttlMs: number,
): string => `services: { app: { endpoints: [${upstream.url}] } }
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: pay, match: { prefix: / }, targets: [{ service: app }], idempotency: { methods: [POST], ttlMs: ${ttlMs} } }
idempotency: { url: "${url}" }
`

async function rows(file: TestSqlite): Promise<number> {
  const db = await openDatabase(file.url)
  try {
    const [row] = await db.query<{ n: number }>('SELECT COUNT(*) AS n FROM breakwater_idempotency')
    return Number(row?.n)
  } finally {
    await db.close()
  }
}

async function post(n: number, prefix: string): Promise<void> {
  const port = proxy?.address('in').port ?? 0
  for (let i = 0; i < n; i++) {
    const res = await http(port, '/orders', {
      method: 'POST',
      headers: { 'idempotency-key': `${prefix}-${i}`, 'content-type': 'application/json' },
      body: '{}',
    })
    expect(res.status).toBe(200)
  }
}

const quiet = createJsonLogger({ output: captureLog() })

describe('the running proxy sweeps its idempotency store', () => {
  it('deletes records past the route ttlMs as the clock passes its sweep', async () => {
    const file = sqlite()
    const clock = new ManualClock(1_000_000)
    proxy = await startProxy({ config: yaml(file.url, 1_000), clock, logger: quiet })
    await post(20, 'k')
    expect(await rows(file)).toBe(20)
    // Swept every shortest ttlMs (1 s): kept for 1 s, deleted by the sweep after.
    await clock.advance(1_000)
    await clock.advance(1_000)
    expect(await rows(file)).toBe(0)
  })

  it('keeps one sweeper through reloads, and none after close', async () => {
    const a = sqlite()
    const b = sqlite()
    const clock = new ManualClock(1_000_000)
    proxy = await startProxy({ config: yaml(a.url, 3_600_000), clock, logger: quiet })
    const timers = clock.pendingTimers
    // Same store, shorter ttlMs: the sweeper now runs every 1 s, and still only one.
    await proxy.reload(yaml(a.url, 1_000))
    expect(clock.pendingTimers).toBe(timers)
    await post(5, 'a')
    await clock.advance(2_000)
    expect(await rows(a)).toBe(0)

    // A new store: its own sweeper; the old one stops with the old store.
    await proxy.reload(yaml(b.url, 1_000))
    await clock.advance(0)
    expect(clock.pendingTimers).toBe(timers)
    await post(5, 'b')
    await clock.advance(2_000)
    expect(await rows(b)).toBe(0)

    await proxy.close(0)
    proxy = undefined
    expect(clock.pendingTimers).toBe(0)
  })
})
