// `breakwater saga list` shows at most --limit instances (default 50), newest first. With more
// matching it printed the first 50 as if they were all: an operator counting parked sagas with
// `saga list --status failed` read 50 where 73 were parked. The table now says when more match
// (the outbox's `dead` says so too); --json stays a bare array of at most --limit instances.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sagaCommand } from '../../src/cli/saga.js'
import { createSagaWorker, defineSaga, migrateSagas } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { runCaptured } from './captured.js'

describe('breakwater saga list with more instances than --limit', () => {
  let file: TestSqlite
  beforeAll(async () => {
    file = createTestSqlite('saga-list-more')
    const db = await openDatabase(file.url)
    try {
      await migrateSagas(db)
      const saga = defineSaga({
        name: 'noop',
        version: 1,
        steps: [{ name: 'a', action: async () => ({}) }],
      })
      const clock = new ManualClock(Date.now())
      const worker = createSagaWorker({ db, sagas: [saga], clock })
      for (let i = 0; i < 3; i++) {
        await worker.run(saga, { i })
        clock.advance(1_000)
      }
    } finally {
      await db.close()
    }
  })
  afterAll(() => file?.cleanup())

  const rowsOf = (stdout: string) => stdout.split('\n').filter((l) => /^[0-9a-f]{8}-/.test(l))

  it('says that more match, and how to see them', async () => {
    const result = await runCaptured(sagaCommand, ['list', '--limit', '2', '--db', file.url])
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    expect(rowsOf(result.stdout)).toHaveLength(2)
    expect(result.stdout).toContain(
      '(the newest 2; more instances match: give a larger --limit, or filter with --status or --name)',
    )
  })

  it('says nothing more when every match is shown, the limit reached or not', async () => {
    for (const limit of ['3', '50']) {
      const result = await runCaptured(sagaCommand, ['list', '--limit', limit, '--db', file.url])
      expect(result.code).toBe(0)
      expect(rowsOf(result.stdout)).toHaveLength(3)
      expect(result.stdout).not.toContain('more instances match')
    }
  })

  it('--json is an array of at most --limit instances, nothing else', async () => {
    const result = await runCaptured(sagaCommand, [
      'list',
      '--json',
      '--limit',
      '2',
      '--db',
      file.url,
    ])
    expect(result.code).toBe(0)
    expect(result.stderr).toBe('')
    expect(JSON.parse(result.stdout)).toHaveLength(2)
  })
})
