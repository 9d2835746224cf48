// A statement pg refuses before sending it (a parameter it cannot serialize, such as an object
// holding a BigInt), on real PostgreSQL. The server's transaction is untouched by it, so the
// driver itself must refuse to commit what was written around it, whether the transaction ends
// with COMMIT or with finish(); and since pg closes the named statement on the server while
// counting it as prepared on that connection, the connection must not be used again.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { SqlDriver } from '../../src/stores/types.js'
import { type OpenedTarget, postgresTarget, uniqueTable } from './drivers.js'

describe('PostgreSQL statement refused by pg before sending', () => {
  let opened: OpenedTarget
  let db: SqlDriver
  let t: string

  beforeAll(async () => {
    // One connection: the statement after the refusal would get the same connection again.
    opened = await postgresTarget.open('refused_statement', { postgres: { maxConnections: 1 } })
    db = opened.db
    t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY, v JSONB)`)
  })
  afterAll(async () => {
    await opened?.cleanup()
  })

  const insert = () => `INSERT INTO ${t} (id, v) VALUES ($1, $2)`
  const ids = async () =>
    (await db.query<{ id: number }>(`SELECT id FROM ${t} ORDER BY id`)).map((row) => row.id)
  const unserializable = { amount: 1n }

  it('does not commit when a statement it did not wait for was refused (COMMIT)', async () => {
    const sql = insert()
    const refused = await db
      .transaction(async (tx) => {
        void tx.execute(sql, [1, '{}']).catch(() => {})
        void tx.execute(sql, [2, unserializable]).catch(() => {})
        void tx.execute(sql, [3, '{}']).catch(() => {})
      })
      .catch((error: unknown) => error)
    expect(refused).toBeInstanceOf(TypeError)
    expect(await ids()).toEqual([])
    // The same statement text works afterwards (a fresh connection, prepared afresh).
    await db.execute(sql, [4, '{}'])
    expect(await ids()).toEqual([4])
  })

  it('does not commit when a statement it did not wait for was refused (finish)', async () => {
    const sql = insert()
    const refused = await db
      .transaction(async (tx) => {
        void tx.execute(sql, [11, unserializable]).catch(() => {})
        await tx.finish!(sql, [12, '{}'])
      })
      .catch((error: unknown) => error)
    expect(refused).toBeInstanceOf(TypeError)
    expect(await ids()).not.toContain(12)
    await db.execute(sql, [13, '{}'])
    expect(await ids()).toContain(13)
  })
})
