// A stored record changed outside breakwater (a manual edit, a restored backup): its JSON columns
// used to fail every request with that key with a bare SyntaxError naming nothing. Now the error
// is STORED_DATA_INVALID naming the table, the key and the column, and the row is left as it is.
// Real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  defaultFingerprint,
  type IdempotencyRequest,
  idempotencyTable,
  idempotent,
} from '../../src/idempotency/index.js'
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

describe.each(dbTargets)('a record whose JSON has the wrong shape on $dialect', (target) => {
  let test: TestDb
  beforeAll(async () => {
    test = await target.open('malformed-record-shape')
  })
  afterAll(() => test.close())

  const requestFor = (key: string): IdempotencyRequest => ({
    method: 'POST',
    route: '/charges',
    body: Buffer.from('{}'),
    header: (name) => (name === 'idempotency-key' ? key : undefined),
  })

  // JSON, but not the object breakwater writes: null headers failed the replay with a bare
  // TypeError (Object.keys of null); null phases were handed on as the record's phases.
  it.each([
    ['response_headers', 'null', 'null'],
    ['response_headers', '["content-type"]', 'an array of 1'],
    ['recovery_data', 'null', 'null'],
    ['recovery_data', '7', '7'],
  ])('names the key and the column %s when it holds %s', async (column, stored, described) => {
    const key = `shape-${column}-${described.replaceAll(' ', '-')}`
    const now = Date.now()
    const values: Record<string, string> = { response_headers: '{}', recovery_data: '{}' }
    values[column] = stored
    await test.db.execute(
      `INSERT INTO ${idempotencyTable} (scope, idem_key, fingerprint, state, lease_token,
         lease_expires_at, attempt, recovery_data, response_status, response_headers,
         response_body, created_at, updated_at, expires_at)
       VALUES ($1, $2, $3, 'completed', 'old-token', NULL, 1, $4, 201, $5, $6, $7, $7, $8)`,
      [
        'anonymous',
        key,
        defaultFingerprint(requestFor(key)),
        values.recovery_data,
        values.response_headers,
        Buffer.from('ok'),
        now,
        now + 3_600_000,
      ],
    )

    const idempotency = createIdempotency({ store: test.db })
    const error = await idempotency.begin(requestFor(key)).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoredDataError)
    expect(error).toMatchObject({ code: 'STORED_DATA_INVALID', table: idempotencyTable, column })
    expect((error as StoredDataError).message).toContain(`key "${key}"`)
    expect((error as StoredDataError).message).toContain(`is not a JSON object: ${described}`)
  })
})

describe.each(dbTargets)(
  'a recorded result body changed outside breakwater on $dialect',
  (target) => {
    let test: TestDb
    beforeAll(async () => {
      test = await target.open('malformed-record-body')
    })
    afterAll(() => test.close())

    // Records `{ charged: 1 }` under the key, sets its body to `edited`, and returns what the
    // next call with the key throws (checking that the function did not run).
    async function replayAfterEdit(key: string, edited: unknown): Promise<StoredDataError> {
      const options = { store: test.db, scope: 'tenant-secret' }
      expect(await idempotent(key, () => ({ charged: 1 }), options)).toEqual({ charged: 1 })
      await test.db.execute(
        `UPDATE ${idempotencyTable} SET response_body = $1 WHERE idem_key = $2`,
        [edited, key],
      )
      let ran = 0
      const error = await idempotent(key, () => ++ran, options).catch((e: unknown) => e)
      expect(ran).toBe(0)
      expect(error).toBeInstanceOf(StoredDataError)
      expect(error).toMatchObject({
        code: 'STORED_DATA_INVALID',
        table: idempotencyTable,
        column: 'response_body',
      })
      const { message } = error as StoredDataError
      expect(message).toContain(`key "${key}"`)
      expect(message).not.toContain('tenant-secret')
      return error as StoredDataError
    }

    // The body of an idempotent() result is its JSON text: one that is no longer JSON failed each
    // call with its key with a bare SyntaxError naming nothing.
    it('names the key and the column, not the scope, and leaves the row as it is', async () => {
      const error = await replayAfterEdit('charge-body', Buffer.from('{"charged": 1'))
      expect(error.message).toContain('is not JSON')
      const rows = await test.db.query<{ body: Uint8Array }>(
        `SELECT response_body AS body FROM ${idempotencyTable} WHERE idem_key = $1`,
        ['charge-body'],
      )
      expect(Buffer.from(rows[0]!.body).toString()).toBe('{"charged": 1')
    })

    // SQLite keeps text set into the BLOB column as text (PostgreSQL casts it to bytea): the
    // record's body was then a string, and idempotent() failed with a bare TypeError.
    it.runIf(target.dialect === 'sqlite')(
      'names the key and the column when it is text',
      async () => {
        const error = await replayAfterEdit('charge-text-body', '{"charged":2}')
        expect(error.message).toContain('is not bytes (string)')
      },
    )
  },
)
