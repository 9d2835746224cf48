// A stored record changed outside breakwater (a manual edit, a restored backup): its JSON columns
// used to fail every request with that key with a bare SyntaxError naming nothing. Now the error
// is STORED_DATA_INVALID naming the table, the key and the column, and the row is left as it is.
// Real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { idempotencyTable, idempotent } from '../../src/idempotency/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('a record changed outside breakwater on $dialect', (target) => {
  let test: TestDb
  beforeAll(async () => {
    test = await target.open('malformed-record')
  })
  afterAll(() => test.close())

  it.each(['response_headers', 'recovery_data'])(
    'names the key and the column %s when it is not JSON, and leaves the row as it is',
    async (column) => {
      const key = `charge-${column}`
      const options = { store: test.db, scope: 'billing' }
      expect(await idempotent(key, () => ({ charged: 1 }), options)).toEqual({ charged: 1 })
      await test.db.execute(`UPDATE ${idempotencyTable} SET ${column} = $1 WHERE idem_key = $2`, [
        '{not json',
        key,
      ])

      let ran = 0
      const error = await idempotent(key, () => ++ran, options).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(StoredDataError)
      expect(error).toMatchObject({
        code: 'STORED_DATA_INVALID',
        table: idempotencyTable,
        column,
      })
      expect((error as StoredDataError).message).toContain(`key "${key}"`)
      expect(ran).toBe(0)
      const rows = await test.db.query<{ value: string }>(
        `SELECT ${column} AS value FROM ${idempotencyTable} WHERE idem_key = $1`,
        [key],
      )
      expect(rows).toEqual([{ value: '{not json' }])
    },
  )
})
