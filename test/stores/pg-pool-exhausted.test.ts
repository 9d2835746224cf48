// Every pooled PostgreSQL connection busy for longer than connectionTimeoutMs: pg-pool rejects the
// waiting statement with a bare "timeout exceeded when trying to connect", which names neither the
// pool size nor the option to raise. The driver reports it as STORE_BUSY naming maxConnections and
// connectionTimeoutMs, with pg's error as cause.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { SqlDriver } from '../../src/stores/types.js'
import { type OpenedTarget, postgresTarget } from './drivers.js'

describe('PostgreSQL pool exhausted', () => {
  let opened: OpenedTarget
  let db: SqlDriver

  beforeAll(async () => {
    opened = await postgresTarget.open('pool_exhausted', {
      postgres: { maxConnections: 1, connectionTimeoutMs: 1000 },
    })
    db = opened.db
  })
  afterAll(async () => {
    await opened?.cleanup()
  })

  it('fails a waiting statement with STORE_BUSY naming the pool size and the options', async () => {
    let entered!: () => void
    const inside = new Promise<void>((resolve) => (entered = resolve))
    let finish!: () => void
    const held = new Promise<void>((resolve) => (finish = resolve))
    // Entered only once the connection is up (its connect is bounded by the same timeout).
    const holder = db.transaction(async (tx) => {
      await tx.query('SELECT 1')
      entered()
      await held
    })
    await inside
    const error = await db.query('SELECT 1').then(
      () => undefined,
      (e: unknown) => e,
    )
    finish()
    await holder
    expect(error).toMatchObject({
      code: 'STORE_BUSY',
      retryable: true,
      cause: expect.objectContaining({ message: 'timeout exceeded when trying to connect' }),
    })
    expect((error as Error).message).toMatch(/maxConnections \(1\)/)
    expect((error as Error).message).toMatch(/connectionTimeoutMs \(1000 ms\)/)
    // The pool works again once the connection is back.
    expect(await db.query<{ n: number }>('SELECT 1 AS n')).toEqual([{ n: 1 }])
  })
})
