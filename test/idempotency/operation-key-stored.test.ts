// idempotent() now refuses keys holding a C1 control or U+2028/U+2029, which it took before. The
// check is on new input only: a record an earlier version stored under such a key is still read
// by the store and swept when it expires. Real SQLite.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSqlIdempotencyStore,
  IdempotencyKeyInvalidError,
  idempotencyTable,
  idempotent,
  sweepExpired,
} from '../../src/idempotency/index.js'
import { sqliteDb, type TestDb } from './databases.js'

describe('a key stored before C1 controls and line separators were refused', () => {
  let test: TestDb
  beforeAll(async () => {
    test = await sqliteDb.open('operation-key-stored')
  })
  afterAll(() => test.close())

  it.each([['next-line\u0085key'], ['line\u2028separator']])(
    'is read and swept as before (%j), and refused as a new call',
    async (key) => {
      const now = Date.now()
      await test.db.execute(
        `INSERT INTO ${idempotencyTable} (scope, idem_key, fingerprint, state, lease_token,
           lease_expires_at, attempt, response_status, response_headers, response_body,
           created_at, updated_at, expires_at)
         VALUES ('default', $1, '', 'completed', 'old-token', NULL, 1, NULL, '{}', $2, $3, $3, $4)`,
        [key, Buffer.from('"done"'), now - 2_000, now - 1_000],
      )
      const store = createSqlIdempotencyStore(test.db)
      expect(await store.get('default', key)).toMatchObject({ key, state: 'completed' })

      await expect(idempotent(key, () => 'ran', { store })).rejects.toBeInstanceOf(
        IdempotencyKeyInvalidError,
      )

      expect(await sweepExpired(store)).toBe(1)
      expect(await store.get('default', key)).toBeUndefined()
    },
  )
})
