// A column added to the idempotency table while the application runs (`breakwater migrate`
// during a rolling upgrade) must not break the statements it prepared before. On PostgreSQL a
// prepared statement that reads `existing.*` fails with "cached plan must not change result
// type" once its table gains a column; the claim names the record's columns instead.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createIdempotency, idempotencyTable } from '../../src/idempotency/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('idempotency statements across a schema change on $dialect', (target) => {
  let t: TestDb
  let app: SqlDriver

  beforeAll(async () => {
    t = await target.open('idem_schema_change')
    // One connection: the statements prepared before the change are the ones used after it.
    app = await openDatabase(t.url, { postgres: { maxConnections: 1 } })
  })
  afterAll(async () => {
    await app?.close()
    await t?.close()
  })

  for (const claim of ['leased', 'in-transaction'] as const) {
    it(`claim: '${claim}': claims and replays after a column was added by another connection`, async () => {
      const idempotency = createIdempotency({ store: app, claim })
      let runs = 0
      const work = async () => ++runs
      expect(await idempotency.run(`${claim}-before`, work)).toBe(1)
      expect(await idempotency.run(`${claim}-before`, work)).toBe(1)

      await t.db.execute(
        `ALTER TABLE ${idempotencyTable} ADD COLUMN added_${claim.replace('-', '_')} TEXT`,
      )

      expect(await idempotency.run(`${claim}-before`, work)).toBe(1)
      expect(await idempotency.run(`${claim}-after`, work)).toBe(2)
      expect(await idempotency.run(`${claim}-after`, work)).toBe(2)
      expect(runs).toBe(2)
    })
  }
})
