// The saga admin readers on a text column holding what is not text: SQLite keeps a blob in a
// TEXT column (`UPDATE ... SET reason = X'..'`, a restored dump, another writer's bug), and the
// driver reads it as a Buffer. One instance whose `reason` or `lease_owner` is a blob failed the
// whole of `saga list` with a bare `text.replace is not a function` (exit 1), hiding every
// other instance, and `saga show` the same, naming neither the saga nor the column; listSagas
// handed the Buffer on as the reason. The listing now marks the column unreadable, as it does
// for the others, and getSaga (`saga show`) fails naming it. PostgreSQL's TEXT holds text only:
// it stores bytes given to it as their UTF-8 text and refuses others, so a blob of UTF-8 text
// without NUL is read as that text (see reason-blob.test.ts), and only another blob is marked.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defineSaga, getSaga, listSagas, startSaga } from '../../src/saga/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { sqliteDb, type TestDb } from './databases.js'
import { runSagaCommand } from './saga-command.js'

describe('saga admin readers on a text column that holds a blob, on SQLite', () => {
  let t: TestDb
  const clock = new ManualClock(1_700_000_000_000)
  beforeAll(async () => {
    t = await sqliteDb.open('saga_admin_text_columns')
  })
  afterAll(async () => {
    await t?.close()
  })

  const run = (args: string[]) => runSagaCommand(t, args)

  it.each(['reason', 'lease_owner'])(
    'lists an instance whose %s is a blob, marked, with the others; show names the column',
    async (column) => {
      const saga = defineSaga({
        name: `text-${column.replace('_', '-')}`,
        version: 1,
        steps: [{ name: 'only', action: async () => ({}) }],
      })
      const good = (await startSaga(t.db, saga, null, { clock })).id
      const broken = (await startSaga(t.db, saga, null, { clock })).id
      const text = (await startSaga(t.db, saga, null, { clock })).id
      // Not UTF-8 (0xff); and the bytes of "ABCD", which read as that text.
      await t.db.execute(`UPDATE breakwater_sagas SET ${column} = X'ff414243' WHERE id = $1`, [
        broken,
      ])
      await t.db.execute(`UPDATE breakwater_sagas SET ${column} = X'41424344' WHERE id = $1`, [
        text,
      ])

      const listed = await listSagas(t.db, { name: saga.name })
      expect(listed.map((s) => s.id).sort()).toEqual([good, broken, text].sort())
      const field = column === 'reason' ? 'reason' : 'leaseOwner'
      expect(listed.find((s) => s.id === text)).toMatchObject({
        unreadable: undefined,
        [field]: 'ABCD',
      })
      expect(await getSaga(t.db, text)).toMatchObject({ [field]: 'ABCD' })
      const shown = listed.find((s) => s.id === broken)!
      expect(shown.unreadable).toEqual([column])
      expect(shown.reason).toBeUndefined()
      expect(shown.leaseOwner).toBeUndefined()
      expect(listed.find((s) => s.id === good)?.unreadable).toBeUndefined()

      const error = await getSaga(t.db, broken).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(StoredDataError)
      expect(error).toMatchObject({ table: 'breakwater_sagas', row: `saga "${broken}"`, column })
      expect((error as Error).message).toContain(
        `${column} is a blob of 4 bytes (X'ff414243'), not UTF-8 text`,
      )

      const list = await run(['list', '--name', saga.name])
      expect(list).toMatchObject({ code: 0, err: '' })
      expect(list.out.split('\n').find((l) => l.startsWith(good))).toBeDefined()
      expect(list.out).toContain(`saga ${broken}: ${column} cannot be read`)
      if (column === 'reason')
        expect(list.out.split('\n').find((l) => l.startsWith(broken))).toContain('(unreadable)')
      const show = await run(['show', broken])
      expect(show).toMatchObject({ code: 1, out: '' })
      expect(show.err).toContain(`breakwater_sagas saga "${broken}": ${column} is`)
    },
  )
})
