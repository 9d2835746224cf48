// A server that stops answering while its connections stay open (frozen, or a firewall that
// drops the flow silently) must not stall the driver for good: queryTimeoutMs bounds each
// statement, and the connection it was sent on is destroyed rather than reused. A slow answer
// to ROLLBACK holds nobody up: the connection runs in pipeline mode, so the next transaction's
// statements queue behind ROLLBACK on the wire and run after it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { PostgresDriver } from '../../src/stores/postgres.js'
import {
  type PostgresBehindProxy,
  startPostgresBehindProxy,
} from '../support/postgres-behind-proxy.js'
import type { TcpFaultProxy } from '../support/tcp-fault-proxy.js'
import { until } from '../support/until.js'

describe('PostgreSQL driver facing a server that stops answering or answers late', () => {
  let behind: PostgresBehindProxy
  let proxy: TcpFaultProxy
  let db: PostgresDriver

  beforeAll(async () => {
    behind = await startPostgresBehindProxy('pg-unanswering', {
      maxConnections: 1,
      queryTimeoutMs: 300,
    })
    ;({ proxy, db } = behind)
  })
  afterAll(async () => {
    await behind?.close()
  })

  it('gives up on a statement after queryTimeoutMs and serves the next one on a new connection', async () => {
    const first = (await db.query<{ pid: number }>('SELECT pg_backend_pid() AS pid'))[0]?.pid
    proxy.dropServerBytes(true)
    await expect(db.query('SELECT 1')).rejects.toThrow('Query read timeout')
    proxy.dropServerBytes(false)
    const second = (await db.query<{ pid: number }>('SELECT pg_backend_pid() AS pid'))[0]?.pid
    expect(first).toBeTypeOf('number')
    expect(second).not.toBe(first)
  })

  it('fails a transaction whose statement gets no answer, and the next transaction commits', async () => {
    proxy.dropServerBytes(true)
    const failed = db.transaction(async (tx) => {
      await tx.query('SELECT 1')
    })
    await expect(failed).rejects.toThrow('Query read timeout')
    proxy.dropServerBytes(false)
    const value = await db.transaction(async (tx) => {
      return (await tx.query<{ v: number }>('SELECT 2 AS v'))[0]?.v
    })
    expect(value).toBe(2)
  })

  it('settles before ROLLBACK is answered, and the next transaction on the connection runs after it', async () => {
    await db.execute('CREATE TABLE notes (id integer PRIMARY KEY)')
    const pidOf = async (): Promise<number | undefined> =>
      (await db.query<{ pid: number }>('SELECT pg_backend_pid() AS pid'))[0]?.pid
    const pid = await pidOf()
    let settled = false
    const failed = db.transaction(async (tx) => {
      await tx.execute('INSERT INTO notes (id) VALUES (1)')
      proxy.holdServerBytes(true)
      throw new Error('the handler failed')
    })
    failed.then(
      () => (settled = true),
      () => (settled = true),
    )
    // The server has answered ROLLBACK; its answer is held back on the way.
    await until(() => proxy.heldBytes() > 0, 'the answer to ROLLBACK')
    await new Promise((resolve) => setImmediate(resolve))
    expect(settled).toBe(true)
    await expect(failed).rejects.toThrow('the handler failed')
    // Queued on the same connection behind the ROLLBACK, while its answer is still held.
    const next = db.transaction(async (tx) => {
      await tx.execute('INSERT INTO notes (id) VALUES (2)')
      return (await tx.query<{ id: number }>('SELECT id FROM notes ORDER BY id')).map((r) => r.id)
    })
    proxy.holdServerBytes(false)
    expect(await next).toEqual([2])
    expect((await db.query<{ id: number }>('SELECT id FROM notes')).map((r) => r.id)).toEqual([2])
    expect(await pidOf()).toBe(pid)
  })
})
