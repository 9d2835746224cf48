// fromPgClient handed the application's pg Pool instead of the PoolClient its transaction runs
// on, against real PostgreSQL: through the pool, breakwater's statement would run on another
// connection and commit on its own, apart from the business write (and survive its rollback).
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { fromPgClient } from '../../src/stores/postgres.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'

describe('fromPgClient given a pg Pool', () => {
  let database: TestDatabase
  let pool: pg.Pool

  beforeAll(async () => {
    database = await createTestDatabase('pg_client_pool')
    pool = new pg.Pool({ connectionString: database.url })
    await pool.query('CREATE TABLE events (id TEXT PRIMARY KEY)')
  })
  afterAll(async () => {
    await pool?.end()
    await database?.drop()
  })

  it('is refused with INVALID_OPTION naming the mistake, and nothing commits apart', async () => {
    const client = await pool.connect()
    let refused: unknown
    try {
      await client.query('BEGIN')
      await client.query("INSERT INTO events (id) VALUES ('order')")
      try {
        // @ts-expect-error a Pool does not compile either (its totalCount and idleCount)
        await fromPgClient(pool).execute("INSERT INTO events (id) VALUES ('event-via-pool')")
      } catch (error) {
        refused = error
      }
      await client.query('ROLLBACK')
    } finally {
      client.release()
    }
    expect(refused).toBeInstanceOf(InvalidOptionError)
    expect(BreakwaterError.is(refused) && refused.code).toBe('INVALID_OPTION')
    expect((refused as InvalidOptionError).option).toBe('client')
    expect((refused as Error).message).toMatch(/a pg Pool, not a PoolClient/)
    expect((refused as Error).message).toMatch(/pass the client your transaction runs on/)
    expect((await pool.query('SELECT id FROM events')).rows).toEqual([])
  })

  it('still takes the PoolClient checked out of that pool, and a Client', async () => {
    const pooled = await pool.connect()
    const client = new pg.Client({ connectionString: database.url })
    await client.connect()
    try {
      for (const held of [pooled, client]) {
        await held.query('BEGIN')
        await fromPgClient(held).execute('INSERT INTO events (id) VALUES ($1)', [
          held === pooled ? 'pooled' : 'client',
        ])
        await held.query('COMMIT')
      }
    } finally {
      pooled.release()
      await client.end()
    }
    expect((await pool.query('SELECT id FROM events ORDER BY id')).rows).toEqual([
      { id: 'client' },
      { id: 'pooled' },
    ])
  })
})
