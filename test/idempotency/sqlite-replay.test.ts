// On SQLite a replay reads the record before anything else, so it needs no write: it answers
// even while another process holds the database's only write lock (a claim, which writes,
// would queue behind that writer until the busy timeout). Real SQLite files, two connections.
import { createRequire } from 'node:module'
import { afterEach, describe, expect, it } from 'vitest'
import {
  IdempotencyMismatchError,
  idempotent,
  migrateIdempotency,
} from '../../src/idempotency/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'

const BetterSqlite = createRequire(import.meta.url)('better-sqlite3') as new (
  filename: string,
) => { exec(sql: string): void; close(): void }

describe.each(['leased', 'in-transaction'] as const)("SQLite replays with claim: '%s'", (claim) => {
  let file: TestSqlite | undefined
  let db: SqlDriver | undefined
  afterEach(async () => {
    await db?.close()
    file?.cleanup()
  })

  it('replays a completed key and refuses a mismatch while another process holds the write lock', async () => {
    file = createTestSqlite('replay')
    // A short busy timeout: a statement that needs the write lock fails fast instead of waiting.
    db = await openDatabase(file.url, { sqlite: { busyTimeoutMs: 100 } })
    await migrateIdempotency(db)
    const options = { store: db, claim, fingerprint: 'order-1' }
    let runs = 0
    const work = async () => {
      runs++
      return { charged: 42 }
    }
    expect(await idempotent('charge-1', work, options)).toEqual({ charged: 42 })

    const otherProcess = new BetterSqlite(file.filename)
    otherProcess.exec('BEGIN IMMEDIATE')
    try {
      expect(await idempotent('charge-1', work, options)).toEqual({ charged: 42 })
      await expect(
        idempotent('charge-1', work, { ...options, fingerprint: 'order-2' }),
      ).rejects.toBeInstanceOf(IdempotencyMismatchError)
      // A new key does need the lock, and says so once the busy timeout has passed.
      await expect(idempotent('charge-2', work, options)).rejects.toThrow(/locked|busy/i)
    } finally {
      otherProcess.exec('ROLLBACK')
      otherProcess.close()
    }
    expect(runs).toBe(1)
    expect(await idempotent('charge-2', work, options)).toEqual({ charged: 42 })
    expect(runs).toBe(2)
  })
})
