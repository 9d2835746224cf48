// idempotent(): a result JSON would not give back (a Map, a Set, a function, a BigInt, an
// object with only #private fields) used to be stored as something else ({} for a Map), so
// every later call got another value than the first. It is refused: INVALID_OPTION naming the
// path, the business write rolled back, nothing stored. A class instance with own fields is
// kept, as a plain object of them (the same rule as every other stored JSON value). Real
// SQLite and PostgreSQL.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { idempotencyTable, idempotent } from '../../src/idempotency/index.js'
import { countRows, dbTargets, type TestDb } from './databases.js'

class Money {
  constructor(readonly amount: number) {}
}

class Receipt {
  #id = 'r1'
  get id(): string {
    return this.#id
  }
}

const refused: ReadonlyArray<readonly [string, unknown, RegExp]> = [
  ['a Map', { byId: new Map([['a', 1]]) }, /a Map at result\.byId has no JSON form/],
  ['a Set', [new Set([1])], /a Set at result\[0\] has no JSON form/],
  [
    'an instance with only #private fields',
    { receipt: new Receipt() },
    /an instance of Receipt without own enumerable fields or toJSON at result\.receipt/,
  ],
  ['a BigInt', { n: 10n }, /a BigInt at result\.n/],
  ['a function', { f: () => 1 }, /a function at result\.f/],
  ['a Map as the result', new Map(), /a Map at result has no JSON form/],
]

describe.each(dbTargets)('idempotent() with a result JSON would change, on $dialect', (target) => {
  let testDb: TestDb

  beforeAll(async () => {
    testDb = await target.open('idem_result_json')
    await testDb.db.execute('CREATE TABLE writes (id TEXT PRIMARY KEY)')
  })
  afterAll(async () => {
    await testDb?.close()
  })

  it.each(refused)(
    'refuses %s, rolls the write back and stores nothing',
    async (_, value, message) => {
      const key = randomUUID()
      const options = { store: testDb.db, scope: 'result-json' }
      const error = await idempotent(
        key,
        async (ctx) => {
          await ctx.tx.execute('INSERT INTO writes (id) VALUES ($1)', [key])
          return value
        },
        options,
      ).catch((e: unknown) => e)
      expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'result' })
      expect(String((error as Error).message)).toMatch(message)
      expect(await countRows(testDb.db, 'writes', `WHERE id = '${key}'`)).toBe(0)
      expect(await countRows(testDb.db, idempotencyTable, `WHERE idem_key = '${key}'`)).toBe(0)
      // The key is free: a retry that returns JSON runs and is recorded.
      const retried = await idempotent(
        key,
        async (ctx) => {
          await ctx.tx.execute('INSERT INTO writes (id) VALUES ($1)', [key])
          return { ok: true }
        },
        options,
      )
      expect(retried).toEqual({ ok: true })
      expect(await countRows(testDb.db, 'writes', `WHERE id = '${key}'`)).toBe(1)
    },
  )

  it('keeps plain JSON results (and toJSON, undefined fields, class instances with fields)', async () => {
    const options = { store: testDb.db, scope: 'result-json-plain' }
    const when = new Date('2026-12-01T00:00:00.000Z')
    const value = {
      text: 'é',
      n: -1.5,
      list: [1, 'a', null, { deep: [true] }],
      none: null,
      skipped: undefined,
      when,
      boxed: Object(3),
      bare: Object.assign(Object.create(null), { x: 1 }),
      price: new Money(5),
    }
    const expected = JSON.parse(JSON.stringify(value))
    const key = randomUUID()
    expect(await idempotent(key, async () => value, options)).toEqual(expected)
    expect(await idempotent(key, async () => 'ran again', options)).toEqual(expected)
    for (const plain of ['s', 0, false, null, [1]]) {
      expect(await idempotent(randomUUID(), async () => plain, options)).toEqual(plain)
    }
    expect(await idempotent(randomUUID(), async () => undefined, options)).toBeUndefined()
  })
})
