// The owner of a lease that ran out, as the claim that takes the instance over reads it
// (`previous_owner`, copied from `lease_owner`): written as bytes by another tool or bad input,
// SQLite keeps a blob, and the worker handed the Buffer on as the `recovered` event's
// `previousOwner` (documented as a string) and wrote it into the timeline's `lease-expired`
// entry as `{"type":"Buffer","data":[...]}`. It is only said, never acted on, so it does not
// hold the instance: UTF-8 bytes are read as their text (as PostgreSQL stores them), other
// bytes are named as a blob literal, X'…', and the saga runs on.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  getSagaTimeline,
  type SagaEvent,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('a lease owner stored as bytes, on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_previous_owner_blob')
  })
  afterAll(async () => {
    await t?.close()
  })

  const cases: Array<[string, Buffer, string]> = [
    ['UTF-8', Buffer.from('worker-\u00e9'), 'worker-\u00e9'],
    // PostgreSQL's text takes no such bytes (22021): only SQLite can hold them.
    ...(target.dialect === 'sqlite'
      ? ([['not UTF-8', Buffer.from([0x77, 0xff, 0x00]), "X'77ff00'"]] as Array<
          [string, Buffer, string]
        >)
      : []),
  ]

  it.each(cases)(
    '%s: said as text when taken over, and the saga runs on',
    async (_, owner, said) => {
      const clock = new ManualClock(1_700_000_000_000)
      const saga = defineSaga({
        name: `owner-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [{ name: 'reserve', action: async () => ({}) }],
      })
      const { id } = await startSaga(t.db, saga, {}, { clock })
      await t.db.execute(
        'UPDATE breakwater_sagas SET lease_owner = $1, lease_expires_at = $2 WHERE id = $3',
        [owner, clock.now() - 1, id],
      )
      const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
      const events: SagaEvent[] = []
      worker.events.on((e) => events.push(e))
      try {
        expect(await worker.poll()).toBe(1)
      } finally {
        await worker.stop()
      }
      expect(events.filter((e) => e.type === 'error')).toEqual([])
      expect(events.filter((e) => e.type === 'recovered')).toEqual([
        expect.objectContaining({ previousOwner: said }),
      ])
      expect(await getSaga(t.db, id)).toMatchObject({ status: 'completed' })
      const timeline = await getSagaTimeline(t.db, id)
      expect(timeline.find((e) => e.kind === 'lease-expired')?.detail).toMatchObject({
        previousOwner: said,
      })
    },
  )
})
