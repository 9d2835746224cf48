// `breakwater saga show` prints stored text (a reason, an error message, an operator's reason)
// on one line: a line break in it broke the steps table and the timeline (found by exploratory
// testing). Breaks are shown escaped, as \n and \r.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sagaCommand } from '../../src/cli/saga.js'
import { cancelSaga, createSagaWorker, defineSaga, startSaga } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('saga show with line breaks in stored text on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_cli_one_line')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('prints each on one line', async () => {
    const saga = defineSaga({
      name: `one-line-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'a', action: async () => ({ a: 1 }), compensation: async () => {} },
        {
          name: 'b',
          retry: { maxAttempts: 1 },
          action: async () => {
            throw new Error('first line\nsecond line\r\nthird')
          },
        },
      ],
    })
    const clock = new ManualClock(0)
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const failed = await worker.run(saga, {})
    const cancelled = await startSaga(t.db, saga, {}, { clock })
    await cancelSaga(t.db, cancelled.id, { reason: 'ops\nrequest', clock })
    await worker.poll()
    for (const id of [failed.id, cancelled.id]) {
      let out = ''
      const code = await sagaCommand(['show', id, '--db', t.url], {
        stdout: { write: (text: string) => (out += text) },
        stderr: { write: () => {} },
      })
      expect(code).toBe(0)
      const lines = out.split('\n')
      // Every line is a field, a table row or a timeline entry: none starts with stored text.
      for (const line of lines) {
        expect(line).not.toMatch(/^(second line|third|request)/)
      }
    }
    let out = ''
    await sagaCommand(['show', failed.id, '--db', t.url], {
      stdout: { write: (text: string) => (out += text) },
      stderr: { write: () => {} },
    })
    expect(out).toContain('first line\\nsecond line\\r\\nthird')
  })
})
