// `breakwater saga retry|cancel` print the saga id they acted on. An id is checked at start
// (startSaga takes A-Z a-z 0-9 - _ . : ~ + / =), but a row written outside breakwater may hold
// anything, and `saga list` shows such an id escaped (see printable): retry and cancel printed
// it as it was, so an escape sequence in it acted on the terminal (\u001b[2J cleared the
// screen), as did one in an id given on the command line and refused as unknown (C1 controls
// such as \u009b pass JSON.stringify's quoting).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sagaCommand } from '../../src/cli/saga.js'
import { createSagaWorker, migrateSagas, startSaga } from '../../src/saga/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { runCaptured } from './captured.js'
import { hanging } from './fixtures/hanging-sagas.js'
import { parkingSaga } from './fixtures/parking-saga.js'

const parkedId = 'parked\u001b[2J-1\u009b31m'
const runningId = 'running\u001b]0;owned\u0007-2'
const escaped = (id: string) =>
  id.replace(/\p{Cc}/gu, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)

describe('breakwater saga retry|cancel with control characters in the id', () => {
  let file: TestSqlite
  let db: SqlDriver
  beforeAll(async () => {
    file = createTestSqlite('saga-admin-id-controls')
    db = await openDatabase(file.url)
    await migrateSagas(db)
    const parks = parkingSaga('parks', 'refused')
    const worker = createSagaWorker({ db, sagas: [parks], clock: new ManualClock(Date.now()) })
    await worker.run(parks, {}, { id: 'parked-1' })
    await startSaga(db, hanging, {}, { id: 'running-2' })
    // Changed outside breakwater, as printable's other callers assume stored text can be.
    for (const [from, to] of [
      ['parked-1', parkedId],
      ['running-2', runningId],
    ] as const) {
      for (const table of ['breakwater_sagas', 'breakwater_saga_events'])
        await db.execute(
          `UPDATE ${table} SET ${table === 'breakwater_sagas' ? 'id' : 'saga_id'} = $1 WHERE ${table === 'breakwater_sagas' ? 'id' : 'saga_id'} = $2`,
          [to, from],
        )
    }
  })
  afterAll(async () => {
    await db?.close()
    file?.cleanup()
  })

  it.each([
    ['retry', parkedId, 're-queued'],
    ['cancel', runningId, 'cancel requested'],
    ['cancel', runningId, 'cancel already requested'],
  ])('%s shows the id escaped', async (command, id, says) => {
    const result = await runCaptured(sagaCommand, [command, id, '--db', file.url])
    expect(result).toMatchObject({ code: 0, stderr: '' })
    expect(result.stdout).toBe(result.stdout.replace(/[\p{Cc}]/gu, (c) => (c === '\n' ? c : '')))
    expect(result.stdout).toContain(`saga ${escaped(id)}: ${says}`)
  })

  it.each([
    ['retry', 'unknown\u009b2J'],
    ['retry', runningId],
    ['cancel', parkedId],
  ])('%s refused shows the id escaped', async (command, id) => {
    const result = await runCaptured(sagaCommand, [command, id, '--db', file.url])
    expect(result.code).toBe(1)
    expect(result.stderr.replaceAll('\n', '')).not.toMatch(/\p{Cc}/u)
    expect(result.stderr).toContain(escaped(id))
  })
})
