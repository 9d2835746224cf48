// `breakwater saga list` and `show` print every piece of stored text on its line. The reason,
// errors and step names were escaped already (cli-show-one-line.test.ts), but the id, the saga
// name, the lease owner, the input and the context were printed as stored: a worker id with a
// line break (createSagaWorker takes one) split `saga show`'s lease line, its rest reading as a
// field of its own, and an edited name or id did the same to a row of `saga list`; a line
// separator (U+2028) or a C1 control (U+009B, a terminal's CSI) in the input or context, which
// JSON leaves as they are, reached the terminal. Shown escaped now, as the rest is.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSagaWorker, defineSaga, startSaga } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, holdingSaga, type TestDb } from './databases.js'
import { runSagaCommand } from './saga-command.js'

describe.each(dbTargets)('stored text in saga list and show on $dialect', (target) => {
  let t: TestDb
  const clock = new ManualClock(1_700_000_000_000)
  beforeAll(async () => {
    t = await target.open('saga_cli_stored_text')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('shows a lease owner with a line break on the lease line', async () => {
    const inside = gate()
    const finish = gate()
    const saga = holdingSaga('held', inside, finish)
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      workerId: 'host-1\nstatus    completed',
    })
    const { id } = await startSaga(t.db, saga, null, { clock })
    const polled = worker.poll()
    await inside.promise
    try {
      const show = await runSagaCommand(t, ['show', id])
      expect(show.code).toBe(0)
      const lines = show.out.split('\n')
      expect(lines.filter((l) => l.startsWith('status'))).toEqual(['status    running'])
      expect(show.out).toContain('lease     host-1\\nstatus    completed until ')
    } finally {
      finish.open()
      await polled
      await worker.stop()
    }
  })

  it('shows an edited id and name, and the input and context, escaped', async () => {
    const saga = defineSaga({
      name: `text-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'only', action: async () => ({}) }],
    })
    const { id } = await startSaga(t.db, saga, { note: 'a\u2028b\u009b[2J' }, { clock })
    const edited = `${id}\nforged`
    await t.db.execute(
      `UPDATE breakwater_sagas SET id = $1, name = $2, context = $3 WHERE id = $4`,
      [edited, `${saga.name}\r\nforged`, JSON.stringify({ c: '\u2029' }), id],
    )

    const list = await runSagaCommand(t, ['list'])
    expect(list.code).toBe(0)
    expect(list.out.split('\n').filter((l) => l.startsWith('forged'))).toEqual([])
    expect(list.out).toContain(`${id}\\nforged`)
    expect(list.out).toContain(`${saga.name}\\r\\nforged@1`)

    const show = await runSagaCommand(t, ['show', edited])
    expect(show.code).toBe(0)
    expect(show.out.split('\n').filter((l) => l.startsWith('forged'))).toEqual([])
    expect(show.out).toContain(`saga      ${id}\\nforged`)
    expect(show.out).toContain(`name      ${saga.name}\\r\\nforged@1`)
    expect(show.out).toContain('input     {"note":"a\\u2028b\\u009b[2J"}')
    expect(show.out).toContain('context   {"c":"\\u2029"}')
    expect(show.out).not.toMatch(/[\u2028\u2029\u009b]/)
  })
})
