// A server that stops answering while its connections stay open (frozen, or a firewall that
// drops the flow silently) must not stall the driver for good: queryTimeoutMs bounds each
// statement, and the connection it was sent on is destroyed rather than reused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createPostgresDriver, type PostgresDriver } from '../../src/stores/postgres.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'
import { proxiedUrl, type TcpFaultProxy } from '../support/tcp-fault-proxy.js'

describe('PostgreSQL driver facing a server that stops answering', () => {
  let database: TestDatabase
  let proxy: TcpFaultProxy
  let db: PostgresDriver

  beforeAll(async () => {
    database = await createTestDatabase('pg-unanswering')
    const proxied = await proxiedUrl(database.url)
    proxy = proxied.proxy
    db = await createPostgresDriver({
      connectionString: proxied.url,
      maxConnections: 1,
      queryTimeoutMs: 300,
    })
  })
  afterAll(async () => {
    await db?.close()
    await proxy?.close()
    await database?.drop()
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
})
