// The store the proxy opens for its idempotency records deletes them once their retention
// (the route's ttlMs) has passed: a sweeper runs on the store's clock while it is open. Without
// it, records piled up for good (the memory store in the proxy's heap, SQL rows on disk).
// Real SQLite and PostgreSQL; time is driven by a ManualClock.

import { afterEach, describe, expect, it } from 'vitest'
import { idempotent } from '../../../src/idempotency/index.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import {
  openProxyIdempotency,
  type ProxyIdempotencyStore,
  proxySweepIntervalMs,
} from '../../../src/proxy/inbound/sidecar-idempotency.js'
import { openDatabase } from '../../../src/stores/index.js'
import { ManualClock } from '../../../src/testing/index.js'
import { createTestDatabase } from '../../support/postgres.js'
import { createTestSqlite } from '../../support/sqlite.js'
import { until } from '../../support/until.js'

interface Engine {
  readonly name: string
  /** A store URL, how many records it holds (read from outside the store), and clean-up. */
  open(): Promise<{ url: string; count(store: ProxyIdempotencyStore): Promise<number> }>
}

const cleanups: (() => Promise<void>)[] = []

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const sqlCount = (url: string) => async (): Promise<number> => {
  const db = await openDatabase(url)
  try {
    const [row] = await db.query<{ n: number | string }>(
      'SELECT COUNT(*) AS n FROM breakwater_idempotency',
    )
    return Number(row?.n)
  } finally {
    await db.close()
  }
}

const engines: Engine[] = [
  {
    name: 'memory',
    async open() {
      return {
        url: 'memory',
        count: async (store) => (store.idempotency.store as unknown as { size: number }).size,
      }
    },
  },
  {
    name: 'SQLite',
    async open() {
      const file = createTestSqlite('proxy-sweep')
      cleanups.push(async () => file.cleanup())
      return { url: file.url, count: sqlCount(file.url) }
    },
  },
  {
    name: 'PostgreSQL',
    async open() {
      const db = await createTestDatabase('proxy_sweep')
      cleanups.push(() => db.drop())
      return { url: db.url, count: sqlCount(db.url) }
    },
  },
]

// Records `n` keys with `retentionMs` on the store, as the sidecar's route protocols do.
async function record(
  store: ProxyIdempotencyStore,
  clock: ManualClock,
  prefix: string,
  n: number,
  retentionMs: number,
): Promise<void> {
  for (let i = 0; i < n; i++) {
    await idempotent(`${prefix}-${i}`, () => i, {
      store: store.idempotency.store,
      scope: 'proxy-sweep',
      retentionMs,
      clock,
    })
  }
}

describe.each(engines)('the proxy idempotency store on $name', (engine) => {
  it('deletes records past their retention once the clock passes a sweep', async () => {
    const { url, count } = await engine.open()
    const clock = new ManualClock(1_000_000)
    const store = await openProxyIdempotency(url, { clock, sweepIntervalMs: 1_000 })
    cleanups.push(() => store.close())
    await record(store, clock, 'old', 5, 1_000)
    await record(store, clock, 'kept', 3, 3_600_000)
    expect(await count(store)).toBe(8)

    await clock.advance(999)
    expect(await count(store)).toBe(8)
    await clock.advance(1)
    // Driven by the clock; a PostgreSQL statement still takes real time to come back.
    await until(async () => (await count(store)) === 3, 'the expired records to be swept')
  })

  it('leaves no timer once closed, and a changed interval replaces the sweeper', async () => {
    const { url, count } = await engine.open()
    const clock = new ManualClock(1_000_000)
    const store = await openProxyIdempotency(url, { clock, sweepIntervalMs: 60_000 })
    let closed = false
    cleanups.push(async () => {
      if (!closed) await store.close()
    })
    expect(clock.pendingTimers).toBe(1)
    store.sweepEvery(60_000)
    expect(clock.pendingTimers).toBe(1)
    store.sweepEvery(2_000)
    // The old sweeper's timer is gone, not left running beside the new one.
    expect(clock.pendingTimers).toBe(1)
    expect(clock.nextTimerAt()).toBe(1_002_000)
    await record(store, clock, 'old', 2, 500)
    await clock.advance(2_000)
    await until(async () => (await count(store)) === 0, 'the expired records to be swept')

    await store.close()
    closed = true
    expect(clock.pendingTimers).toBe(0)
    store.sweepEvery(1_000)
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('sweep failures', () => {
  it('are logged, and the sweeper goes on', async () => {
    const file = createTestSqlite('proxy-sweep-fail')
    cleanups.push(async () => file.cleanup())
    const clock = new ManualClock(1_000_000)
    const lines: string[] = []
    const logger = createJsonLogger({ output: { write: (line) => void lines.push(line) } })
    const store = await openProxyIdempotency(file.url, { clock, sweepIntervalMs: 1_000, logger })
    cleanups.push(() => store.close())
    const db = await openDatabase(file.url)
    await db.execute('ALTER TABLE breakwater_idempotency RENAME TO moved_away')
    await clock.advance(1_000)
    await until(() => lines.some((l) => l.includes('idempotency sweep failed')), 'the log line')
    await db.execute('ALTER TABLE moved_away RENAME TO breakwater_idempotency')
    await db.close()
    expect(clock.pendingTimers).toBe(1)
  })
})

describe('proxySweepIntervalMs', () => {
  it('is the shortest ttlMs, within 1 s and 60 s', () => {
    expect(proxySweepIntervalMs([86_400_000])).toBe(60_000)
    expect(proxySweepIntervalMs([86_400_000, 30_000])).toBe(30_000)
    expect(proxySweepIntervalMs([1])).toBe(1_000)
    expect(proxySweepIntervalMs([])).toBe(60_000)
  })
})
