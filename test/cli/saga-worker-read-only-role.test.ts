// `breakwater saga worker` connected as a PostgreSQL role that may read the saga tables but not
// write them (a read-only role, a missing GRANT): it said "saga worker started", then logged
// "permission denied for table breakwater_sagas" at every poll for as long as it ran, claiming
// nothing (the relay, which writes its lease at start, already failed). It now tries the
// writes it will make, changing nothing, before it starts: exit 1 naming the table. Found by
// exploratory testing.
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { openDatabase } from '../../src/stores/index.js'
import { runCli, spawnCliFromSources } from '../process/cli-process.js'
import { createTestDatabase } from '../support/postgres.js'

const module = fileURLToPath(new URL('./fixtures/hanging-sagas.ts', import.meta.url))
const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})

describe('breakwater saga worker as a role that may not write the saga tables', () => {
  it('refuses to start, naming the table, exit 1', async () => {
    const database = await createTestDatabase('worker-read-only-role')
    cleanups.push(() => database.drop())
    const migrated = await runCli(['migrate', '--db', database.url])
    expect(migrated.code, migrated.stderr).toBe(0)
    const role = `bw_reader_${randomBytes(4).toString('hex')}`
    const db = await openDatabase(database.url)
    try {
      await db.execute(`CREATE ROLE ${role} LOGIN PASSWORD 'reader'`)
      await db.execute(`GRANT USAGE ON SCHEMA public TO ${role}`)
      await db.execute(`GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${role}`)
    } finally {
      await db.close()
    }
    cleanups.push(async () => {
      const admin = await openDatabase(database.url)
      try {
        await admin.execute(`DROP OWNED BY ${role}`)
        await admin.execute(`DROP ROLE ${role}`)
      } finally {
        await admin.close()
      }
    })
    const url = new URL(database.url)
    url.username = role
    url.password = 'reader'
    const worker = spawnCliFromSources([
      'saga',
      'worker',
      '--module',
      module,
      '--db',
      url.toString(),
      '--poll-interval-ms',
      '10',
    ])
    cleanups.push(() => worker.kill())
    const exit = await Promise.race([
      worker.exited,
      worker
        .waitForLine((l) => l.msg === 'saga error', 'a saga error')
        .then(() => 'ran on with errors' as const),
    ])
    expect(exit, worker.stdout() + worker.stderr()).toEqual({ code: 1, signal: null })
    expect(worker.stderr()).toMatch(
      /^breakwater saga worker: cannot write postgres:\/\/bw_reader_[0-9a-f]+:\*\*\*@[^ ]+: permission denied for table breakwater_sagas\n$/,
    )
    expect(worker.lines.map((l) => l.msg)).not.toContain('saga worker started')
  })
})
