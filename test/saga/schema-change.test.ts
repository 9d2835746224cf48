// A column added to the saga table while workers run (`breakwater migrate` during a rolling
// upgrade) must not break the statements they prepared before it. On PostgreSQL a prepared
// statement that reads `*` fails with "cached plan must not change result type" once its
// table gains a column; every statement of the saga capability names its columns instead.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { getSaga } from '../../src/saga/index.js'
import { sagaStatements, sagaTable } from '../../src/saga/sql.js'
import { claimInstances, stringListParam } from '../../src/saga/store.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { dbTargets, leaseFrom, type TestDb } from './databases.js'

describe.each(dbTargets)('saga statements across a schema change on $dialect', (target) => {
  let t: TestDb
  let worker: SqlDriver

  beforeAll(async () => {
    t = await target.open('saga_schema_change')
    // One connection: the statements prepared before the change are the ones used after it.
    worker = await openDatabase(t.url, { postgres: { maxConnections: 1 } })
  })
  afterAll(async () => {
    await worker?.close()
    await t?.close()
  })

  it('reads and claims instances after a column was added by another connection', async () => {
    const insert = sagaStatements[worker.dialect].insert
    // One step: a running instance is at one of its steps (getSaga refuses one at none).
    const steps = JSON.stringify([{ name: 'a', status: 'pending', attempts: 0 }])
    const row = (id: string) => [id, 'order', 1, 'order@1', '{}', steps, 0, null, null, 0, 0, 0]
    await worker.execute(insert, row('before'))
    expect((await getSaga(worker, 'before'))?.status).toBe('running')
    const keys = stringListParam(worker, ['order@1'])
    expect(
      (await claimInstances(worker, 'w1', leaseFrom(0, 10), keys, 1)).map((r) => r.id),
    ).toEqual(['before'])

    await t.db.execute(`ALTER TABLE ${sagaTable} ADD COLUMN added_later TEXT`)

    await worker.execute(insert, row('after'))
    expect((await getSaga(worker, 'after'))?.status).toBe('running')
    const claimed = await claimInstances(worker, 'w1', leaseFrom(0, 10), keys, 1)
    expect(claimed.map((r) => r.id)).toEqual(['after'])
    expect(Object.keys(claimed[0] ?? {})).not.toContain('added_later')
  })
})
