// `breakwater saga list|show` print what the database holds: step errors, the timeline's
// errors and the parking reason are text a step threw, and may quote a connection URL. Like
// the outbox's dead list, the output never shows its password, in the table and in --json.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sagaCommand } from '../../src/cli/saga.js'
import { createSagaWorker, migrateSagas } from '../../src/saga/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { runCaptured } from './captured.js'
import { parkingSaga } from './fixtures/parking-saga.js'

// The JSON was masked as text, after JSON.stringify: a secret the mask runs to the end of
// (`password=...`, `Bearer ...`) took the closing quote with it, and --json printed JSON that
// does not parse.
describe.each([
  ['cannot reach postgres://app:hunter2-pw@db/app', 'postgres://app:***@db/app'],
  ['login refused: password=hunter2-pw', 'password=***'],
  ['401 for Authorization: Bearer hunter2-tok', 'Bearer ***'],
  ['GET http://api/x?token=hunter2-tok failed', 'token=***'],
])('breakwater saga list|show: a secret in stored errors (%s)', (leaky, masked) => {
  let file: TestSqlite
  let db: SqlDriver
  let id: string
  beforeAll(async () => {
    file = createTestSqlite('saga-output')
    db = await openDatabase(file.url)
    await migrateSagas(db)
    const saga = parkingSaga('leaky', leaky)
    const worker = createSagaWorker({ db, sagas: [saga], clock: new ManualClock(Date.now()) })
    id = (await worker.run(saga, {})).id
  })
  afterAll(async () => {
    await db?.close()
    file?.cleanup()
  })

  it.each([[['show']], [['show', '--json']], [['list']], [['list', '--json']]])(
    'saga %j masks it',
    async (words) => {
      const [command, ...flags] = words
      const args =
        command === 'show'
          ? [command, id, ...flags, '--db', file.url]
          : [command!, ...flags, '--db', file.url]
      const result = await runCaptured(sagaCommand, args)
      expect(result.stderr).toBe('')
      expect(result.code).toBe(0)
      expect(result.stdout).toContain(id)
      expect(result.stdout).not.toContain('hunter2')
      if (command === 'show') expect(result.stdout).toContain(masked)
      if (flags.includes('--json')) {
        const parsed = JSON.parse(result.stdout)
        if (command === 'show') expect(JSON.stringify(parsed)).toContain(masked)
      }
    },
  )
})
