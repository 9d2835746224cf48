// The inbox in the application's own transaction (fromPgClient, fromBetterSqlite) on real
// databases: a handler that throws after its business write takes the dedupe record down with
// it when the application rolls back, so the redelivery runs the handler again.
import Database from 'better-sqlite3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createInbox } from '../../src/outbox/index.js'
import { fromBetterSqlite, fromPgClient } from '../../src/stores/index.js'
import { count, type DbTarget, type OutboxDb, postgresTarget, sqliteTarget } from './support.js'

/** A failed delivery leaves neither effect nor record; the next runs, the one after is a duplicate. */
async function failThenOnce(
  db: OutboxDb['db'],
  deliver: (fail: boolean) => Promise<{ readonly duplicate: boolean }>,
): Promise<void> {
  await expect(deliver(true)).rejects.toThrow('downstream failed')
  expect(await count(db, 'effects')).toBe(0)
  expect(await count(db, 'breakwater_inbox')).toBe(0)
  expect((await deliver(false)).duplicate).toBe(false)
  expect((await deliver(false)).duplicate).toBe(true)
}

/** A migrated database with an effects table for the describe block; read `db` in its tests. */
function withEffects(target: DbTarget): { readonly db: OutboxDb['db']; readonly url: string } {
  let t: OutboxDb | undefined
  beforeAll(async () => {
    t = await target.open('inbox_own_tx')
    await t.db.execute('CREATE TABLE effects (message_id TEXT NOT NULL)')
  })
  afterAll(async () => {
    await t?.close()
  })
  return {
    get db() {
      return t!.db
    },
    get url() {
      return t!.url
    },
  }
}

describe('inbox in the application own pg transaction (fromPgClient)', () => {
  const t = withEffects(postgresTarget)

  it('rolls the record back with a handler that throws after its write; the retry runs it', async () => {
    const pg = (await import('pg')).default
    const pool = new pg.Pool({ connectionString: t.url, max: 1 })
    const inbox = createInbox({ consumer: 'billing' })
    const message = { id: 'm-1' }
    let runs = 0
    const deliver = async (fail: boolean) => {
      const client = await pool.connect()
      try {
        await client.query('BEGIN')
        try {
          const result = await inbox.handle(fromPgClient(client), message, async (tx) => {
            runs++
            await tx.execute('INSERT INTO effects (message_id) VALUES ($1)', [message.id])
            if (fail) throw new Error('downstream failed')
          })
          await client.query('COMMIT')
          return result
        } catch (error) {
          await client.query('ROLLBACK')
          throw error
        }
      } finally {
        client.release()
      }
    }
    try {
      await failThenOnce(t.db, deliver)
      expect(runs).toBe(2)
      expect(await count(t.db, 'effects')).toBe(1)
    } finally {
      await pool.end()
    }
  })
})

describe('inbox in the application own better-sqlite3 transaction (fromBetterSqlite)', () => {
  const t = withEffects(sqliteTarget)

  it('rolls the record back with a handler that throws after its write; the retry runs it', async () => {
    const raw = new Database(t.url.slice('sqlite:'.length))
    raw.pragma('busy_timeout = 5000')
    const inbox = createInbox({ consumer: 'billing' })
    const message = { id: 'm-1' }
    const deliver = async (fail: boolean) => {
      raw.exec('BEGIN IMMEDIATE')
      try {
        const result = await inbox.handle(fromBetterSqlite(raw), message, async (tx) => {
          await tx.execute('INSERT INTO effects (message_id) VALUES ($1)', [message.id])
          if (fail) throw new Error('downstream failed')
        })
        raw.exec('COMMIT')
        return result
      } catch (error) {
        raw.exec('ROLLBACK')
        throw error
      }
    }
    try {
      await failThenOnce(t.db, deliver)
      expect(await count(t.db, 'effects')).toBe(1)
    } finally {
      raw.close()
    }
  })

  it('inside a synchronous db.transaction body: the record is refused (TRANSACTION_MISUSE), never committed without the effect', async () => {
    const raw = new Database(t.url.slice('sqlite:'.length))
    raw.pragma('busy_timeout = 5000')
    const inbox = createInbox({ consumer: 'sync' })
    let pending: Promise<unknown> | undefined
    try {
      raw.transaction(() => {
        pending = inbox.handle(fromBetterSqlite(raw), { id: 'm-sync' }, async (tx) => {
          await tx.execute('INSERT INTO effects (message_id) VALUES ($1)', ['m-sync'])
        })
      })()
      const outcome = await pending!.then(
        () => 'ok',
        (e: unknown) => e,
      )
      expect((outcome as { code?: string }).code).toBe('TRANSACTION_MISUSE')
      const recorded = await count(t.db, 'breakwater_inbox', "WHERE consumer = 'sync'")
      const effects = await count(t.db, 'effects', "WHERE message_id = 'm-sync'")
      // Either both or neither: never the record without the effect.
      expect(recorded).toBe(effects)
    } finally {
      raw.close()
    }
  })
})
