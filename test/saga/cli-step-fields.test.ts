// `breakwater saga show` on a step entry whose shown-only fields were changed outside
// breakwater. getSaga checks the fields a worker acts on; `compensationAttempts` and an error's
// `name` and `message` are only shown, and were shown as whatever they held: `done (many
// attempts)`, `pending (-3 attempts)`, and `undefined: undefined` for an error without them, as
// if a step had thrown an error named "undefined". They are shown as unreadable now; `--json`
// gives them as stored. Real SQLite.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defineSaga, startSaga } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { sqliteDb, type TestDb } from './databases.js'
import { runSagaCommand } from './saga-command.js'

describe('saga show on step fields that are only shown, on SQLite', () => {
  let t: TestDb
  const clock = new ManualClock(1_700_000_000_000)
  beforeAll(async () => {
    t = await sqliteDb.open('saga_cli_step_fields')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('shows a compensation count or an error that is not of its kind as unreadable', async () => {
    const saga = defineSaga({
      name: 'step-fields',
      version: 1,
      steps: [
        { name: 'a', action: async () => ({}), compensation: async () => {} },
        { name: 'b', action: async () => ({}), compensation: async () => {} },
        { name: 'c', action: async () => ({}) },
      ],
    })
    const { id } = await startSaga(t.db, saga, null, { clock })
    const steps = [
      { name: 'a', status: 'compensated', attempts: 1, compensationAttempts: 'many' },
      { name: 'b', status: 'completed', attempts: 1, compensationAttempts: -3, error: {} },
      { name: 'c', status: 'failed', attempts: 1, error: { name: 7, message: ['x'] } },
    ]
    await t.db.execute(
      `UPDATE breakwater_sagas SET steps = $1, status = 'compensating', step_index = 1 WHERE id = $2`,
      [JSON.stringify(steps), id],
    )
    const show = await runSagaCommand(t, ['show', id])
    expect(show.code).toBe(0)
    const row = (step: string) => show.out.split('\n').find((l) => l.startsWith(`  ${step}  `))
    expect(row('1')).toContain('done (unreadable attempts)')
    expect(row('2')).toContain('pending (unreadable attempts)')
    expect(row('2')).toContain('(unreadable error)')
    expect(row('3')).toContain('(unreadable error)')
    expect(show.out).not.toContain('undefined')
    expect(show.out).not.toContain('many attempts')

    const json = JSON.parse((await runSagaCommand(t, ['show', id, '--json'])).out) as {
      saga: { steps: unknown[] }
    }
    expect(json.saga.steps).toEqual(steps)
  })
})
