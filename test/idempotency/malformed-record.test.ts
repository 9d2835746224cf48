// A stored record changed outside breakwater (a manual edit, a restored backup): its JSON columns
// used to fail every request with that key with a bare SyntaxError naming nothing. Now the error
// is STORED_DATA_INVALID naming the table, the key and the column, and the row is left as it is.
// Real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createSqlIdempotencyStore,
  defaultFingerprint,
  type IdempotencyRequest,
  idempotencyTable,
  idempotent,
} from '../../src/idempotency/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { dbTargets, type TestDb } from './databases.js'

/** A request with the idempotency key `key`, as the records the tests insert were claimed. */
const requestFor = (key: string): IdempotencyRequest => ({
  method: 'POST',
  route: '/charges',
  body: Buffer.from('{}'),
  header: (name) => (name === 'idempotency-key' ? key : undefined),
})

/** Checks that `error` is STORED_DATA_INVALID naming the table, the key and the column. */
function expectNamed(error: unknown, key: string, column: string, problem = ''): void {
  expect(error).toBeInstanceOf(StoredDataError)
  expect(error).toMatchObject({ code: 'STORED_DATA_INVALID', table: idempotencyTable, column })
  expect((error as StoredDataError).message).toContain(`key "${key}"`)
  expect((error as StoredDataError).message).toContain(problem)
}

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
      expectNamed(error, key, column)
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

describe.each(dbTargets)('a record number changed outside breakwater on $dialect', (target) => {
  let test: TestDb
  beforeAll(async () => {
    test = await target.open('malformed-record-number')
  })
  afterAll(() => test.close())

  // Inserts a record of `key` as breakwater writes it, `column` set to `stored`: completed (201,
  // body 'ok'), or in progress under a lease that ends in a minute.
  async function insertWith(key: string, completed: boolean, column: string, stored: unknown) {
    const now = Date.now()
    const values: Record<string, unknown> = {
      lease_expires_at: completed ? null : now + 60_000,
      attempt: 1,
      response_status: completed ? 201 : null,
      created_at: now,
      updated_at: now,
      expires_at: now + 3_600_000,
    }
    values[column] = stored
    await test.db.execute(
      `INSERT INTO ${idempotencyTable} (scope, idem_key, fingerprint, state, lease_token,
         lease_expires_at, attempt, recovery_data, response_status, response_headers,
         response_body, created_at, updated_at, expires_at)
       VALUES ($1, $2, $3, $4, 'old-token', $5, $6, '{}', $7, $8, $9, $10, $11, $12)`,
      [
        'anonymous',
        key,
        defaultFingerprint(requestFor(key)),
        completed ? 'completed' : 'in_progress',
        values.lease_expires_at,
        values.attempt,
        values.response_status,
        completed ? '{}' : null,
        completed ? Buffer.from('ok') : null,
        values.created_at,
        values.updated_at,
        values.expires_at,
      ],
    )
  }

  // SQLite keeps text set into an INTEGER column as text, and a fraction as a real; Number() made
  // the text NaN: a NaN status failed every replay, a NaN lease end made callers poll NaN ms, a NaN
  // retention end kept the record forever. PostgreSQL's INTEGER takes a status no response can be
  // sent with, or an attempt below 1. Each is refused as the Redis store refuses it.
  const cases: [string, boolean, unknown, string, readonly string[]][] = [
    ['response_status', true, 'created', 'is not an HTTP status from 100 to 599', ['sqlite']],
    ['response_status', true, 42, 'is not an HTTP status from 100 to 599', ['sqlite', 'postgres']],
    ['response_status', true, 201.5, 'is not an HTTP status from 100 to 599', ['sqlite']],
    ['attempt', true, 'two', 'is not a number', ['sqlite']],
    ['attempt', false, 0, 'is not a positive whole number', ['sqlite', 'postgres']],
    ['attempt', false, 1.5, 'is not a positive whole number', ['sqlite']],
    // A negative attempt is a number, just not a positive whole one (pinned when the store
    // began reading columns with the shared readStoredNumber, which takes a sign).
    ['attempt', false, -1, 'is not a positive whole number', ['sqlite', 'postgres']],
    ['lease_expires_at', false, 'soon', 'is not a number', ['sqlite']],
    // An in-progress record without a lease end was taken for expired, but the takeover
    // (lease_expires_at <= now) never matches NULL: every call got 409 in-progress for the
    // record's whole retention, and nothing was reported.
    ['lease_expires_at', false, null, 'is empty on a record in progress', ['sqlite', 'postgres']],
    ['created_at', true, 'yesterday', 'is not a number', ['sqlite']],
    ['updated_at', false, '', 'is not a number', ['sqlite']],
    ['expires_at', true, 'tomorrow', 'is not a number', ['sqlite']],
  ]
  it.each(cases.filter(([, , , , dialects]) => dialects.includes(target.dialect)))(
    'names the key and the column %s (completed: %s) when it holds %j, on begin and get',
    async (column, completed, stored, problem) => {
      const key = `number-${column}-${completed}-${String(stored)}`
      await insertWith(key, completed, column, stored)

      const idempotency = createIdempotency({ store: test.db })
      const begun = await idempotency.begin(requestFor(key)).catch((e: unknown) => e)
      expectNamed(begun, key, column, problem)
      const store = createSqlIdempotencyStore(test.db)
      expectNamed(await store.get('anonymous', key).catch((e: unknown) => e), key, column, problem)
      const rows = await test.db.query<{ value: unknown }>(
        `SELECT ${column} AS value FROM ${idempotencyTable} WHERE idem_key = $1`,
        [key],
      )
      expect(rows).toEqual([{ value: stored }])
    },
  )
})
